"""Notebook 05's last cells: push the captioner to the Hub and the app to a Space, or, with
no id or token, build their folders in the run folder (a dry run) and say how to push.
"""

from __future__ import annotations

from pathlib import Path

from ..progress import Log
from ..run_folder import HUB_MODEL_DIR, SPACE_DIR


def publish_model(
    run_dir: str | Path, model_id: str = "", token: str | None = None, log: Log = print
) -> str | None:
    """Push the run's captioner to the Hub model ``model_id`` (:func:`storyteller.serving.hub_push.
    push_model`) and return the id, or, without an id or a token, write the model folder to
    ``run_dir/hub_model`` (rebuilt each time), say how to push it and return None."""
    import shutil

    from ..serving.hub import is_model_folder
    from ..serving.hub_push import push_model

    run_dir = Path(run_dir)
    if model_id and token:
        push_model(run_dir, model_id, token=token, log=log)
        return model_id
    dest = run_dir / HUB_MODEL_DIR
    if is_model_folder(dest):
        shutil.rmtree(dest)  # our own earlier dry run: rebuild it from the current run
    push_model(run_dir, model_id or None, dry_run=dest, log=log)
    reason = "no MODEL_ID set" if not model_id else "no Hugging Face token found"
    log(f"not pushed ({reason}): set MODEL_ID and a write token (HF_TOKEN) to share the model")
    return None


def publish_space(
    run_dir: str | Path,
    space_id: str = "",
    token: str | None = None,
    log: Log = print,
    model: str | None = None,
) -> str:
    """Push the run to the Hugging Face Space ``space_id``, or build its folder (dry run).

    With a ``space_id`` and a ``token``: :func:`storyteller.serving.deploy.deploy_space`, returns the
    Space's URL. Otherwise writes the Space folder to ``run_dir/space`` (rebuilt each time),
    says how to push it, and returns the folder's path. With ``model`` (a pushed Hub model
    id) the Space loads that model from the Hub instead of carrying the run's weights.
    """
    import shutil

    from ..serving.deploy import build_space_folder, deploy_space

    run_dir = Path(run_dir)
    if space_id and token:
        return deploy_space(space_id, run_dir, token=token, log=log, model=model)
    dest = run_dir / SPACE_DIR
    if dest.is_dir() and (dest / "app.py").is_file():
        shutil.rmtree(dest)  # our own earlier dry run: rebuild it from the current run
    folder = build_space_folder(run_dir, dest, log=log, model=model)
    reason = "no SPACE_ID set" if not space_id else "no Hugging Face token found"
    log(
        f"dry run ({reason}): the Space folder is in {folder}. To push it, set SPACE_ID in "
        "the parameters cell and add a write token as the Kaggle secret HF_TOKEN (or the "
        "HF_TOKEN environment variable), then run this cell again; or, from a checkout: "
        f"python -m storyteller deploy --space USER/NAME --run {run_dir}"
    )
    return str(folder)

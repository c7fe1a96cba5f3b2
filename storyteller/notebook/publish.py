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
    """Push the run's captioner to the Hub model ``model_id`` and return the id, or, without an
    id or a token, rebuild the model folder in ``run_dir/hub_model``, say how to push it and
    return None."""
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
    """Deploy the run to the Space ``space_id`` and return its URL, or, without an id or a
    token, rebuild the Space folder in ``run_dir/space``, say how to push it and return its
    path. With ``model`` (a pushed Hub model) the Space loads it instead of the run's weights."""
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

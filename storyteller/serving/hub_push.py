"""``python -m storyteller push``: a run folder becomes a Hub model repository, written in the
layout of :mod:`.hub` with a model card (:mod:`.hub_card`) and uploaded as ``deploy`` uploads
a Space. ``--dry-run DIR`` writes the folder only.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from ..artefacts import ArtefactError, read_json
from ..data.vocab import Vocabulary
from ..errors import StorytellerError
from ..models.checkpoint import load_model, train_config_of
from ..progress import Log
from ..run_folder import METRICS_FILE
from ..training.finetune import ENCODER_WEIGHTS, checkpoint_encoder
from .deploy import build_and_upload, run_files
from .hub import (
    CARD_FILE,
    ENCODER_FILE,
    FORMAT_VERSION,
    REQUIRED_FILES,
    check_repo_id,
    require,
    write_model_folder,
)
from .hub_card import model_card


def model_files(fine_tuned: bool) -> list[str]:
    """The files of a model folder, README.md included, as ``push`` writes them."""
    return [*REQUIRED_FILES, *([ENCODER_FILE] if fine_tuned else []), CARD_FILE]


def training_info(checkpoint: dict, path: Path) -> dict:
    """The checkpoint's checked training config, epoch and best loss (left out when it is not
    finite, e.g. no validation yet) and whether it learned the drawn sample, for config.json
    and the card."""
    info = {
        "train_config": train_config_of(checkpoint, path).to_dict(),
        "trained_on_sample": checkpoint.get("trained_on_sample") is True,
    }
    if isinstance(checkpoint.get("epoch"), int):
        info["epoch"] = checkpoint["epoch"]
    loss = checkpoint.get("best_val_loss")
    if isinstance(loss, (int, float)) and math.isfinite(loss):
        info["best_val_loss"] = float(loss)
    return info


def read_metrics(run_dir: Path) -> dict | None:
    """The run's metrics.json (None when it was not evaluated): one object per decoding."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    metrics = read_json(path, "metrics file")
    if not isinstance(metrics, dict):
        raise ArtefactError(path, "the metrics file must be a JSON object (one per decoding)")
    return metrics


def export_run(
    run_dir: str | Path, dest: str | Path, repo: str = "USER/NAME", log: Log = print
) -> Path:
    """Write the model folder of the run in ``run_dir`` into ``dest`` (absent or empty),
    its card naming ``repo``; nothing is uploaded."""
    require("huggingface_hub", "writing the model card")
    run_dir = Path(run_dir).expanduser()
    checkpoint, vocab_path = run_files(run_dir)
    vocab = Vocabulary.load(vocab_path)
    model, state = load_model(checkpoint, vocab)  # every check a load makes
    config = model.config
    if config.fine_tuned_blocks:  # checked against the encoder before it is published
        checkpoint_encoder(config, state, checkpoint)
    info = training_info(state, checkpoint)
    card = model_card(
        repo,
        config,
        vocab,
        info,
        read_metrics(run_dir),
        FORMAT_VERSION,
        model_files(bool(config.fine_tuned_blocks)),
    )
    folder = write_model_folder(
        dest, config, model.state_dict(), vocab, info, state.get(ENCODER_WEIGHTS), card
    )
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    log(f"model folder written to {folder} ({size_mb:.1f} MB)")
    return folder


def push_command(repo: str | None, run_dir: str | Path, private: bool = False) -> str:
    """The command that uploads what a dry run wrote."""
    parts = ["python", "-m", "storyteller", "push", "--run", str(run_dir)]
    parts += ["--repo", repo or "USER/NAME"] + (["--private"] if private else [])
    return shlex.join(parts)


def push_model(
    run_dir: str | Path,
    repo: str | None,
    token: str | None = None,
    private: bool = False,
    dry_run: str | Path | None = None,
    log: Log = print,
) -> str:
    """Write the run's model folder and upload it to the Hub model ``repo`` (created if
    missing); return its URL, or with ``dry_run`` the folder written there (no upload)."""
    if repo is not None:
        repo = check_repo_id(repo)
    if dry_run is not None:
        folder = export_run(run_dir, dry_run, repo or "USER/NAME", log)
        log(f"dry run: nothing uploaded; to push: {push_command(repo, run_dir, private)}")
        return str(folder)
    if repo is None:
        raise StorytellerError(
            "uploading needs the model id: --repo USER/NAME (or --dry-run DIR to only write "
            "the model folder)"
        )
    build_and_upload(
        lambda dest: export_run(run_dir, dest, repo, log),
        repo,
        "model",
        token,
        private,
        "Upload a storyteller captioner (python -m storyteller push)",
        log,
    )
    url = f"https://huggingface.co/{repo}"
    log(f"pushed: {url} (load it with Captioner.from_pretrained({repo!r}))")
    return url

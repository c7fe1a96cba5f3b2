"""What made a result, recorded beside the numbers: a ``metrics.json`` found later says which
model, data, split and software produced it. Only names, never absolute paths: a run folder
may be shared or published."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..config import ModelConfig
from ..data.captions import CaptionDataset
from ..models.checkpoint import train_config_of


def software() -> dict[str, str]:
    """The versions that can change a number: this package, torch and Python."""
    import torch

    return {
        "storyteller": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def evaluation_provenance(
    checkpoint: dict,
    checkpoint_path: str | Path,
    config: ModelConfig,
    dataset: CaptionDataset,
    data_dir: str | Path,
    split_seed: int | None,
) -> dict:
    """Where an evaluation's numbers come from: the model (its whole config, the checkpoint's
    file name and epoch, the training config, ``smoke``), the data (names relative to
    ``data_dir``, never absolute paths), the split's seed (None when ``splits.json`` does not
    say), :func:`software` and the date (UTC)."""
    train_config = train_config_of(checkpoint, checkpoint_path)
    data_dir = Path(data_dir)
    return {
        "encoder": config.encoder,
        "decoder": config.decoder,
        "model_config": config.to_dict(),
        "checkpoint": Path(checkpoint_path).name,
        "epoch": checkpoint.get("epoch"),
        "train_config": train_config.to_dict(),
        "smoke": train_config.smoke,
        "dataset": {
            "folder": data_dir.name,
            "caption_file": _relative_name(dataset.source, data_dir),
            "image_folder": _relative_name(dataset.image_dir, data_dir),
        },
        "split_seed": split_seed,
        "software": software(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _relative_name(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it, else its bare name."""
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return Path(path).name

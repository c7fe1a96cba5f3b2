"""What made a result: recorded beside the numbers, so a ``metrics.json`` found later (or
compared with another) says which model, data, split and software produced it.

Only names are recorded, never absolute paths: a run folder may be shared or published.
"""

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
    """Where an evaluation's numbers come from.

    Args:
        checkpoint: the loaded checkpoint (its ``epoch`` and ``train_config`` are read).
        checkpoint_path: the file it was read from (only its name is kept).
        config: the model's config (encoder, decoder and every size and option).
        dataset: the evaluated dataset; ``data_dir``: the folder it was read from.
        split_seed: the seed the train/val/test split was drawn with (``splits.json``), or
            None for a split file that does not say.

    Returns:
        ``encoder``, ``decoder``, ``model_config`` (all of it, the decoder's options
        included), ``checkpoint`` (file name), ``epoch`` (the epoch it was saved after),
        ``train_config``, ``smoke`` (a smoke run: tiny data and model, numbers meaningless),
        ``dataset`` (``folder``, ``caption_file``, ``image_folder``: names relative to the
        folder), ``split_seed``, ``software`` (:func:`software`) and ``date`` (UTC, ISO 8601).
    """
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
    """``path`` relative to ``folder`` when inside it (``flickr30k_images/results.csv``),
    else its bare name: never an absolute path."""
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return Path(path).name

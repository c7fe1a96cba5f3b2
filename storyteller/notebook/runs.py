"""The run folder a notebook writes into: where it is, and "run notebook N first" checks.
They take the :class:`~.settings.NotebookSettings` that :func:`~.settings.setup` returns
(which finds the folder here, so this module does not import it)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StorytellerError
from ..models.checkpoint import read_checkpoint
from ..run_folder import (
    BEST_CHECKPOINT,
    DEFAULT_OUT,
    FEATURES_INDEX,
    HISTORY_FILE,
    METRICS_FILE,
    SPLITS_FILE,
    TEST_CAPTIONS_FILE,
    VOCAB_FILE,
)
from .kaggle import kaggle_root, on_kaggle

OUT_DIR_ENV = "STORYTELLER_OUT_DIR"

#: Which notebook writes each artefact (for "run notebook N first" messages).
PRODUCED_BY = {
    FEATURES_INDEX: "01_extract_features.ipynb",
    VOCAB_FILE: "02_build_vocabulary.ipynb",
    SPLITS_FILE: "02_build_vocabulary.ipynb",
    BEST_CHECKPOINT: "03_train.ipynb",
    HISTORY_FILE: "03_train.ipynb",
    METRICS_FILE: "04_evaluate.ipynb",
    TEST_CAPTIONS_FILE: "04_evaluate.ipynb",
}


def default_output_dir(smoke: bool = False) -> Path:
    """The run folder off Kaggle when none is named: ``./outputs``, or ``./outputs/smoke`` in
    smoke mode, so a smoke run never meets a real run's cache or figures."""
    return Path(DEFAULT_OUT, "smoke") if smoke else Path(DEFAULT_OUT)


def find_output_dir(out_dir: str | Path | None = None, smoke: bool = False) -> Path:
    """``out_dir`` / ``$STORYTELLER_OUT_DIR`` if set, else ``/kaggle/working`` on Kaggle, else
    :func:`default_output_dir`; created if missing."""
    explicit = out_dir if out_dir not in (None, "") else os.environ.get(OUT_DIR_ENV) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
    elif on_kaggle():
        path = kaggle_root() / "working"
    else:
        path = default_output_dir(smoke)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require(settings, *artefacts: str) -> None:
    """Stop with an error naming the notebook that writes each missing file, e.g.
    ``require(settings, "vocab.pkl", "features/features.json")``."""
    missing = [name for name in artefacts if not (settings.out_dir / name).is_file()]
    if missing:
        notebooks = sorted({PRODUCED_BY.get(name, "the previous notebooks") for name in missing})
        raise StorytellerError(
            f"{', '.join(missing)} not found in {settings.out_dir}: run {', '.join(notebooks)} "
            "first (with the same DATA_DIR / OUT_DIR / SMOKE settings)"
        )


def require_decoder(settings, checkpoint: str | Path) -> str:
    """The decoder ``checkpoint`` holds; with ``DECODER`` set in this notebook, a clear error
    when the trained model is another one (notebook 03 ran with another ``DECODER``)."""
    trained = read_checkpoint(checkpoint)["model_config"].get("decoder", "lstm")
    if settings.decoder_chosen and trained != settings.decoder:
        raise StorytellerError(
            f"{Path(checkpoint).name} holds a {trained!r} captioner but DECODER is "
            f"{settings.decoder!r}: run 03_train.ipynb with DECODER = {settings.decoder!r}, or "
            f"set DECODER = {trained!r} (or None) here"
        )
    return trained

"""Captioning for a server (``app.py``, ``bench/app_latency.py``): find the trained model, open
untrusted uploads safely, time each caption."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..artefacts import ArtefactError, read_json
from ..errors import StorytellerError
from ..features.images import open_image
from ..figures.attention_maps import AttentionCaption, encoder_view
from ..run_folder import BEST_CHECKPOINT, DEFAULT_OUT, VOCAB_FILE

RUN_DIR_ENV = "STORYTELLER_RUN_DIR"
MODEL_ENV = "STORYTELLER_MODEL"
MODEL_REVISION_ENV = "STORYTELLER_MODEL_REVISION"
#: Beside app.py in a Space built with ``deploy --model``: the Hub model the app loads.
SPACE_MODEL_FILE = "hub_model.json"
MAKE_MODEL_COMMAND = "python -m storyteller run-all"
# A JPEG much larger than the encoder's input is decoded at 1/2, 1/4 or 1/8 scale directly
# (libjpeg's DCT scaling), keeping at least this many pixels on each side; the encoder's own
# resize (short side 256) follows, so the caption is the same and decoding is several times faster.
DRAFT_MIN_SIDE = 512


@dataclass(frozen=True)
class ModelFiles:
    """Where the app's checkpoint and vocabulary are, and which rule found them."""

    checkpoint: Path
    vocab: Path
    source: str  # "STORYTELLER_RUN_DIR", "beside app.py" or "./outputs"


def find_model_files(
    app_dir: str | Path, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> ModelFiles:
    """The checkpoint and vocabulary the app loads: from ``$STORYTELLER_RUN_DIR`` (only there
    when it is set), else beside ``app.py`` (a Space), else ``./outputs``. The error names the
    places searched and the command that makes a model."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    explicit = env.get(RUN_DIR_ENV)
    if explicit:
        folder = Path(explicit).expanduser()
        checkpoint, vocab = folder / BEST_CHECKPOINT, folder / VOCAB_FILE
        missing = [p.name for p in (checkpoint, vocab) if not p.is_file()]
        if missing:
            raise StorytellerError(
                f"{RUN_DIR_ENV}={explicit} has no {' or '.join(missing)}: point it at a run "
                f"folder, or make one with `{MAKE_MODEL_COMMAND} --out {explicit}`"
            )
        return ModelFiles(checkpoint, vocab, RUN_DIR_ENV)
    candidates = [(Path(app_dir), "beside app.py"), (cwd / DEFAULT_OUT, "./outputs")]
    for folder, source in candidates:
        checkpoint, vocab = folder / BEST_CHECKPOINT, folder / VOCAB_FILE
        if checkpoint.is_file() and vocab.is_file():
            return ModelFiles(checkpoint, vocab, source)
    searched = ", ".join(str(folder) for folder, _ in candidates)
    raise StorytellerError(
        f"no trained model found (looked for {BEST_CHECKPOINT} + {VOCAB_FILE} in {searched}). "
        f"Make one with `{MAKE_MODEL_COMMAND}` (about 2 minutes on a CPU; writes ./outputs), "
        f"or set {RUN_DIR_ENV} to a run folder, then restart the app"
    )


@dataclass(frozen=True)
class PretrainedModel:
    """A Hub model id or model folder for the app, its revision, and which rule named it."""

    model: str
    revision: str | None
    source: str  # "STORYTELLER_MODEL" or "hub_model.json"


def find_pretrained(
    app_dir: str | Path, env: Mapping[str, str] | None = None
) -> PretrainedModel | None:
    """The Hub model (or model folder) the app loads before :func:`find_model_files`:
    ``$STORYTELLER_MODEL`` (pinned by ``$STORYTELLER_MODEL_REVISION``), else the
    :data:`SPACE_MODEL_FILE` beside ``app.py``; None when neither names one."""
    env = os.environ if env is None else env
    explicit = env.get(MODEL_ENV, "").strip()
    if explicit:
        return PretrainedModel(explicit, env.get(MODEL_REVISION_ENV) or None, MODEL_ENV)
    path = Path(app_dir) / SPACE_MODEL_FILE
    if not path.is_file():
        return None
    named = read_json(path, "Space model reference")
    model = named.get("model") if isinstance(named, dict) else None
    revision = named.get("revision") if isinstance(named, dict) else None
    if not isinstance(model, str) or not isinstance(revision, (str, type(None))):
        raise ArtefactError(path, 'must be {"model": "USER/NAME", "revision": null or "..."}')
    return PretrainedModel(model, revision, SPACE_MODEL_FILE)


def open_upload(path: str | Path) -> Image.Image:
    """An uploaded file as an upright RGB image, or :class:`UnreadableImage` saying what is
    wrong (:func:`~storyteller.features.images.open_image`); a large JPEG is decoded smaller."""
    return open_image(path, draft_side=DRAFT_MIN_SIDE)


def configured_threads(env: Mapping[str, str] | None = None) -> int | None:
    """Torch threads asked for by ``$STORYTELLER_TORCH_THREADS`` (None: torch's default).
    On 2 shared cores with two captions at once torch's default measured 11-14 images/s and
    one thread per request 8.5-12 (docs/results.md), so the default stays."""
    return env_count("STORYTELLER_TORCH_THREADS", None, env)


def env_count(name: str, default: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """The whole number >= 1 in ``$name`` (``default`` when unset or empty), or an error."""
    env = os.environ if env is None else env
    explicit = env.get(name, "").strip()
    if not explicit:
        return default
    try:
        count = int(explicit)
    except ValueError:
        count = 0
    if count < 1:
        raise StorytellerError(f"{name} must be a whole number >= 1, not {explicit!r:.40}")
    return count


@dataclass
class TimedCaption:
    """A caption and its time end to end; for a captioner that attends, also the photo as the
    encoder saw it and each word's weights (drawn by ``figures.plots.attention_figure``)."""

    caption: str
    ms: float
    view: Image.Image | None = None
    attention: AttentionCaption | None = None


def caption_upload(captioner, path: str | Path, beam_size: int = 1) -> TimedCaption:
    """Open ``path`` safely and caption it (greedy when ``beam_size == 1``)."""
    started = time.perf_counter()
    image = open_upload(path)
    if not getattr(captioner, "attends", False):
        caption = captioner([image], beam_size=beam_size)[0]
        return TimedCaption(caption, (time.perf_counter() - started) * 1000)
    result = captioner.caption_with_attention([image], beam_size=beam_size)[0]
    ms = (time.perf_counter() - started) * 1000
    view = encoder_view(image, captioner.extractor.spec.preprocessing)
    return TimedCaption(result.caption, ms, view, result)

"""Captioning for a server: find the trained model, open untrusted uploads safely, time it.

``app.py`` (the Gradio app and Space entry point) and ``bench/app_latency.py`` use these, so the
rules live in one tested place:

* :func:`find_pretrained` - a Hub model (or model folder) named by ``$STORYTELLER_MODEL`` or
  by the ``hub_model.json`` of a Space built with ``deploy --model``; else
* :func:`find_model_files` - ``$STORYTELLER_RUN_DIR``, else the files beside ``app.py`` (as on
  the Space), else ``./outputs``; a clear message naming the command that makes a model.
* :func:`open_upload` - any file a stranger uploads becomes an upright 8-bit RGB image or an
  :class:`UnreadableImage` that says what is wrong: not an image, damaged or truncated,
  too many pixels (decompression bombs), too long and thin to resize, not a regular file, ...
  The server never crashes on a bad file, and the work a picture costs is bounded.
* :func:`render_examples` - example pictures the project draws itself (the sample scenes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import StorytellerError
from ..features.images import open_image
from ..figures.attention_maps import AttentionCaption, encoder_view
from ..run_folder import BEST_CHECKPOINT, DEFAULT_OUT, VOCAB_FILE

RUN_DIR_ENV = "STORYTELLER_RUN_DIR"
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


def _pair(folder: Path) -> tuple[Path, Path]:
    return folder / BEST_CHECKPOINT, folder / VOCAB_FILE


def find_model_files(
    app_dir: str | Path, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> ModelFiles:
    """The checkpoint and vocabulary the app should load.

    Looks in the folder named by ``$STORYTELLER_RUN_DIR`` (and only there when it is set),
    else beside ``app.py`` (``app_dir``; the Space layout), else in ``./outputs`` (what
    ``run-all`` writes). Raises :class:`StorytellerError` naming the places searched and the
    one command that produces a model.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    explicit = env.get(RUN_DIR_ENV)
    if explicit:
        folder = Path(explicit).expanduser()
        checkpoint, vocab = _pair(folder)
        missing = [p.name for p in (checkpoint, vocab) if not p.is_file()]
        if missing:
            raise StorytellerError(
                f"{RUN_DIR_ENV}={explicit} has no {' or '.join(missing)}: point it at a run "
                f"folder, or make one with `{MAKE_MODEL_COMMAND} --out {explicit}`"
            )
        return ModelFiles(checkpoint, vocab, RUN_DIR_ENV)
    candidates = [(Path(app_dir), "beside app.py"), (cwd / DEFAULT_OUT, "./outputs")]
    for folder, source in candidates:
        checkpoint, vocab = _pair(folder)
        if checkpoint.is_file() and vocab.is_file():
            return ModelFiles(checkpoint, vocab, source)
    searched = ", ".join(str(folder) for folder, _ in candidates)
    raise StorytellerError(
        f"no trained model found (looked for {BEST_CHECKPOINT} + {VOCAB_FILE} in {searched}). "
        f"Make one with `{MAKE_MODEL_COMMAND}` (about 2 minutes on a CPU; writes ./outputs), "
        f"or set {RUN_DIR_ENV} to a run folder, then restart the app"
    )


MODEL_ENV = "STORYTELLER_MODEL"
MODEL_REVISION_ENV = "STORYTELLER_MODEL_REVISION"


@dataclass(frozen=True)
class PretrainedModel:
    """A Hub model id or model folder for the app, its revision, and which rule named it."""

    model: str
    revision: str | None
    source: str  # "STORYTELLER_MODEL" or "hub_model.json"


def find_pretrained(
    app_dir: str | Path, env: Mapping[str, str] | None = None
) -> PretrainedModel | None:
    """The Hub model (or model folder) the app should load, checked before
    :func:`find_model_files`: ``$STORYTELLER_MODEL`` (``$STORYTELLER_MODEL_REVISION`` pins
    it), else the ``hub_model.json`` that ``deploy --model`` writes beside ``app.py``. None
    when neither names one."""
    from ..artefacts import ArtefactError, read_json
    from .deploy import SPACE_MODEL_FILE

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
    """An uploaded file as an upright 8-bit RGB image, or :class:`UnreadableImage` saying what
    is wrong (:func:`storyteller.features.images.open_image`: not a regular file, not an image,
    damaged, too large, too long and thin); a large JPEG is decoded at a reduced scale."""
    return open_image(path, draft_side=DRAFT_MIN_SIDE)


def configured_threads(env: Mapping[str, str] | None = None) -> int | None:
    """Torch threads asked for by ``$STORYTELLER_TORCH_THREADS`` (None: torch's default, all
    cores for every request). Measured on 2 shared cores with two captions at once, torch's
    default gave 11-14 images/s and one thread per request 8.5-12 (README), so the default
    stays; the variable is for machines where it measures otherwise."""
    return env_count("STORYTELLER_TORCH_THREADS", None, env)


def env_count(name: str, default: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """The whole number >= 1 that ``$name`` holds (``default`` when unset or empty), or a
    one-line :class:`StorytellerError` naming the variable."""
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
    """A caption and how long it took, end to end (decode, encode, decode words); for a
    captioner that attends, also where it looked (the photo as the encoder saw it and each
    word's weights: draw them with :func:`storyteller.figures.plots.attention_figure`)."""

    caption: str
    ms: float
    view: Image.Image | None = None
    attention: AttentionCaption | None = None


def caption_upload(captioner, path: str | Path, beam_size: int = 1) -> TimedCaption:
    """Open ``path`` safely and caption it with ``captioner`` (greedy when ``beam_size == 1``),
    keeping the attention weights when the captioner attends."""
    started = time.perf_counter()
    image = open_upload(path)
    if not getattr(captioner, "attends", False):
        caption = captioner([image], beam_size=beam_size)[0]
        return TimedCaption(caption, (time.perf_counter() - started) * 1000)
    result = captioner.caption_with_attention([image], beam_size=beam_size)[0]
    ms = (time.perf_counter() - started) * 1000
    view = encoder_view(image, captioner.extractor.spec.preprocessing)
    return TimedCaption(result.caption, ms, view, result)


# Varied scenes from the sample dataset (seed 0): shapes, colours, counts and backgrounds differ.
EXAMPLE_INDICES = (0, 3, 7, 12)


def render_examples(folder: str | Path, indices=EXAMPLE_INDICES, size: int = 320) -> list[Path]:
    """Draw example pictures (the package's sample scenes) into ``folder``; return their paths.

    Deterministic: the same files every time, so they are drawn once and reused.
    """
    from ..data.sample import make_example

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in indices:
        path = folder / f"example_{index:02d}.png"
        if not path.is_file():
            _, _, picture = make_example(0, index, image_size=size)
            tmp = path.with_name(path.name + ".tmp")
            picture.save(tmp, format="PNG")
            os.replace(tmp, path)
        paths.append(path)
    return paths

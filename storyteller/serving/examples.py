"""The app's example pictures, chosen to fit the model it serves (a Flickr-trained model
calls the drawn sample shapes "a man is playing with a large rope in his mouth"), by the
first rule that applies to the served model's folder:

1. ``examples/`` in that folder (what ``deploy`` puts in a Space);
2. a model trained on the embedded sample (``sample_NNNNN.jpg`` in its split): the drawn scenes;
3. when the run's photos may be shown, a few photos of its *test* split (never seen in
   training), from the dataset folder its feature cache was made from;
4. otherwise none.

Flickr photos keep their authors' licences: ``STORYTELLER_EXAMPLE_PHOTOS=1`` allows showing
them and ``0`` forbids it; unset, the local app shows them (it listens on loopback) and
``deploy`` does not copy them into a Space, which is public.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..artefacts import read_json, read_splits
from ..data.sample import make_example
from ..errors import StorytellerError
from ..run_folder import FEATURES_INDEX, SPLITS_FILE

EXAMPLES_DIR = "examples"  # in a Space folder, beside best_model.pth
PHOTOS_ENV = "STORYTELLER_EXAMPLE_PHOTOS"
NUM_PHOTOS = 4
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_SAMPLE_NAME = re.compile(r"sample_\d+\.jpg")
# Varied scenes from the sample dataset (seed 0): shapes, colours, counts and backgrounds differ.
EXAMPLE_INDICES = (0, 3, 7, 12)


@dataclass(frozen=True)
class Examples:
    """The pictures to offer and what they are (``kind``: ``bundled``, ``sample``, ``test``
    or ``none``); ``label`` is the page's heading for them, ``why`` says why there are none."""

    kind: str
    paths: list[Path] = field(default_factory=list)
    why: str = ""

    @property
    def label(self) -> str:
        return {
            "bundled": "Examples",
            "sample": "Examples: drawn scenes like the ones this model was trained on",
            "test": "Examples: test photos of this model's run (not seen in training)",
        }.get(self.kind, "")


def photos_allowed(default: bool, env: Mapping[str, str] | None = None) -> bool:
    """Whether the run's own photos may be shown: ``$STORYTELLER_EXAMPLE_PHOTOS`` (``1`` or
    ``0``), else ``default``."""
    env = os.environ if env is None else env
    value = env.get(PHOTOS_ENV, "").strip()
    if not value:
        return default
    if value not in ("0", "1"):
        raise StorytellerError(
            f"{PHOTOS_ENV} must be 1 (show the run's photos) or 0, not {value!r}"
        )
    return value == "1"


def _test_split(run_dir: Path) -> list[str]:
    path = run_dir / SPLITS_FILE
    return read_splits(path)["test"] if path.is_file() else []


def _image_dir(run_dir: Path) -> Path | None:
    """The image folder the run's feature cache was extracted from, if it is still there."""
    index = run_dir / FEATURES_INDEX
    if not index.is_file():
        return None
    meta = read_json(index, "feature cache index")
    recorded = meta.get("image_dir") if isinstance(meta, dict) else None
    folder = Path(recorded) if isinstance(recorded, str) and recorded else None
    return folder if folder is not None and folder.is_dir() else None


def split_is_drawn(run_dir: str | Path) -> bool:
    """Whether the run's test photos are the embedded sample's drawn scenes (by their names):
    the app then draws fresh scenes rather than show them."""
    names = _test_split(Path(run_dir))
    return bool(names) and all(_SAMPLE_NAME.fullmatch(name) for name in names)


def test_photos(run_dir: str | Path, count: int = NUM_PHOTOS) -> tuple[list[Path], str]:
    """The first ``count`` photos of the run's test split that are on disk, and, when there
    are none, why."""
    run_dir = Path(run_dir)
    names = _test_split(run_dir)
    if not names:
        return [], f"{run_dir} has no splits.json test split"
    folder = _image_dir(run_dir)
    if folder is None:
        return [], f"the dataset folder of {run_dir} (its features/features.json) is not here"
    found = [folder / name for name in names if (folder / name).is_file()]
    return found[:count], "" if found else f"none of the test photos is in {folder}"


def bundled(model_dir: str | Path) -> list[Path]:
    """Pictures in ``examples/`` beside the model (a Space's), sorted by name."""
    folder = Path(model_dir) / EXAMPLES_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES)


def choose_examples(model_dir: str | Path, allow_photos: bool) -> Examples:
    """Which examples fit the model in ``model_dir`` (the module's rules); the drawn scenes
    (``sample``) get their paths when :func:`example_pictures` draws them."""
    model_dir = Path(model_dir)
    found = bundled(model_dir)
    if found:
        return Examples("bundled", found)
    if split_is_drawn(model_dir):
        return Examples("sample")
    if not allow_photos:
        return Examples("none", why=f"the run's photos are not shown ({PHOTOS_ENV}=1 shows them)")
    photos, why = test_photos(model_dir)
    return Examples("test", photos) if photos else Examples("none", why=why)


def render_examples(folder: str | Path, indices=EXAMPLE_INDICES, size: int = 320) -> list[Path]:
    """Draw the sample scenes ``indices`` into ``folder`` once (they are deterministic) and
    return their paths."""
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


def example_pictures(model_dir: str | Path, folder: str | Path, allow_photos: bool) -> Examples:
    """The examples that fit the model in ``model_dir``, put in ``folder`` (created): sample
    scenes drawn there, photos copied there. A server serves them from there (Gradio serves
    files from its temporary folder, not from a dataset elsewhere); a Space folder ships them."""
    choice = choose_examples(model_dir, allow_photos)
    if choice.kind == "none":
        return choice
    if choice.kind == "sample":
        return Examples(choice.kind, render_examples(folder))
    Path(folder).mkdir(parents=True, exist_ok=True)
    copies = [Path(shutil.copyfile(path, Path(folder) / path.name)) for path in choice.paths]
    return Examples(choice.kind, copies)

"""What Kaggle gives a notebook: where it runs (``/kaggle``), the datasets and earlier runs
attached under ``/kaggle/input``, and its secrets (the Hugging Face token).

``STORYTELLER_KAGGLE_ROOT`` moves ``/kaggle`` (tests fake a Kaggle machine with it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..data.captions import CAPTION_FILES, find_image_dir
from ..errors import StorytellerError
from ..hf_token import ask_hf_token, find_hf_token
from ..progress import Log
from ..run_folder import RUN_ARTEFACTS, RUN_MARKERS

KAGGLE_ROOT_ENV = "STORYTELLER_KAGGLE_ROOT"

#: The Kaggle datasets the notebooks look for, best first, and the name that identifies each.
KAGGLE_DATASETS = (("adityajn105/flickr30k", "30k"), ("adityajn105/flickr8k", "8k"))

_SEARCH_DEPTH = 4  # /kaggle/input/<a>/<b>/<c>/<d>/captions.txt at the deepest


def kaggle_root() -> Path:
    """``/kaggle``, or the folder in ``$STORYTELLER_KAGGLE_ROOT`` (a fake Kaggle for tests)."""
    return Path(os.environ.get(KAGGLE_ROOT_ENV) or "/kaggle")


def on_kaggle() -> bool:
    """True in a Kaggle notebook: Kaggle sets ``KAGGLE_KERNEL_RUN_TYPE`` and mounts
    ``/kaggle/input`` (either is enough, so a faked root counts too)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "input").is_dir()


def _is_dataset_folder(folder: Path) -> bool:
    """A folder holding a caption file and an image folder (a layout ``load_dataset`` reads)."""
    if not any((folder / name).is_file() for name in CAPTION_FILES):
        return False
    try:
        find_image_dir(folder)
    except StorytellerError:
        return False
    return True


def _walk(root: Path, max_depth: int, found: Callable[[Path], bool]) -> list[Path]:
    """Folders under ``root``, level by level down to ``max_depth``, for which ``found`` is
    true; the walk goes neither into them nor into a dataset folder."""
    hits, level = [], [root] if root.is_dir() else []
    for _ in range(max_depth + 1):
        next_level = []
        for folder in level:
            if found(folder):
                hits.append(folder)
                continue
            if _is_dataset_folder(folder):
                continue  # never walk into the photos
            try:
                children = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            next_level += [Path(e.path) for e in children if e.is_dir() and e.name[0] != "."]
        level = next_level
    return hits


def find_datasets(input_root: str | Path, max_depth: int = _SEARCH_DEPTH) -> list[Path]:
    """Every dataset folder under ``input_root`` (Kaggle's ``/kaggle/input``, where a dataset
    may sit a few levels down), Flickr30k first, then Flickr8k, then anything else."""
    input_root = Path(input_root)

    def rank(path: Path) -> tuple[int, str]:
        text = str(path.relative_to(input_root)).lower()
        marks = [i for i, (_, mark) in enumerate(KAGGLE_DATASETS) if mark in text]
        return (marks[0] if marks else len(KAGGLE_DATASETS), text)

    return sorted(_walk(input_root, max_depth, _is_dataset_folder), key=rank)


def no_dataset_error(input_root: Path) -> StorytellerError:
    attached = sorted(p.name for p in input_root.iterdir()) if input_root.is_dir() else []
    return StorytellerError(
        f"running on Kaggle, but no Flickr dataset was found under {input_root} "
        f"(attached: {', '.join(attached) or 'nothing'}). Attach one: in the notebook's right "
        "panel, Input -> Add Input, search 'adityajn105/flickr30k' (or 'adityajn105/flickr8k') "
        "and click +. Or set DATA_DIR in the parameters cell to a folder with Images/ + "
        "captions.txt."
    )


def find_previous_runs(input_root: str | Path, max_depth: int = 3) -> list[Path]:
    """Folders under ``input_root`` holding an earlier notebook's outputs: on Kaggle a saved
    notebook version's ``/kaggle/working`` is attached to the next one as an input (Input ->
    Add Input -> Your Work)."""
    return _walk(
        Path(input_root),
        max_depth,
        lambda folder: any((folder / marker).is_file() for marker in RUN_MARKERS),
    )


def import_previous_outputs(
    input_root: str | Path, out_dir: str | Path, log: Log = print
) -> list[str]:
    """Copy earlier notebooks' outputs found under ``input_root`` into ``out_dir`` and return
    the names copied. Only files missing from ``out_dir`` are copied, so a re-run keeps its own
    newer files; a copied ``last.pth`` lets training resume in a new Kaggle session."""
    out_dir = Path(out_dir)
    copied = []
    for run in find_previous_runs(input_root):
        from_run = []
        for name in RUN_ARTEFACTS:
            source, target = run / name, out_dir / name
            if source.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                from_run.append(name)
        if from_run:
            log(f"copied earlier outputs from {run}: {', '.join(from_run)}")
        copied += from_run
    return copied


def hf_token(prompt: bool = False) -> str | None:
    """A Hugging Face token or None, never printed, logged or written: a Kaggle secret named
    ``HF_TOKEN`` (on Kaggle), then :func:`~storyteller.hf_token.find_hf_token`'s places, then,
    with ``prompt``, a hidden prompt where someone can answer."""
    token = find_hf_token(kaggle=on_kaggle())
    if token is None and prompt:
        token = ask_hf_token()
    return token

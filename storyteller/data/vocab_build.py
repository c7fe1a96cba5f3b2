"""Building a run's vocabulary: split the images, count the words of the training captions,
and write ``vocab.pkl`` with ``splits.json``. Both depend only on the image names, their
captions, the threshold and the seed, so a dataset folder and its caption file alone agree.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import MIN_WORD_COUNT
from ..errors import StorytellerError
from ..progress import Log
from ..run_folder import RunPaths
from ..runtime import write_json
from .captions import SkipReport, Split, read_caption_file, split_by_image
from .vocab import Vocabulary


def build_split_vocabulary(
    captions: dict[str, list[str]],
    threshold: int = MIN_WORD_COUNT,
    seed: int = 0,
    provenance: dict | None = None,
) -> tuple[Vocabulary, Split]:
    """Split the images 80/10/10 (seeded) and build the vocabulary from the *training*
    captions; its provenance adds the split, its size and the seed to ``provenance``."""
    split = split_by_image(list(captions), seed=seed)
    vocab = Vocabulary.build(
        (c for name in split.train for c in captions[name]),
        threshold,
        provenance={
            **(provenance or {}),
            "split": "train",
            "num_images": len(split.train),
            "seed": seed,
        },
    )
    vocab.provenance["size"] = len(vocab)
    return vocab, split


def captions_of_file(captions_file: str | Path) -> tuple[dict[str, list[str]], dict]:
    """Each image's captions in a caption file read without its images, and the provenance:
    the file's name and content hash, not its path, so every machine builds the same."""
    path = Path(captions_file).expanduser()
    report = SkipReport()
    rows = read_caption_file(path, report)
    report.warn(f"reading {path}")
    captions: dict[str, list[str]] = {}
    for image, caption in rows:
        captions.setdefault(image, []).append(caption)
    if not captions:
        raise StorytellerError(f"no usable captions in {path}")
    provenance = {
        "source": path.name,
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        "images_checked": False,
    }
    return captions, provenance


def save_split_vocabulary(
    paths: RunPaths, vocab: Vocabulary, split: Split, seed: int, log: Log
) -> None:
    """Write ``splits.json`` and ``vocab.pkl`` into the run folder, and log their sizes."""
    write_json(paths.splits, {"seed": seed, **split.to_dict()})
    vocab.save(paths.vocab)
    log(
        f"vocabulary: {len(vocab)} words (threshold {vocab.threshold}, covers "
        f"{vocab.provenance['coverage']:.1%} of training tokens) -> {paths.vocab}; "
        f"split {len(split.train)}/{len(split.val)}/{len(split.test)} images -> {paths.splits}"
    )

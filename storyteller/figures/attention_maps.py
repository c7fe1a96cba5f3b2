"""Where an attention captioner looked: the photo as the encoder saw it and one heat map per
generated word, as in Show, Attend and Tell's figures. Row t of the weights is the softmax over
the CNN's h x w grid that word t was chosen with, shown upsampled over the encoder's crop.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from ..config import GREEDY, Strategy
from ..data.vocab import Vocabulary
from ..decoding import decode_with_attention
from ..features.encoder_specs import Preprocessing
from ..features.images import load_rgb
from ..models import CaptionDecoder
from ..runtime import unwrap


@dataclass
class AttentionCaption:
    """One photo's caption and, for each of its words, the weights over the grid."""

    caption: str
    words: list[str]
    weights: torch.Tensor  # (len(words), h * w), each row sums to 1
    grid: tuple[int, int]  # (h, w) of the encoder's feature map


def attends(model: CaptionDecoder) -> bool:
    return bool(unwrap(model).attends)


def caption_with_attention(
    model: CaptionDecoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    grid: tuple[int, int],
    strategy: Strategy = GREEDY,
) -> list[AttentionCaption]:
    """features (B, h*w, D) -> each photo's caption with its per-word weights."""
    if features.size(1) != grid[0] * grid[1]:
        raise ValueError(
            f"features have {features.size(1)} positions, a {grid} grid has {grid[0] * grid[1]}"
        )
    decoded = decode_with_attention(model, features, strategy)
    results = []
    for ids, weights in decoded:
        words = vocab.words(ids)
        results.append(AttentionCaption(" ".join(words), words, weights[: len(words)], grid))
    return results


def encoder_view(image: Image.Image, preprocessing: Preprocessing) -> Image.Image:
    """The part of ``image`` the encoder saw (short side resized, centre crop), so the grid's
    cells line up with the picture under them."""
    return transforms.CenterCrop(preprocessing.crop)(
        transforms.Resize(preprocessing.resize)(load_rgb(image))
    )


def figure_name(image_name: str, taken: set[str] | None = None) -> str:
    """A safe PNG file name for a photo's figure; ``-2``, ``-3``... keep apart names already
    in ``taken`` (updated here)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image_name).stem)[:120] or "image"
    name, n = f"{stem}.png", 1
    while taken is not None and name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    if taken is not None:
        taken.add(name)
    return name


def write_attention_maps(
    result_images: Sequence[tuple[str, Image.Image, AttentionCaption]],
    preprocessing: Preprocessing,
    out_dir: str | Path,
    taken: set[str] | None = None,
    smoke: bool = False,
) -> list[Path]:
    """One figure per (name, photo, caption) into ``out_dir``; ``smoke``: marked as a smoke
    run's."""
    from .plots import plot_attention_map

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken = set() if taken is None else taken
    return [
        plot_attention_map(
            encoder_view(image, preprocessing), result, out_dir / figure_name(name, taken), smoke
        )
        for name, image, result in result_images
    ]

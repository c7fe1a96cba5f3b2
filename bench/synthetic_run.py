"""Flickr30k-sized random training data in memory, for the GPU benchmarks (no download).

The same seed gives the same data in every process, so torchrun's processes agree on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from storyteller.data.captions import CaptionDataset
from storyteller.data.vocab import Vocabulary
from storyteller.features.cache_format import FeatureCache

FEATURE_DIM = 2048  # ResNet50's pooled features
VOCAB_WORDS = 5_152  # + 4 special tokens: Flickr30k's 5,156 at threshold 5
CAPTIONS_PER_IMAGE = 5


def flickr30k_sized(num_images: int = 31_783, seed: int = 0, caption_words: int = 12):
    """(cache, dataset, splits, vocab) shaped like Flickr30k with ResNet50 features: random
    features, captions of ``caption_words`` words drawn with Zipf-like frequencies, 80/10/10."""
    generator = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(VOCAB_WORDS)]
    names = [f"{i:06d}.jpg" for i in range(num_images)]
    features = torch.randn(num_images, FEATURE_DIM, generator=generator)  # (N, 2048)
    weights = 1.0 / torch.arange(1, VOCAB_WORDS + 1, dtype=torch.float)  # Zipf: rank^-1
    draws = torch.multinomial(
        weights, num_images * CAPTIONS_PER_IMAGE * caption_words, True, generator=generator
    ).view(num_images, CAPTIONS_PER_IMAGE, caption_words)  # (N, 5, words)
    captions = {
        name: [" ".join(words[i] for i in caption) for caption in draws[row].tolist()]
        for row, name in enumerate(names)
    }
    cache = FeatureCache(names, features, {"encoder": "resnet50", "dim": FEATURE_DIM})
    dataset = CaptionDataset(Path("."), captions, Path("synthetic"))
    train, val = int(0.8 * num_images), int(0.9 * num_images)
    splits = {"train": names[:train], "val": names[train:val], "test": names[val:]}
    return cache, dataset, splits, Vocabulary(words, threshold=5)

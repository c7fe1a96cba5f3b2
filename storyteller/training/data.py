"""The training data: caption pairs over cached features, and the loaders that batch them (a
share of every batch per process under torchrun)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from ..config import ModelConfig, TrainConfig
from ..data.captions import CaptionDataset
from ..data.sample import MANIFEST_FILENAME, MANIFEST_FORMAT
from ..data.vocab import PAD_ID, Vocabulary
from ..errors import StorytellerError
from ..features.cache_format import FeatureCache
from ..features.encoders import get_encoder_spec
from ..models import decoder_class
from .distributed import SINGLE_PROCESS, DistContext
from .finetune import FineTunedEncoder, ImageCaptions, collate_images, image_transform


def is_sample(dataset: CaptionDataset) -> bool:
    """Whether ``dataset`` is the embedded drawn sample (the ``sample.json`` beside its
    captions), so a model trained on it can say that it knows drawn shapes, not photos."""
    try:
        manifest = json.loads((dataset.source.parent / MANIFEST_FILENAME).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT


class CaptionPairs(Dataset):
    """One item per (image, caption) pair: (feature row, caption ids)."""

    def __init__(
        self,
        cache: FeatureCache,
        dataset: CaptionDataset,
        images: list[str],
        vocab: Vocabulary,
        max_length: int,
    ):
        self.cache = cache
        self.items: list[tuple[int, torch.Tensor]] = []
        for name in images:
            if name not in cache:  # unreadable image: already reported at extraction
                continue
            row = cache.index[name]
            for caption in dataset.captions[name]:
                self.items.append((row, torch.tensor(vocab.encode(caption, max_length))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return self.items[i]


def make_collate(cache: FeatureCache, layout: str = "pooled") -> Callable:
    """Batches of (features, captions), the features in ``layout`` (a grid read from disk)."""

    def collate(batch):
        rows = torch.tensor([row for row, _ in batch])
        features = cache.batch(rows, layout)  # (B, feature_dim) or (B, h*w, feature_dim)
        captions = nn.utils.rnn.pad_sequence(
            [ids for _, ids in batch], batch_first=True, padding_value=PAD_ID
        )  # (B, T)
        return features, captions

    return collate


@dataclass
class TrainingData:
    """What a run trains and validates on, and how it batches it."""

    train: Dataset
    val: Dataset
    collate: Callable
    batch_size: int  # items per optimiser step (all processes together)
    num_workers: int


def training_data(
    cache: FeatureCache,
    dataset: CaptionDataset,
    splits: dict[str, list[str]],
    vocab: Vocabulary,
    model_config: ModelConfig,
    train_config: TrainConfig,
    encoder: FineTunedEncoder | None = None,
) -> TrainingData:
    """The train and validation sets: (feature row, caption) pairs from the cache, or, with a
    fine-tuned ``encoder``, the photos with all their captions (the cache then only says which
    photos were readable)."""
    if encoder is None:
        layout = decoder_class(model_config.decoder).feature_layout
        train_set, val_set = (
            CaptionPairs(cache, dataset, splits[split], vocab, train_config.max_length)
            for split in ("train", "val")
        )
        data = TrainingData(
            train_set, val_set, make_collate(cache, layout), train_config.batch_size,
            train_config.num_workers,
        )  # fmt: skip
    else:
        preprocessing = get_encoder_spec(model_config.encoder).preprocessing
        train_set, val_set = (
            ImageCaptions(
                dataset,
                splits[split],
                vocab,
                train_config.max_length,
                image_transform(preprocessing, augment=train_config.augment and split == "train"),
                keep=cache.__contains__,  # unreadable at extraction: left out, as cached
            )
            for split in ("train", "val")
        )
        # batch_size counts captions: as many per step as the cached path, K per photo
        batch_size = max(1, train_config.batch_size // train_set.per_image)
        workers = train_config.num_workers or min(4, os.cpu_count() or 1)
        data = TrainingData(train_set, val_set, collate_images, batch_size, workers)
    if not len(data.train) or not len(data.val):
        raise StorytellerError("the train and validation splits must both hold captioned images")
    return data


def make_loaders(
    data: TrainingData,
    train_config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    context: DistContext = SINGLE_PROCESS,
) -> tuple[DataLoader, DataLoader]:
    """Training batches (shuffled; under DDP each process gets its share of every batch) and
    validation batches (the one-process batches dealt out to the processes in turn, so the
    summed loss equals the one-process loss)."""
    batch_size = data.batch_size
    options = dict(
        collate_fn=data.collate, num_workers=data.num_workers, pin_memory=device.type == "cuda"
    )
    if context.enabled:
        per_process = batch_size // context.world_size
        if per_process < 1:
            raise StorytellerError(
                f"batch size {batch_size} is smaller than the number of "
                f"processes ({context.world_size})"
            )
        sampler = DistributedSampler(
            data.train, context.world_size, context.rank, shuffle=True, seed=train_config.seed
        )
        train_loader = DataLoader(data.train, per_process, sampler=sampler, **options)
    else:
        train_loader = DataLoader(
            data.train, batch_size, shuffle=True, generator=generator, **options
        )
    val_batches = list(BatchSampler(range(len(data.val)), batch_size * 2, drop_last=False))
    val_loader = DataLoader(
        data.val, batch_sampler=val_batches[context.rank :: context.world_size], **options
    )
    return train_loader, val_loader

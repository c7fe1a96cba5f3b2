"""Batch sizes and workers that follow the hardware a notebook finds."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import TrainConfig
from ..features.extraction_sizes import extraction_sizes


@dataclass(frozen=True)
class Sizes:
    """Batch sizes and workers for the hardware found."""

    batch_size: int  # training batch (nn.DataParallel splits it across the GPUs)
    feature_batch_size: int  # images per batch at feature extraction
    num_workers: int  # worker processes reading (on a CPU: decoding) images at extraction


def adapted_sizes(gpu_count: int, cpu_count: int | None = None) -> Sizes:
    """Sizes for ``gpu_count`` GPUs and ``cpu_count`` cores: the recipe's training batch per
    GPU (DataParallel gives each of Kaggle's two T4s its share), and the CLI's extraction sizes
    for one device (extraction runs on one GPU whatever the count)."""
    per_device = TrainConfig().batch_size
    extraction = extraction_sizes(on_gpu=gpu_count > 0, cpu_count=cpu_count)
    return Sizes(
        batch_size=per_device * max(1, gpu_count),
        feature_batch_size=extraction.batch_size,
        num_workers=extraction.num_workers,
    )

"""How many images a batch and how many loader workers feature extraction uses on one device.
Torch-free, so ``features --help`` names the defaults before torch loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config_cli import Bound

# On a CPU the network, not JPEG decoding, is the bottleneck: small batches, one worker
# measured fastest (bench/extraction_throughput.py).
CPU_BATCH_SIZE = 4
CPU_NUM_WORKERS = 1
# On a GPU: big batches (the encoder alone does 11,040 img/s for ResNet50 at 64, fp16) and,
# since JPEGs are decoded on the GPU, workers that only read file bytes: a few are enough.
GPU_BATCH_SIZE = 64
GPU_NUM_WORKERS = 4
#: What ``features --batch-size`` and ``--workers`` accept: a batch is ~0.6 MB of pixels per
#: image, all in memory at once.
BATCH_SIZES, WORKERS = Bound(1, 1024), Bound(0, 64)


@dataclass(frozen=True)
class ExtractionSizes:
    batch_size: int
    num_workers: int


def extraction_sizes(on_gpu: bool, cpu_count: int | None = None) -> ExtractionSizes:
    """The sizes that measured fastest on a GPU or a CPU with ``cpu_count`` cores (default:
    this machine's); extraction runs on one device."""
    cpu_count = max(1, cpu_count or os.cpu_count() or 1)
    if on_gpu:
        return ExtractionSizes(GPU_BATCH_SIZE, min(GPU_NUM_WORKERS, cpu_count))
    return ExtractionSizes(CPU_BATCH_SIZE, CPU_NUM_WORKERS)

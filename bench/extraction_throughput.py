"""Feature extraction: batched DataLoader pipeline vs. a one-image-at-a-time loop.

Both encode the same images with the same encoder in the same process, side by side, and the
script prints images/second for each and their ratio.

    python bench/extraction_throughput.py [--data DIR] [--images 128] [--encoder efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from PIL import Image

from storyteller.data import load_dataset
from storyteller.encoders import build_encoder
from storyteller.features import FeatureExtractor, extract_features
from storyteller.pipeline import resolve_data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="dataset folder (default: the embedded sample)")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the package's choice"
    )
    args = parser.parse_args()

    dataset = load_dataset(resolve_data(args.data))
    names = sorted(dataset.images)[: args.images]
    encoder = build_encoder(args.encoder)
    extractor = FeatureExtractor(args.encoder, encoder=encoder)
    print(f"{len(names)} images, encoder {args.encoder}, torch threads {torch.get_num_threads()}")

    # Warm-up (first-call allocations), not timed.
    extractor([Image.open(dataset.image_dir / names[0])])

    started = time.perf_counter()
    for name in names:  # the naive loop: open, preprocess, encode, one by one
        extractor([Image.open(dataset.image_dir / name)])
    loop_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        extract_features(
            dataset.image_dir, names, tmp, args.encoder, batch_size=args.batch_size, encoder=encoder
        )
        batched_seconds = time.perf_counter() - started

    loop_rate, batched_rate = len(names) / loop_seconds, len(names) / batched_seconds
    print(f"one-at-a-time loop : {loop_rate:7.1f} img/s ({loop_seconds:.1f}s)")
    print(
        f"batched DataLoader : {batched_rate:7.1f} img/s ({batched_seconds:.1f}s, batch {args.batch_size})"
    )
    print(f"speed-up (batched / loop): {batched_rate / loop_rate:.2f}x")


if __name__ == "__main__":
    main()

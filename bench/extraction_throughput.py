"""Feature extraction throughput, measured side by side in one process on the same images.

Two comparisons, chosen by where JPEGs are decoded:

* PIL decoding (the CPU default): the batched DataLoader pipeline against a naive
  one-image-at-a-time loop, and their ratio;
* device decoding (a GPU's default, or ``--decode-on device`` on any device): the encoder's
  pure forward rate (random pixels already on the device, the extraction batch size, through
  ``FeatureExtractor.encode_batch``: fp16 autocast on CUDA) against full extraction with
  decoding on the device and with PIL decoding in the workers, and the ratios.

    python bench/extraction_throughput.py [--data DIR] [--images 128] [--encoder efficientnet_lite0]
        [--device cuda] [--decode-on auto|cpu|device] [--random-weights] [--repeat 3]

``--random-weights`` builds the encoder without downloading weights (a GPU machine without
internet): the speed of a network does not depend on its weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from PIL import Image

from storyteller.data.captions import load_dataset
from storyteller.features.batch_decoding import resolve_decode_on
from storyteller.features.cache import FeatureExtractor, extract_features
from storyteller.features.encoder_specs import DECODE_CHOICES
from storyteller.features.encoders import build_encoder, get_encoder_spec
from storyteller.features.extraction_sizes import CPU_BATCH_SIZE, GPU_BATCH_SIZE
from storyteller.pipeline import resolve_data
from storyteller.runtime import describe_hardware, get_device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_rate(extractor: FeatureExtractor, num_images: int, batch_size: int) -> float:
    """Images/second of the network alone: random pixels already on the device."""
    crop = extractor.spec.preprocessing.crop
    pixels = torch.randn(batch_size, 3, crop, crop, device=extractor.device)  # (B, 3, crop, crop)
    for _ in range(3):  # warm-up: cuDNN autotuning, first-call allocations
        extractor.encode_batch(pixels)
    num_batches = max(1, -(-num_images // batch_size))
    _synchronize(extractor.device)
    started = time.perf_counter()
    for _ in range(num_batches):
        extractor.encode_batch(pixels)  # (B, dim), copied to the CPU as extraction does
    _synchronize(extractor.device)
    return num_batches * batch_size / (time.perf_counter() - started)


def extraction_rate(args, dataset, names, encoder, device, decode_on, batch) -> float:
    """Images/second of ``extract_features`` into a fresh cache (after an untimed warm-up)."""

    def extract(subset) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            _synchronize(device)
            started = time.perf_counter()
            extract_features(
                dataset.image_dir,
                subset,
                tmp,
                args.encoder,
                batch_size=batch,
                num_workers=args.workers,
                device=device,
                encoder=encoder,
                decode_on=decode_on,
            )
            _synchronize(device)
            return time.perf_counter() - started

    extract(names[:batch])  # warm-up: decoder set-up, first batch of cuDNN, workers
    seconds = min(extract(names) for _ in range(args.repeat))
    return len(names) / seconds


def compare_loop_and_batched(args, dataset, names, encoder, extractor, device) -> None:
    """PIL decoding: the batched pipeline against a one-image-at-a-time loop."""
    extractor([Image.open(dataset.image_dir / names[0])])  # warm-up, not timed
    started = time.perf_counter()
    for name in names:  # the naive loop: open, preprocess, encode, one by one
        extractor([Image.open(dataset.image_dir / name)])
    loop_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        extract_features(
            dataset.image_dir,
            names,
            tmp,
            args.encoder,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            encoder=encoder,
            decode_on="cpu",
        )
        batched_seconds = time.perf_counter() - started

    loop_rate, batched_rate = len(names) / loop_seconds, len(names) / batched_seconds
    batch = args.batch_size or CPU_BATCH_SIZE
    print(f"one-at-a-time loop : {loop_rate:7.1f} img/s ({loop_seconds:.1f}s)")
    print(f"batched DataLoader : {batched_rate:7.1f} img/s ({batched_seconds:.1f}s, batch {batch})")
    print(f"speed-up (batched / loop): {batched_rate / loop_rate:.2f}x")


def compare_decoders(args, dataset, names, encoder, extractor, device) -> None:
    """Device decoding: the encoder alone against extraction decoding on the device or in PIL."""
    batch = args.batch_size or (GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE)
    for name in names:  # the files into the page cache, so neither run pays the first read
        (dataset.image_dir / name).read_bytes()
    network = encoder_rate(extractor, len(names), batch)
    print(f"encoder alone (random pixels on {device.type}, batch {batch}): {network:8.1f} img/s")
    rates = {}
    labels = {"device": f"decode_jpeg on {device.type}", "cpu": "PIL in workers"}
    for decode_on, label in labels.items():
        rates[decode_on] = extraction_rate(args, dataset, names, encoder, device, decode_on, batch)
        print(
            f"extraction, {label:<19}: {rates[decode_on]:8.1f} img/s "
            f"= {rates[decode_on] / network:6.1%} of the encoder's rate"
        )
    print(f"speed-up (device decoding / PIL): {rates['device'] / rates['cpu']:.2f}x")


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
    parser.add_argument("--workers", type=int, default=None, help="default: the package's choice")
    parser.add_argument("--device", default=None, help="default: the package's device")
    parser.add_argument(
        "--decode-on",
        choices=DECODE_CHOICES,
        default="auto",
        help="device: the decoder comparison (a GPU's default); cpu: loop against batched",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="no weight download (speed only)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="timed extractions per decoder (best is kept)"
    )
    args = parser.parse_args()

    device = get_device(args.device)
    dataset = load_dataset(resolve_data(args.data))
    names = sorted(dataset.images)[: args.images]
    get_encoder_spec(args.encoder)  # a clear error for an unknown name, before any work
    encoder = build_encoder(args.encoder, pretrained=not args.random_weights)
    extractor = FeatureExtractor(args.encoder, device, encoder=encoder)
    workers = args.workers if args.workers is not None else "default"
    print(
        f"{len(names)} images, encoder {args.encoder}"
        f"{' (random weights)' if args.random_weights else ''}, {describe_hardware()}, "
        f"device {device}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, workers {workers}"
    )
    if resolve_decode_on(args.decode_on, device) == "device":
        compare_decoders(args, dataset, names, encoder, extractor, device)
    else:
        compare_loop_and_batched(args, dataset, names, encoder, extractor, device)


if __name__ == "__main__":
    main()

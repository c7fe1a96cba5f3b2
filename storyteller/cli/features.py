"""``features``: extract and cache image features."""

import argparse
from pathlib import Path

from ..config_cli import number
from ..decoder_options import DEFAULT_DECODER
from ..features import extraction_sizes as sizes
from ..features.encoder_specs import DECODE_CHOICES, ENCODERS, LAYOUTS
from .common import add_common, load_pipeline


def add_encoder(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder", choices=list(ENCODERS), help="default: resnet50, or efficientnet_lite0 offline"
    )


def add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="what the feature cache holds: pooled (one vector per image) or grid (7x7 "
        "vectors per image, for attention captioners; ~49x the disk, and serves pooled "
        "ones too); default: what an existing cache holds, else what the default captioner "
        f"({DEFAULT_DECODER}) reads",
    )


def add_parser(sub) -> None:
    p = sub.add_parser("features", help="extract and cache image features (resumable)")
    add_common(p)
    add_encoder(p)
    p.add_argument(
        "--batch-size",
        type=number(int, sizes.BATCH_SIZES),
        help=f"default: {sizes.GPU_BATCH_SIZE} on a GPU, {sizes.CPU_BATCH_SIZE} on a CPU",
    )
    p.add_argument(
        "--workers",
        type=number(int, sizes.WORKERS),
        help=f"image-decoding workers (default: {sizes.GPU_NUM_WORKERS} on a GPU, {sizes.CPU_NUM_WORKERS} on a CPU)",
    )
    p.add_argument(
        "--decode-on",
        choices=DECODE_CHOICES,
        default="auto",
        help="where JPEGs are decoded: auto (default: on the GPU when there is one), cpu "
        "(PIL in the workers) or device (torchvision on the --device)",
    )
    add_layout(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    p.set_defaults(handler=run)


def _default_layout(out: str) -> str | None:
    """``features`` without ``--layout``: what an existing cache holds (None lets the step
    read it), else what the default captioner reads, so ``train`` with its defaults finds it."""
    from ..models import decoder_class
    from ..run_folder import RunPaths

    if RunPaths(Path(out)).features_index.is_file():
        return None
    return decoder_class(DEFAULT_DECODER).feature_layout


def run(args) -> None:
    load_pipeline(args.data).features_step(
        args.data,
        args.out,
        args.encoder,
        args.batch_size,
        args.workers,
        args.overwrite,
        args.device,
        decode_on=args.decode_on,
        layout=args.layout or _default_layout(args.out),
    )

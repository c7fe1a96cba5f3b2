"""``encoders``: the table of image encoders, built with random weights."""

import sys

from ..config_cli import number
from ..features.encoder_specs import ENCODERS
from ..features.extraction_sizes import BATCH_SIZES


def _stderr(message: str) -> None:  # sys.stderr looked up per call: tests swap it
    print(message, file=sys.stderr, flush=True)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "encoders",
        help="list the image encoders: dim, grid, input, parameters, weights, CPU img/s",
        description="Build each encoder with random weights (no download) to count its "
        "parameters and time it on the CPU; progress goes to stderr, the table to stdout.",
    )
    p.add_argument(
        "--only", nargs="+", choices=list(ENCODERS), metavar="NAME", help="these encoders only"
    )
    p.add_argument("--no-speed", action="store_true", help="skip the CPU timing")
    p.add_argument(
        "--batch-size", type=number(int, BATCH_SIZES), default=4, help="images per timed batch"
    )
    p.set_defaults(handler=run)


def run(args) -> None:
    import torch

    from ..features.encoder_table import encoder_rows, format_table

    rows = encoder_rows(args.only, speed=not args.no_speed, batch_size=args.batch_size, log=_stderr)
    print(format_table(rows))
    if not args.no_speed:
        print(
            f"\nCPU img/s: random weights, batch {args.batch_size}, "
            f"{torch.get_num_threads()} thread(s), measured now on this machine."
        )
    skipped = [row["name"] for row in rows if "error" in row]
    if skipped:
        print(f"{len(skipped)} encoder(s) not built here: {', '.join(skipped)}", file=sys.stderr)

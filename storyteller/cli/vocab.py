"""``vocab``: split the images and build the vocabulary from the training captions."""

import argparse

from ..config import COUNT, MIN_WORD_COUNT, SEED
from ..config_cli import number
from ..errors import StorytellerError
from .common import add_common, load_pipeline


def add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold", type=number(int, COUNT), default=MIN_WORD_COUNT, help="minimum word count"
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "vocab", help="split images 80/10/10 and build vocab.pkl from training captions"
    )
    add_common(p)
    add_threshold(p)
    p.add_argument(
        "--seed", type=number(int, SEED), default=0, help="random seed of the 80/10/10 split"
    )
    p.add_argument(
        "--captions",
        metavar="FILE",
        help="build from a caption file alone, without its images (e.g. Flickr8k's "
        "captions.txt); same split and vocabulary as --data on the full folder",
    )
    p.add_argument(
        "--dataset-name", help="with --captions: a name recorded in the provenance (e.g. Flickr8k)"
    )
    p.set_defaults(handler=run)


def run(args) -> None:
    if args.captions and args.data:
        raise StorytellerError("give either --data (a dataset folder) or --captions FILE")
    if args.captions:
        load_pipeline().vocab_from_captions(
            args.captions, args.out, args.threshold, args.seed, args.dataset_name
        )
    else:
        load_pipeline(args.data).vocab_step(args.data, args.out, args.threshold, args.seed)

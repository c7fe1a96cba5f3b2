"""``evaluate``: score the best checkpoint on the test split; its flags are also
``run-all``'s."""

import argparse

from .common import add_common, add_length_penalty, beam_width, load_pipeline


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--beam",
        type=beam_width,
        nargs="+",
        default=[1, 5],
        help="decodings to score: 1 = greedy (default: 1 5)",
    )
    add_length_penalty(p)
    p.add_argument(
        "--meteor",
        choices=["auto", "java", "nltk", "none"],
        default="auto",
        help="METEOR scorer: the reference Java jar, NLTK's port, none, or auto (java when "
        "it can run, else nltk)",
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score the best checkpoint on the test split -> metrics.json"
    )
    add_common(p)
    add_eval_args(p)
    p.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        help="default: OUT/best_model.pth; or a model folder or Hub model id USER/NAME",
    )
    p.add_argument("--revision", help="a Hub model's branch, tag or commit (default: main)")
    p.set_defaults(handler=run)


def run(args) -> None:
    load_pipeline().evaluate_step(  # it reads the run folder before --data
        args.data,
        args.out,
        tuple(args.beam),
        args.length_penalty,
        args.meteor,
        args.checkpoint,
        args.device,
        revision=args.revision,
    )

"""``python -m storyteller <command>``: one module per command, its parser and a ``run`` that
imports torch only when it runs. Errors are one line (``STORYTELLER_DEBUG=1``: a traceback)."""

import argparse
import os
import sys
from importlib import import_module

from ..errors import StorytellerError, disk_full_cause, disk_full_error, install_problem
from .common import Parser, terminal_text

#: The commands, each a module here, in the order ``--help`` lists them.
COMMANDS = (
    "sample features vocab train evaluate caption notebooks story run_all deploy push encoders"
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m storyteller",
        description="Neural Storyteller: cache CNN features, build a vocabulary, train a "
        "captioner (lstm, attention or transformer; attention by default), caption photos "
        "(greedy / beam search), evaluate, and write a story from a caption. Run `run-all` "
        "for the whole chain.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in COMMANDS.split():  # each sets its parser's `handler` to the module's run
        import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0  # a command's exit status; None when it succeeded
    except StorytellerError as exc:
        print(f"error: {terminal_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is not None:  # a write outside the atomic ones, which name their file
            where = full.filename or f"into {getattr(args, 'out', None) or 'the output folder'}"
            print(f"error: {disk_full_error(full, where)}", file=sys.stderr)
            return 2
        problem = install_problem(exc)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        if os.environ.get("STORYTELLER_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {terminal_text(str(exc))} (set "
            "STORYTELLER_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1

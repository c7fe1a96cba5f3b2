"""What several commands share: the parser, their common flags, the pipeline import, and text
made safe for a terminal."""

import argparse
import difflib
import re

from ..config import Strategy
from ..config_cli import flag_type
from ..run_folder import BEST_CHECKPOINT, DEFAULT_OUT


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless it already says it or X means "none"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        bound = getattr(action.type, "bound", None)  # a number's range (config_cli.number)
        text = f"{action.help or ''}, {bound}" if bound else action.help or ""
        default = action.default
        means_none = default == [] or any(default is v for v in (None, False, argparse.SUPPRESS))
        positional = not action.option_strings and action.nargs not in ("?", "*")
        if "default" in text or means_none or positional:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse with shown defaults and a "did you mean" for a mistyped command, choice or
    flag (subcommand parsers are of this class too). A flag is never taken from a prefix of
    its name: ``--bea`` is a mistake, not ``--beam``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        """Unknown flags are reported by the subcommand's parser: its usage, its flags."""
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
            parser = commands[0].choices[getattr(known, commands[0].dest)] if commands else self
            flags = [f for a in parser._actions for f in a.option_strings]
            hints = [_did_you_mean(arg.split("=", 1)[0], flags) for arg in unknown]
            hint = next((h for h in hints if h), "")
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return known

    def error(self, message: str):
        invalid = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if invalid:
            choices = re.findall(r"'([^']*)'", invalid.group(2))
            message += _did_you_mean(invalid.group(1), choices)
        super().error(message)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    """``"; did you mean --epochs?"``, or "" when no candidate is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


#: Where ``deploy`` and ``push`` get a Hugging Face token (their help says it).
TOKEN_SOURCES = (
    "The token comes from HF_TOKEN, the `hf auth login` cache, or a hidden prompt; it is never "
    "shown."
)

beam_width = flag_type(Strategy, "beam_size")  # 1 = greedy, at most the app's cap


def add_length_penalty(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--length-penalty",
        type=flag_type(Strategy, "length_penalty"),
        default=Strategy.length_penalty,
        help="beam length normalisation alpha",
    )


def add_common(p: argparse.ArgumentParser) -> None:
    """The flags of every step of a run."""
    p.add_argument(
        "--data",
        help="dataset folder (Images/ + captions.txt, Flickr8k.token.txt or "
        "results.csv); default: the embedded sample dataset",
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"run folder for every artefact (default: ./{DEFAULT_OUT})",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def add_captioner(p, beam_help: str, device_help: str, model_flag: bool = True) -> None:
    """The flags that load a trained captioner and decode with it."""
    flags = ["--checkpoint", "--model"] if model_flag else ["--checkpoint"]
    p.add_argument(
        *flags,
        dest="checkpoint",
        default=f"{DEFAULT_OUT}/{BEST_CHECKPOINT}",
        help="the trained captioner: a run's best_model.pth, a run folder, a model folder "
        "(push --dry-run) or a Hugging Face Hub model id USER/NAME",
    )
    p.add_argument(
        "--vocab",
        help="a best_model.pth's vocabulary (default: the vocab.pkl beside it); a model "
        "folder or Hub model carries its own",
    )
    p.add_argument("--revision", help="a Hub model's branch, tag or commit (default: main)")
    p.add_argument("--beam", type=beam_width, default=Strategy.beam_size, help=beam_help)
    add_length_penalty(p)
    p.add_argument("--device", help=device_help)


def load_pipeline(data: str | None = None):
    """:mod:`storyteller.pipeline` (seconds: torch), imported after a given ``--data`` folder
    is checked, so a mistyped one fails at once."""
    if data is not None:
        from ..data.captions import check_data_dir

        check_data_dir(data)
    from .. import pipeline

    return pipeline


#: what a terminal would obey rather than show: escape sequences (CSI: colours, clearing the
#: screen; OSC: the window title, links; two-character ones) and control characters other
#: than newline and tab
_TERMINAL_CONTROLS = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def terminal_text(text: str) -> str:
    """``text`` without what a terminal obeys: a Hub vocabulary's word or a story server's
    reply cannot set the title, clear the screen or move the cursor."""
    return _TERMINAL_CONTROLS.sub("", text)

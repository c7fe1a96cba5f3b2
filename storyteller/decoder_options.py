"""The built-in captioners' names and their own options, as data: no torch here, so the CLI's
``--help`` and a mistyped ``--decoder-option`` answer before any model code loads. The classes
in :mod:`storyteller.models` register under these names with these options dataclasses."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, fields
from typing import Any

from .config_cli import option
from .errors import StorytellerError


@dataclass
class NoOptions:
    """The options of a decoder whose sizes are all ModelConfig's own fields."""


@dataclass
class AttentionOptions:
    """The attention captioner's own sizes and switches (the LSTM's are ModelConfig's)."""

    attention: str = option(
        "bahdanau",
        "bahdanau (additive) or luong (multiplicative, general) scoring",
        choices=("bahdanau", "luong"),
    )
    attention_dim: int = option(256, "Bahdanau's hidden size of the scoring MLP (Luong has none)")
    alpha_c: float = option(1.0, "weight of the doubly stochastic penalty (Xu et al.: lambda = 1)")


@dataclass
class TransformerOptions:
    """The transformer captioner's own sizes (ModelConfig's LSTM sizes are not read)."""

    d_model: int = option(256, "width of every token, word or grid position")
    heads: int = option(4, "attention heads (d_model must divide by it)")
    encoder_layers: int = option(1, "transformer encoder layers over the grid")
    decoder_layers: int = option(2, "masked transformer decoder layers over the words")
    ff_dim: int = option(1024, "hidden size of each layer's feed-forward block")
    dropout: float = option(0.1, "dropout probability (transformer-sized, not the LSTM's 0.5)")
    positions: str = option(
        "learned", "word positions: learned or sinusoidal", choices=("learned", "sinusoidal")
    )
    max_positions: int = option(64, "longest word prefix (learned positions are a table this long)")
    # 64 (8 x 8) holds every 224 px grid and Inception's; a run on a larger grid (SqueezeNet's
    # 13 x 13) gets h * w (see with_grid).
    grid_positions: int = option(64, "most grid positions: the learned table's length")
    warmup_steps: int = option(500, "batches of linear warm-up, then inverse-square-root decay")


#: The built-in decoders in ``--decoder``'s order, each with its options dataclass.
BUILTIN_DECODERS: dict[str, type] = {
    "lstm": NoOptions,
    "attention": AttentionOptions,
    "transformer": TransformerOptions,
}

#: The captioner trained when none is named (``ModelConfig.decoder``'s default, so the Python
#: API, the CLI and the notebooks agree; docs/results.md, "Captioners compared", says why).
DEFAULT_DECODER = "attention"


def option_defaults(name: str) -> dict[str, Any]:
    """The built-in decoder's own options and their defaults (``{}`` for one that has none)."""
    if name not in BUILTIN_DECODERS:
        choices = ", ".join(BUILTIN_DECODERS)
        raise StorytellerError(f"unknown decoder {name!r}: choose one of {choices}")
    options = fields(BUILTIN_DECODERS[name])
    return {f.name: f.default for f in options if f.default is not MISSING}


def _option_value(decoder: str, key: str, text: str, default: Any) -> Any:
    """``text`` as the option's type, read from its default (bool, int, float or str)."""
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        value = kind(text)
        if kind is float and not math.isfinite(value):
            raise ValueError(text)
        return value
    except ValueError:
        words = {bool: "true or false", int: "an integer", float: "a finite number"}
        wanted = words.get(kind, "text")
        raise StorytellerError(
            f"the {decoder!r} decoder's option {key} takes {wanted}, not {text!r}"
        ) from None


def parse_decoder_options(decoder: str, items: Iterable[str]) -> dict[str, Any]:
    """``["d_model=128", "heads=2"]`` -> ``{"d_model": 128, "heads": 2}``, each value of its
    option's type; an unknown name is an error listing the decoder's options."""
    defaults = option_defaults(decoder)
    listed = ", ".join(f"{k}={v}" for k, v in defaults.items()) or "none"
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise StorytellerError(f"a decoder option is NAME=VALUE, not {item!r}")
        if key not in defaults:
            raise StorytellerError(
                f"the {decoder!r} decoder has no option {key!r} (its options: {listed})"
            )
        options[key] = _option_value(decoder, key, text.strip(), defaults[key])
    return options

"""The registry of captioners: a name in ``ModelConfig.decoder`` -> the class that builds it.

One place that knows every decoder, so a checkpoint names its decoder and is rebuilt from its
own config (``build_model(config)``) by training, evaluation, the app and the CLI alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import ModelConfig
from ..errors import StorytellerError

if TYPE_CHECKING:
    from .base import CaptionDecoder

#: Every registered decoder by name (``lstm`` first: the seed recipe).
DECODERS: dict[str, type[CaptionDecoder]] = {}

#: The captioner that ``train``/``run-all`` and the notebooks train when none is named (README,
#: "Captioners compared", says why). A checkpoint whose config names no decoder is the seed
#: ``lstm`` whatever this says: that is ``ModelConfig.decoder``'s default.
DEFAULT_DECODER = "attention"

D = TypeVar("D", bound="type[CaptionDecoder]")


def register_decoder(name: str) -> Callable[[D], D]:
    """Class decorator: ``@register_decoder("attention")`` makes the class buildable from a
    config whose ``decoder`` is that name."""

    def register(cls: D) -> D:
        if DECODERS.get(name, cls) is not cls:
            raise ValueError(f"decoder {name!r} is already registered ({DECODERS[name].__name__})")
        cls.name = name
        DECODERS[name] = cls
        return cls

    return register


def decoder_class(name: str) -> type[CaptionDecoder]:
    """The class registered as ``name``, or a :class:`StorytellerError` listing the choices."""
    try:
        return DECODERS[name]
    except KeyError:
        raise StorytellerError(
            f"unknown decoder {name!r}: choose one of {', '.join(DECODERS)}"
        ) from None


def resolve_config(config: ModelConfig) -> ModelConfig:
    """``config`` as its model will store it: the decoder's options complete (defaults filled
    in). Two configs describe the same architecture when their resolved forms are equal."""
    return decoder_class(config.decoder).resolve_config(config)


def build_model(config: ModelConfig) -> CaptionDecoder:
    """A fresh (randomly initialised) model of the decoder ``config.decoder`` names; an
    impossible size or choice is a one-line :class:`StorytellerError` naming the decoder."""
    cls = decoder_class(config.decoder)
    try:
        model = cls(config)
    except (ValueError, ArithmeticError) as exc:  # e.g. heads=0: d_model % 0
        raise StorytellerError(f"the {config.decoder!r} decoder: {exc}") from None
    if config.freeze_embeddings:  # here, so a fresh run, a resume and a reload agree
        model.word_embedding().weight.requires_grad_(False)
    return model


def option_defaults(name: str) -> dict[str, Any]:
    """The decoder's own options and their defaults (``{}`` for one that has none)."""
    return {
        f.name: f.default
        for f in fields(decoder_class(name).options_class)
        if f.default is not MISSING
    }


def _option_value(decoder: str, key: str, text: str, default: Any) -> Any:
    """``text`` as the option's type, read from its default (bool, int, float or str)."""
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        wanted = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "text")
        raise StorytellerError(
            f"the {decoder!r} decoder's option {key} takes {wanted}, not {text!r}"
        ) from None


def parse_decoder_options(decoder: str, items: Iterable[str]) -> dict[str, Any]:
    """``["d_model=128", "heads=2"]`` -> ``{"d_model": 128, "heads": 2}``, each value of its
    option's type; an unknown name or a malformed item is a one-line error listing the
    decoder's options (the CLI's ``--decoder-option``)."""
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

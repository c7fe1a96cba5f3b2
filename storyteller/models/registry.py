"""The registry of captioners: a name in ``ModelConfig.decoder`` -> the class that builds it,
so a checkpoint names its decoder and is rebuilt from its own config. The built-in names and
their options are listed without torch in :mod:`storyteller.decoder_options`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..config import ModelConfig
from ..decoder_options import BUILTIN_DECODERS
from ..errors import StorytellerError

if TYPE_CHECKING:
    from .base import CaptionDecoder

#: Every registered decoder by name, ``lstm`` (the seed) first.
DECODERS: dict[str, type[CaptionDecoder]] = {}

D = TypeVar("D", bound="type[CaptionDecoder]")


def register_decoder(name: str) -> Callable[[D], D]:
    """``@register_decoder("attention")``: the class is built for configs naming it."""

    def register(cls: D) -> D:
        listed = BUILTIN_DECODERS.get(name, cls.options_class)
        if cls.options_class is not listed:  # the CLI reads a built-in's options from the list
            raise ValueError(
                f"decoder {name!r} is built in with {listed.__name__} "
                f"(storyteller.decoder_options), not {cls.options_class.__name__}"
            )
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
    """``config`` as its model stores it, the decoder's options complete: two configs are the
    same architecture when their resolved forms are equal."""
    return decoder_class(config.decoder).resolve_config(config)


def build_model(config: ModelConfig) -> CaptionDecoder:
    """A freshly initialised model of ``config``; an impossible size or choice is a one-line
    :class:`StorytellerError` naming the decoder."""
    cls = decoder_class(config.decoder)
    try:
        model = cls(config)
    except (ValueError, ArithmeticError) as exc:  # e.g. heads=0: d_model % 0
        raise StorytellerError(f"the {config.decoder!r} decoder: {exc}") from None
    if config.freeze_embeddings:  # here, so a fresh run, a resume and a reload agree
        model.word_embedding().weight.requires_grad_(False)
    return model

"""The registry of captioners: a name in ``ModelConfig.decoder`` -> the class that builds it.

One place that knows every decoder, so a checkpoint names its decoder and is rebuilt from its
own config (``build_model(config)``) by training, evaluation, the app and the CLI alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..config import ModelConfig
from ..errors import StorytellerError

if TYPE_CHECKING:
    from .base import CaptionDecoder

#: Every registered decoder by name (``lstm`` first: the default and the seed recipe).
DECODERS: dict[str, type[CaptionDecoder]] = {}

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
    """A fresh (randomly initialised) model of the decoder ``config.decoder`` names."""
    return decoder_class(config.decoder)(config)

"""The captioner family: one protocol, a registry, and the decoders that follow it.

``build_model(config)`` makes the captioner ``config.decoder`` names (``DECODERS`` lists them:
today ``lstm``, the Neural Storyteller seed). Every decoder is a :class:`CaptionDecoder`
(``init_state``, ``step``, ``forward``) with a :class:`DecoderState` that beam search can
reorder; see :mod:`storyteller.models.base` for the protocol and how to add one.
"""

from .base import CaptionDecoder, DecoderState, NoOptions, batch_field
from .lstm import LSTMDecoder, LSTMState  # registers "lstm"
from .registry import DECODERS, build_model, decoder_class, register_decoder, resolve_config

__all__ = [
    "DECODERS",
    "CaptionDecoder",
    "DecoderState",
    "LSTMDecoder",
    "LSTMState",
    "NoOptions",
    "batch_field",
    "build_model",
    "decoder_class",
    "register_decoder",
    "resolve_config",
]

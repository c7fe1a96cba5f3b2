"""The captioner family: one protocol, a registry, and the decoders that follow it.

``build_model(config)`` makes the captioner ``config.decoder`` names (``DECODERS`` lists them:
``lstm``, the Neural Storyteller seed, and ``attention``, Show, Attend and Tell's soft
attention over the CNN grid). Every decoder is a :class:`CaptionDecoder`
(``init_state``, ``step``, ``forward``) with a :class:`DecoderState` that beam search can
reorder; see :mod:`storyteller.models.base` for the protocol and how to add one.
"""

from .base import CaptionDecoder, DecoderState, NoOptions, batch_field
from .lstm import LSTMDecoder, LSTMState  # registers "lstm" first: the default
from .registry import DECODERS, build_model, decoder_class, register_decoder, resolve_config

# isort: split
# Registered after the LSTM (DECODERS lists the default first), so kept out of the sorted block.
from .attention import AttentionDecoder, AttentionOptions, AttentionState  # "attention"

__all__ = [
    "DECODERS",
    "AttentionDecoder",
    "AttentionOptions",
    "AttentionState",
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

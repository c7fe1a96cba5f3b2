"""The captioner family: one protocol, a registry, and the decoders that follow it.

``build_model(config)`` makes the captioner ``config.decoder`` names (``DECODERS`` lists them:
``lstm``, the Neural Storyteller seed; ``attention``, Show, Attend and Tell's soft
attention over the CNN grid; ``transformer``, a transformer encoder over the grid and a masked
transformer decoder over the words). Every decoder is a :class:`CaptionDecoder`
(``init_state``, ``step``, ``forward``) with a :class:`DecoderState` that beam search can
reorder; see :mod:`storyteller.models.base` for the protocol and how to add one.
"""

from ..decoder_options import (
    DEFAULT_DECODER,
    AttentionOptions,
    NoOptions,
    TransformerOptions,
    option_defaults,
    parse_decoder_options,
)
from .base import CaptionDecoder, DecoderState, batch_field
from .lstm import LSTMDecoder, LSTMState  # registers "lstm" first: the default
from .registry import DECODERS, build_model, decoder_class, register_decoder, resolve_config

# isort: split
# Registered after the LSTM (DECODERS lists the default first), so kept out of the sorted block.
from .attention import AttentionDecoder, AttentionState  # "attention"
from .transformer import TransformerDecoder, TransformerState  # "transformer"

__all__ = [
    "DECODERS",
    "DEFAULT_DECODER",
    "AttentionDecoder",
    "AttentionOptions",
    "AttentionState",
    "CaptionDecoder",
    "DecoderState",
    "LSTMDecoder",
    "LSTMState",
    "NoOptions",
    "TransformerDecoder",
    "TransformerOptions",
    "TransformerState",
    "batch_field",
    "build_model",
    "decoder_class",
    "option_defaults",
    "parse_decoder_options",
    "register_decoder",
    "resolve_config",
]

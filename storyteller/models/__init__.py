"""The captioner family: one protocol (:mod:`.base`), a registry (:mod:`.registry`), and the
decoders that follow it: ``lstm`` (the seed), ``attention`` (Show, Attend and Tell's soft
attention over the CNN grid) and ``transformer`` (a transformer encoder over the grid and a
masked transformer decoder over the words). ``build_model(config)`` makes the one
``config.decoder`` names.
"""

from .base import CaptionDecoder, DecoderState, batch_field
from .lstm import LSTMDecoder  # registers "lstm" first: the seed
from .registry import DECODERS, build_model, decoder_class, register_decoder, resolve_config

# isort: split
# Registered after the LSTM (DECODERS lists the seed first), so kept out of the sorted block.
from .attention import AttentionDecoder  # "attention"
from .transformer import TransformerDecoder  # "transformer"

__all__ = [
    "DECODERS",
    "AttentionDecoder",
    "CaptionDecoder",
    "DecoderState",
    "LSTMDecoder",
    "TransformerDecoder",
    "batch_field",
    "build_model",
    "decoder_class",
    "register_decoder",
    "resolve_config",
]

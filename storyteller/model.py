"""The old import path of the LSTM captioner, kept so existing code and notebooks still run.

``CaptionModel`` is :class:`storyteller.models.LSTMDecoder` and ``DecoderState`` its state,
:class:`storyteller.models.LSTMState`. New code imports from :mod:`storyteller.models`, where
every decoder follows one protocol and ``build_model(config)`` picks the one a config names.
"""

from .models.lstm import LSTMDecoder as CaptionModel
from .models.lstm import LSTMState as DecoderState

__all__ = ["CaptionModel", "DecoderState"]

"""The ``lstm`` captioner, the Neural Storyteller seed: the pooled CNN feature, projected to
the hidden size, becomes the LSTM's initial state; each step embeds the previous word and
predicts the next. Its sizes are :class:`~storyteller.config.ModelConfig`'s own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import INJECT_MODES, ModelConfig
from ..data.vocab import PAD_ID
from .base import CaptionDecoder, DecoderState, batch_field
from .registry import register_decoder


@dataclass
class LSTMState(DecoderState):
    h: torch.Tensor = batch_field(dim=1)  # (num_layers, N, hidden)
    c: torch.Tensor = batch_field(dim=1)  # (num_layers, N, hidden)
    image: torch.Tensor | None = batch_field(dim=0)  # (N, hidden) when fed at every step


@register_decoder("lstm")
class LSTMDecoder(CaptionDecoder):
    """One pooled feature vector per image; ``inject`` says where the image enters: the
    initial state only (``init``, the seed) or also every step's input (``init+input``)."""

    feature_layout: ClassVar[str] = "pooled"  # one vector per image: (B, feature_dim)

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        hidden, layers = config.hidden_size, config.num_layers
        if config.inject not in INJECT_MODES:
            modes = " or ".join(repr(mode) for mode in INJECT_MODES)
            raise ValueError(f"inject must be {modes}, got {config.inject!r}")
        self.image_proj = nn.Sequential(
            self.feature_layer_norm(config),
            nn.Linear(config.feature_dim, hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
        )
        self.feeds_image = config.inject == "init+input"
        lstm_input = config.embed_size + (hidden if self.feeds_image else 0)
        self.init_h = nn.Linear(hidden, hidden * layers)
        self.init_c = nn.Linear(hidden, hidden * layers)
        self.embed = nn.Embedding(config.vocab_size, config.embed_size, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(
            lstm_input,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=config.dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, config.vocab_size)

    def init_state(self, features: torch.Tensor) -> LSTMState:
        """features: (B, feature_dim) -> h0, c0 (num_layers, B, hidden) and, when it is fed at
        every step, the projected image (B, hidden)."""
        batch, layers, hidden = features.size(0), self.config.num_layers, self.config.hidden_size
        projected = self.image_proj(features)  # (B, hidden)
        h0 = torch.tanh(self.init_h(projected)).view(batch, layers, hidden).transpose(0, 1)
        c0 = torch.tanh(self.init_c(projected)).view(batch, layers, hidden).transpose(0, 1)
        image = projected if self.feeds_image else None
        return LSTMState(h0.contiguous(), c0.contiguous(), image)

    def _lstm_inputs(self, embedded: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """embedded: (B, T, embed) -> (B, T, embed [+ hidden]) with the image appended."""
        if image is None:
            return embedded
        return torch.cat([embedded, image.unsqueeze(1).expand(-1, embedded.size(1), -1)], dim=-1)

    def forward(
        self, features: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing: features (B, feature_dim), captions (B, T) -> logits (B, T, vocab).
        Padded positions are computed and masked by the loss: a one-directional LSTM cannot
        let them change the real ones, and no ``pack_padded_sequence`` means none of its
        CPU-lengths and DataParallel pitfalls."""
        state = self.init_state(features)
        embedded = self.dropout(self.embed(captions))  # (B, T, embed)
        outputs, _ = self.lstm(
            self._lstm_inputs(embedded, state.image), (state.h, state.c)
        )  # (B, T, hidden)
        return self.head(self.dropout(outputs)), {}  # (B, T, vocab)

    def step(self, tokens: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        embedded = self.embed(tokens).unsqueeze(1)  # (N, 1, embed)
        output, (h, c) = self.lstm(
            self._lstm_inputs(embedded, state.image), (state.h, state.c)
        )  # (N, 1, hidden)
        logits = self.head(output.squeeze(1))  # (N, vocab)
        return torch.log_softmax(logits.float(), dim=-1), LSTMState(h, c, state.image)

    def describe(self) -> str:
        layers = f" x{self.config.num_layers}" if self.config.num_layers > 1 else ""
        return f"LSTM {self.config.hidden_size}{layers}"

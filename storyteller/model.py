"""The captioner: image feature -> initial LSTM state -> words, one at a time.

This is the Neural Storyteller seed architecture: a linear "encoder" projects the cached CNN
feature into the decoder's hidden space, where it becomes the LSTM's initial hidden and cell
state; the decoder embeds the previous word (256-d), runs a 512-d LSTM and predicts the next.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class CaptionModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        hidden, layers = config.hidden_size, config.num_layers
        self.image_proj = nn.Sequential(
            nn.Linear(config.feature_dim, hidden), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.init_h = nn.Linear(hidden, hidden * layers)
        self.init_c = nn.Linear(hidden, hidden * layers)
        self.embed = nn.Embedding(config.vocab_size, config.embed_size, padding_idx=0)
        self.lstm = nn.LSTM(
            config.embed_size,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=config.dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, config.vocab_size)

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: (B, feature_dim) -> (h0, c0), each (num_layers, B, hidden)."""
        batch, layers, hidden = features.size(0), self.config.num_layers, self.config.hidden_size
        projected = self.image_proj(features)  # (B, hidden)
        h0 = torch.tanh(self.init_h(projected)).view(batch, layers, hidden).transpose(0, 1)
        c0 = torch.tanh(self.init_c(projected)).view(batch, layers, hidden).transpose(0, 1)
        return h0.contiguous(), c0.contiguous()  # (layers, B, hidden) each

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. features: (B, feature_dim); captions: (B, T) ids starting with
        ``<start>``. Returns next-word logits (B, T, vocab_size) for every input position.

        Padded positions are computed too and masked out by the loss (``ignore_index``): with
        a one-directional LSTM they cannot affect the real positions, and skipping
        ``pack_padded_sequence`` avoids its CPU-lengths and DataParallel pitfalls.
        """
        state = self.init_state(features)
        embedded = self.dropout(self.embed(captions))  # (B, T, embed)
        outputs, _ = self.lstm(embedded, state)  # (B, T, hidden)
        return self.head(self.dropout(outputs))  # (B, T, vocab)

    def step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One decoding step. tokens: (N,) -> log-probabilities (N, vocab), new state."""
        embedded = self.embed(tokens).unsqueeze(1)  # (N, 1, embed)
        output, state = self.lstm(embedded, state)  # (N, 1, hidden)
        logits = self.head(output.squeeze(1))  # (N, vocab)
        return torch.log_softmax(logits.float(), dim=-1), state

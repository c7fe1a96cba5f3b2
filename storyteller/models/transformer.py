"""The ``transformer`` captioner: a transformer encoder over the CNN's grid and a masked
multi-head transformer decoder over the words (the EfficientNetB0 + Transformer seed).

Like the ``attention`` captioner it reads the CNN's last feature map as P = h x w positions of
D features (EfficientNet-Lite0: 7 x 7 = 49 x 1280), but instead of one LSTM that looks again
before every word:

* the grid is projected to ``d_model``, given a learned embedding per position and passed
  through a small transformer *encoder* (self-attention between the positions, so each one
  can see the rest of the image before any word is written);
* the words are embedded, given positions (learned or sinusoidal), and a transformer
  *decoder* attends causally over the words so far and across to the encoded grid.

Teacher forcing is one parallel pass over the whole caption (no Python loop over time, unlike
the LSTMs). Decoding carries the encoded grid and the word ids so far in the state and
recomputes the decoder over the whole prefix at every step: the simplest form that is exactly
what teacher forcing computes, and that beam search reorders with the rest of the state.

Transformers train poorly with a constant learning rate from the first step, so this decoder
brings its own recipe: AdamW with a linear warm-up then inverse-square-root decay, stepped once
per batch (see :meth:`TransformerDecoder.configure_optimizer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..vocab import Vocabulary
from .base import CaptionDecoder, DecoderState, batch_field
from .registry import register_decoder


@dataclass
class TransformerOptions:
    """The transformer captioner's own sizes (ModelConfig's ``embed_size``, ``hidden_size``,
    ``num_layers``, ``dropout`` and ``inject`` describe the LSTMs and are not read here)."""

    d_model: int = 256  # width of every token, word or grid position
    heads: int = 4  # attention heads (d_model must divide by it)
    encoder_layers: int = 1  # transformer encoder layers over the grid
    decoder_layers: int = 2  # masked transformer decoder layers over the words
    ff_dim: int = 1024  # hidden size of each layer's feed-forward block
    dropout: float = 0.1  # transformer-sized, not the LSTM's 0.5
    positions: str = "learned"  # word positions: "learned" or "sinusoidal"
    max_positions: int = 64  # longest word prefix ("learned" positions are a table this long)
    grid_positions: int = 64  # most grid positions (8 x 8: Inception's 299 px grid fits)
    warmup_steps: int = 500  # batches of linear warm-up, then inverse-square-root decay


@dataclass
class TransformerState(DecoderState):
    """What the transformer captioner carries between steps: the encoded grid, computed once
    per image, and every word id so far, because each step reruns the decoder over the whole
    prefix (no key/value cache)."""

    memory: torch.Tensor = batch_field(dim=0)  # (N, P, d_model) the encoded grid
    tokens: torch.Tensor = batch_field(dim=0)  # (N, t) word ids fed so far, <start> first


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions: sin on even, cos on odd dimensions, wavelengths from
    2 pi to 10000 * 2 pi, so any length works without a table. -> (length, d_model)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    rate = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)  # (L, d_model)
    table[:, 0::2] = torch.sin(position * rate)  # (L, ceil(d_model / 2))
    table[:, 1::2] = torch.cos(position * rate[: d_model // 2])  # (L, floor(d_model / 2))
    return table


def warmup_inverse_sqrt(warmup_steps: int):
    """The LR multiplier after ``step`` optimiser steps: rises linearly to 1 over
    ``warmup_steps`` (so Adam's moment estimates settle before the steps get large), then
    decays as ``sqrt(warmup / step)`` (Vaswani et al.'s schedule, peak at the configured LR).
    A plain function, so LambdaLR's state_dict holds only the step count."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        step = step + 1  # LambdaLR counts from 0: the first batch already gets 1/warmup
        return step / warmup if step < warmup else math.sqrt(warmup / step)

    return factor


@register_decoder("transformer")
class TransformerDecoder(CaptionDecoder):
    """A transformer encoder over the CNN grid and a causal transformer decoder over the words.

    ``features`` are (B, P, D): P grid positions of ``config.feature_dim`` features each, P at
    most ``grid_positions``. Sizes come from :class:`TransformerOptions`; ModelConfig gives the
    vocabulary, the feature size and ``feature_norm``."""

    options_class = TransformerOptions
    feature_layout: ClassVar[str] = "grid"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        options = self.options
        d_model = options.d_model
        if d_model % options.heads:
            raise ValueError(f"d_model {d_model} does not divide into {options.heads} heads")
        if options.positions not in ("learned", "sinusoidal"):
            raise ValueError(
                f"positions must be 'learned' or 'sinusoidal', got {options.positions!r}"
            )
        # The LSTM captioner measured that un-normalised CNN features give the same caption for
        # every image; the grid is normalised position by position as the attention one does.
        self.feature_norm = (
            nn.LayerNorm(config.feature_dim) if config.feature_norm else nn.Identity()
        )
        self.feature_proj = nn.Linear(config.feature_dim, d_model)
        self.grid_positions = nn.Parameter(torch.zeros(options.grid_positions, d_model))
        nn.init.normal_(self.grid_positions, std=0.02)
        self.embed = nn.Embedding(config.vocab_size, d_model, padding_idx=Vocabulary.pad_id)
        if options.positions == "learned":
            self.word_positions = nn.Embedding(options.max_positions, d_model)
        else:  # a buffer, not saved: the formula gives it back
            table = sinusoidal_positions(options.max_positions, d_model)  # (L, d_model)
            self.register_buffer("word_table", table, persistent=False)
        self.dropout = nn.Dropout(options.dropout)

        def layer_kwargs() -> dict:
            # Pre-LayerNorm (norm_first): trains stably at this depth with a short warm-up.
            return dict(
                d_model=d_model,
                nhead=options.heads,
                dim_feedforward=options.ff_dim,
                dropout=options.dropout,
                batch_first=True,
                norm_first=True,
            )

        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer_kwargs()),
            num_layers=options.encoder_layers,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,  # no padding over the grid; silences the norm_first note
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer_kwargs()),
            num_layers=options.decoder_layers,
            norm=nn.LayerNorm(d_model),
        )
        self.head = nn.Linear(d_model, config.vocab_size)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, P, D) -> the encoded grid (B, P, d_model), once per image; a pooled
        (B, D) vector or a grid larger than ``grid_positions`` is refused."""
        if features.dim() != 3 or features.size(-1) != self.config.feature_dim:
            raise ValueError(
                "the transformer decoder reads the CNN grid, (batch, positions, "
                f"{self.config.feature_dim}); got features of shape {tuple(features.shape)}"
            )
        cells = features.size(1)
        if cells > self.options.grid_positions:
            raise ValueError(
                f"a grid of {cells} positions is more than grid_positions "
                f"{self.options.grid_positions}"
            )
        grid = self.feature_proj(self.feature_norm(features))  # (B, P, d_model)
        grid = self.dropout(grid + self.grid_positions[:cells])  # (B, P, d_model)
        return self.encoder(grid)  # (B, P, d_model)

    def _positions(self, length: int) -> torch.Tensor:
        """The first ``length`` word positions, (length, d_model)."""
        if length > self.options.max_positions:
            raise ValueError(
                f"a caption of {length} tokens is longer than max_positions "
                f"{self.options.max_positions}"
            )
        if self.options.positions == "learned":
            return self.word_positions.weight[:length]  # (T, d_model)
        return self.word_table[:length]  # (T, d_model)

    def decode(self, memory: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """memory: (B, P, d_model), captions: (B, T) -> next-word logits (B, T, vocab).

        Shared by teacher forcing and decoding, so both compute the same thing. A causal mask
        keeps each position from seeing later words (so padding after a caption cannot change
        it), and a key padding mask keeps ``<pad>`` out of every position's view."""
        length = captions.size(1)
        embedded = self.embed(captions) * math.sqrt(self.options.d_model)  # (B, T, d_model)
        embedded = self.dropout(embedded + self._positions(length))  # (B, T, d_model)
        causal = torch.ones(length, length, dtype=torch.bool, device=captions.device)  # (T, T)
        causal = causal.triu(diagonal=1)  # (T, T) true above the diagonal: the future
        padding = captions == Vocabulary.pad_id  # (B, T) true where there is no word
        hidden = self.decoder(
            embedded, memory, tgt_mask=causal, tgt_key_padding_mask=padding
        )  # (B, T, d_model)
        return self.head(hidden)  # (B, T, V)

    def forward(
        self, features: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing, every position at once. features: (B, P, D); captions: (B, T) ids
        starting with ``<start>``. Returns next-word logits (B, T, vocab_size) and no extra
        loss terms."""
        return self.decode(self.encode(features), captions), {}  # (B, T, V)

    def init_state(self, features: torch.Tensor) -> TransformerState:
        """features: (B, P, D) -> the encoded grid and no words yet (B, 0)."""
        memory = self.encode(features)  # (B, P, d_model)
        tokens = torch.zeros(features.size(0), 0, dtype=torch.long, device=features.device)
        return TransformerState(memory, tokens)  # tokens: (B, 0)

    def step(
        self, tokens: torch.Tensor, state: TransformerState
    ) -> tuple[torch.Tensor, TransformerState]:
        """One decoding step. tokens: (N,) -> log-probabilities (N, vocab) of the word after
        them, from the decoder rerun over the whole prefix (O(t^2) per step, no cache)."""
        prefix = torch.cat([state.tokens, tokens.unsqueeze(1)], dim=1)  # (N, t+1)
        logits = self.decode(state.memory, prefix)[:, -1]  # (N, V) the last position only
        return torch.log_softmax(logits.float(), dim=-1), TransformerState(state.memory, prefix)

    def configure_optimizer(
        self, train_config: TrainConfig
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW, peak learning rate ``train_config.lr`` after ``warmup_steps`` batches of
        linear warm-up, then inverse-square-root decay. The schedule is a per-batch
        ``LambdaLR`` (training steps any scheduler other than ReduceLROnPlateau after every
        optimiser step). Weight decay (``train_config.weight_decay``) applies to matrices
        only: decaying biases and LayerNorm gains towards 0 only fights the normalisation."""
        matrices = [p for p in self.parameters() if p.dim() >= 2]
        vectors = [p for p in self.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": matrices, "weight_decay": train_config.weight_decay},
                {"params": vectors, "weight_decay": 0.0},
            ],
            lr=train_config.lr,
        )
        schedule = warmup_inverse_sqrt(self.options.warmup_steps)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def describe(self) -> str:
        options = self.options
        return f"Transformer {options.decoder_layers}x{options.d_model}, {options.heads} heads"

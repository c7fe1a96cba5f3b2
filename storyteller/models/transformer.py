"""The ``transformer`` captioner (the EfficientNetB0 + Transformer seed): a transformer
encoder over the CNN's grid, so each position sees the rest of the image, and a causal
transformer decoder over the words that attends across to it. Decoding runs only the new
position through each layer, reading the earlier ones from a per-layer cache in the state
(``incremental``; ``bench/decode_speed.py`` times it against rerunning the whole prefix). It
trains with its own recipe: AdamW, linear warm-up, then inverse-square-root decay per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..data.vocab import PAD_ID
from ..decoder_options import TransformerOptions
from ..errors import StorytellerError
from .base import CaptionDecoder, DecoderState, batch_field
from .registry import register_decoder


@dataclass
class TransformerState(DecoderState):
    """The encoded grid (once per image), the word ids so far and, decoding incrementally,
    each decoder layer's normalised inputs at the earlier positions: its self-attention's
    keys and values, which never change when a word is appended to a causal layer."""

    memory: torch.Tensor = batch_field(dim=0)  # (N, P, d_model) the encoded grid
    tokens: torch.Tensor = batch_field(dim=0)  # (N, t) word ids fed so far, <start> first
    layers: tuple[torch.Tensor, ...] | None = batch_field(dim=0)  # per layer (N, t, d_model)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions, sin on even and cos on odd dimensions, wavelengths
    from 2 pi to 10000 * 2 pi. -> (length, d_model)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    rate = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)  # (L, d_model)
    table[:, 0::2] = torch.sin(position * rate)  # (L, ceil(d_model / 2))
    table[:, 1::2] = torch.cos(position * rate[: d_model // 2])  # (L, floor(d_model / 2))
    return table


def warmup_inverse_sqrt(warmup_steps: int):
    """The LR multiplier after ``step`` optimiser steps: linear up to 1 over ``warmup_steps``
    (Adam's moments settle before the steps get large), then ``sqrt(warmup / step)``."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        step = step + 1  # LambdaLR counts from 0: the first batch already gets 1/warmup
        return step / warmup if step < warmup else math.sqrt(warmup / step)

    return factor


@register_decoder("transformer")
class TransformerDecoder(CaptionDecoder):
    """A transformer encoder over the grid (B, P, D), P at most ``grid_positions``, and a
    causal transformer decoder over the words; sizes from :class:`TransformerOptions`."""

    options_class = TransformerOptions
    feature_layout: ClassVar[str] = "grid"
    #: Decode one new position per step from the layers' caches, or (False) rerun the whole
    #: prefix: the plain form, to check and time against. Not part of the config.
    incremental: bool = True

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
        self.feature_norm = self.feature_layer_norm(config)
        self.feature_proj = nn.Linear(config.feature_dim, d_model)
        self.grid_positions = nn.Parameter(torch.zeros(options.grid_positions, d_model))
        nn.init.normal_(self.grid_positions, std=0.02)
        self.embed = nn.Embedding(config.vocab_size, d_model, padding_idx=PAD_ID)
        if options.positions == "learned":
            self.word_positions = nn.Embedding(options.max_positions, d_model)
        else:  # a buffer, not saved: the formula gives it back
            table = sinusoidal_positions(options.max_positions, d_model)  # (L, d_model)
            self.register_buffer("word_table", table, persistent=False)
        self.dropout = nn.Dropout(options.dropout)

        # Pre-LayerNorm (norm_first): trains stably at this depth with a short warm-up.
        layer = dict(d_model=d_model, nhead=options.heads, dim_feedforward=options.ff_dim)
        layer.update(dropout=options.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer),
            num_layers=options.encoder_layers,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,  # no padding over the grid; silences the norm_first note
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer),
            num_layers=options.decoder_layers,
            norm=nn.LayerNorm(d_model),
        )
        self.head = nn.Linear(d_model, config.vocab_size)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, P, D) -> the encoded grid (B, P, d_model), once per image."""
        self.check_grid(features)
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
        """memory: (B, P, d_model), captions: (B, T) -> next-word logits (B, T, vocab)."""
        return self.head(self._hidden(memory, captions))  # (B, T, V)

    def _hidden(self, memory: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """The decoder's output (B, T, d_model) at every position. The causal mask hides later
        words (and so the padding after a caption); the key padding mask hides ``<pad>``."""
        return self.decoder(
            self._embed_words(captions),
            memory,
            tgt_mask=self._causal_mask(captions.size(1), captions.device),
            tgt_key_padding_mask=captions == PAD_ID,  # (B, T) true: no word
        )  # (B, T, d_model)

    def _embed_words(self, captions: torch.Tensor) -> torch.Tensor:
        """captions: (B, T) -> word embeddings scaled by sqrt(d_model) plus positions."""
        embedded = self.embed(captions) * math.sqrt(self.options.d_model)  # (B, T, d_model)
        return self.dropout(embedded + self._positions(captions.size(1)))  # (B, T, d_model)

    @staticmethod
    def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
        """(T, T), true above the diagonal: the later words no position may see."""
        return torch.ones(length, length, dtype=torch.bool, device=device).triu(diagonal=1)

    def forward(
        self, features: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing, every position at once: -> logits (B, T, vocab), no extra loss."""
        return self.decode(self.encode(features), captions), {}  # (B, T, V)

    def init_state(self, features: torch.Tensor) -> TransformerState:
        """features: (B, P, D) -> the encoded grid, no words yet (B, 0) and, decoding
        incrementally, an empty cache (B, 0, d_model) per decoder layer."""
        memory = self.encode(features)  # (B, P, d_model)
        tokens = torch.zeros(features.size(0), 0, dtype=torch.long, device=features.device)
        layers = None
        if self.incremental:
            empty = memory.new_zeros(memory.size(0), 0, memory.size(2))  # (B, 0, d_model)
            layers = tuple(empty for _ in self.decoder.layers)
        return TransformerState(memory, tokens, layers)  # tokens: (B, 0)

    def step(
        self, tokens: torch.Tensor, state: TransformerState
    ) -> tuple[torch.Tensor, TransformerState]:
        """tokens: (N,) -> log-probabilities (N, vocab) of the next word, and the state."""
        prefix = torch.cat([state.tokens, tokens.unsqueeze(1)], dim=1)  # (N, t+1)
        if state.layers is None:  # rerun over the whole prefix: O(t) positions per step
            hidden = self._hidden(state.memory, prefix)[:, -1:]  # (N, 1, d_model) the last
            layers = None
        else:
            hidden, layers = self._step_layers(prefix, state)  # (N, 1, d_model)
        logits = self.head(hidden.squeeze(1))  # (N, V)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
        return log_probs, TransformerState(state.memory, prefix, layers)

    def _step_layers(
        self, prefix: torch.Tensor, state: TransformerState
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The last position through every decoder layer, self-attention reading the earlier
        ones from the cache: ``nn.TransformerDecoderLayer`` with ``norm_first=True``, written
        out with the layer's own modules. prefix: (N, t+1) -> (N, 1, d_model), and the
        caches (N, t+1, d_model)."""
        x = self._embed_words(prefix)[:, -1:]  # (N, 1, d_model) the new word only
        padding = prefix == PAD_ID  # (N, t+1) keys that are no word
        caches = []
        for layer, cache in zip(self.decoder.layers, state.layers, strict=True):
            normed = layer.norm1(x)  # (N, 1, d_model)
            keys = torch.cat([cache, normed], dim=1)  # (N, t+1, d_model) all it may see
            caches.append(keys)
            attended = layer.self_attn(
                normed, keys, keys, key_padding_mask=padding, need_weights=False
            )[0]  # (N, 1, d_model)
            x = x + layer.dropout1(attended)  # (N, 1, d_model)
            looked = layer.multihead_attn(
                layer.norm2(x), state.memory, state.memory, need_weights=False
            )[0]  # (N, 1, d_model)
            x = x + layer.dropout2(looked)  # (N, 1, d_model)
            inner = layer.dropout(layer.activation(layer.linear1(layer.norm3(x))))  # (N, 1, ff)
            x = x + layer.dropout3(layer.linear2(inner))  # (N, 1, d_model)
        return self.decoder.norm(x), tuple(caches)  # (N, 1, d_model)

    @classmethod
    def with_embedding_width(cls, overrides: dict, width: int, source: str) -> dict:
        """The transformer's words are ``d_model`` wide: the file sets it."""
        options = dict(overrides.get("decoder_options") or {})
        asked = options.get("d_model")
        if asked is not None and asked != width:
            raise StorytellerError(
                f"--decoder-option d_model={asked} disagrees with {source}, whose vectors are "
                f"{width}-d: leave d_model out (the file sets it)"
            )
        return {**overrides, "decoder_options": {**options, "d_model": width}}

    @classmethod
    def with_grid(cls, overrides: dict, grid: tuple[int, int], source: str) -> dict:
        """The grid table holds every position: ``grid_positions`` not asked for is the
        default 64 or ``h * w`` if more (a 7 x 7 or 8 x 8 grid keeps the default, so its
        checkpoints still resume); one asked for below ``h * w`` is an error before training."""
        options = dict(overrides.get("decoder_options") or {})
        cells = grid[0] * grid[1]
        asked = options.get("grid_positions")
        if asked is None:
            size = max(TransformerOptions.grid_positions, cells)
            return {**overrides, "decoder_options": {**options, "grid_positions": size}}
        if asked < cells:
            raise StorytellerError(
                f"--decoder-option grid_positions={asked} is less than the {grid[0]} x {grid[1]} "
                f"= {cells} positions of {source}: leave grid_positions out (the grid sets it) "
                f"or give at least {cells}"
            )
        return overrides

    def configure_optimizer(
        self, train_config: TrainConfig, extra_groups: Sequence[dict] = ()
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW with :func:`warmup_inverse_sqrt` per batch, peak ``train_config.lr``. Weight
        decay applies to matrices only: decaying biases and LayerNorm gains towards 0 only
        fights the normalisation."""
        matrices = [p for p in self.trainable_parameters() if p.dim() >= 2]
        vectors = [p for p in self.trainable_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": matrices, "weight_decay": train_config.weight_decay},
                {"params": vectors, "weight_decay": 0.0},
                *extra_groups,  # a fine-tuned encoder's blocks: warmed up with the rest
            ],
            lr=train_config.lr,
        )
        schedule = warmup_inverse_sqrt(self.options.warmup_steps)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def describe(self) -> str:
        options = self.options
        return f"Transformer {options.decoder_layers}x{options.d_model}, {options.heads} heads"

"""The ``attention`` captioner: Show, Attend and Tell (Xu et al., 2015) soft attention over
the CNN's grid of P = h x w positions. Before every word, weights over the positions come
from the previous hidden state, and the weighted features (the context), scaled by a gate
``beta = sigmoid(f_beta(h))`` so words like "a" can lean on the language model, enter the
LSTM beside the previous word; training adds the paper's doubly stochastic penalty. Scoring
(option ``attention``): Bahdanau's additive ``v^T tanh(W_f f + W_h h)`` or Luong's
multiplicative "general" ``h^T W f``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import ModelConfig
from ..data.vocab import END_ID, PAD_ID
from ..decoder_options import AttentionOptions
from .base import CaptionDecoder, DecoderState, batch_field
from .registry import register_decoder


@dataclass
class AttentionState(DecoderState):
    """The grid and its keys are carried, not recomputed: every step attends over them."""

    h: torch.Tensor = batch_field(dim=0)  # (N, hidden)
    c: torch.Tensor = batch_field(dim=0)  # (N, hidden)
    features: torch.Tensor = batch_field(dim=0)  # (N, P, D) the normalised grid
    keys: torch.Tensor = batch_field(dim=0)  # (N, P, K) the grid projected for scoring
    attention: torch.Tensor = batch_field(dim=0)  # (N, t, P) weights of each word so far


class BahdanauScore(nn.Module):
    """Additive scoring, ``v^T tanh(W_f f + W_h h)``: a small MLP, at the price of a
    (N, P, attention_dim) tensor per step."""

    def __init__(self, feature_dim: int, hidden_size: int, attention_dim: int):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)  # W_f
        self.hidden_proj = nn.Linear(hidden_size, attention_dim)  # W_h
        self.v = nn.Linear(attention_dim, 1)

    def keys(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, P, D) -> W_f f (B, P, attention_dim), once per image."""
        return self.feature_proj(features)  # (B, P, A)

    def forward(self, keys: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """keys: (N, P, A), h: (N, hidden) -> scores (N, P)."""
        mixed = torch.tanh(keys + self.hidden_proj(h).unsqueeze(1))  # (N, P, A)
        return self.v(mixed).squeeze(-1)  # (N, P)


class LuongScore(nn.Module):
    """Multiplicative "general" scoring, ``h^T W f / sqrt(hidden)``: one matrix product per
    step. The scale (W could learn it) keeps the softmax from starting out saturated on one
    position, as a dot product over 512 normalised dimensions would."""

    def __init__(self, feature_dim: int, hidden_size: int):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, hidden_size, bias=False)  # W
        self.scale = 1.0 / math.sqrt(hidden_size)

    def keys(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, P, D) -> W f (B, P, hidden), once per image."""
        return self.feature_proj(features)  # (B, P, hidden)

    def forward(self, keys: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """keys: (N, P, hidden), h: (N, hidden) -> scores (N, P)."""
        return torch.bmm(keys, h.unsqueeze(-1)).squeeze(-1) * self.scale  # (N, P)


def doubly_stochastic_penalty(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Xu et al.'s regulariser per caption, ``(1 - sum_t alpha_tp)^2`` over the steps ``mask``
    keeps, averaged over the P positions: summed as in the paper, beside a loss that is a
    mean per word, it flattened the attention to 1/49 everywhere (measured, Flickr8k).

    attention: (B, T, P); mask: (B, T) true for real steps -> (B,) in float32."""
    attention = attention.float() * mask.unsqueeze(-1).float()  # (B, T, P)
    coverage = attention.sum(dim=1)  # (B, P) attention each position received
    return ((1.0 - coverage) ** 2).mean(dim=1)  # (B,)


@register_decoder("attention")
class AttentionDecoder(CaptionDecoder):
    """An LSTM cell that attends over the grid (B, P, D) before every word: one layer, the
    image entering through attention (``inject`` is not read)."""

    options_class = AttentionOptions
    feature_layout: ClassVar[str] = "grid"
    attends: ClassVar[bool] = True

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        options, hidden = self.options, config.hidden_size
        if config.num_layers != 1:
            raise ValueError(f"the attention decoder has one LSTM layer, got {config.num_layers}")
        if options.attention == "bahdanau":
            self.score = BahdanauScore(config.feature_dim, hidden, options.attention_dim)
        elif options.attention == "luong":
            self.score = LuongScore(config.feature_dim, hidden)
        else:
            raise ValueError(f"attention must be 'bahdanau' or 'luong', got {options.attention!r}")
        self.feature_norm = self.feature_layer_norm(config)
        self.init_h = nn.Linear(config.feature_dim, hidden)
        self.init_c = nn.Linear(config.feature_dim, hidden)
        self.f_beta = nn.Linear(hidden, 1)  # the gating scalar
        self.embed = nn.Embedding(config.vocab_size, config.embed_size, padding_idx=PAD_ID)
        self.cell = nn.LSTMCell(config.embed_size + config.feature_dim, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, config.vocab_size)

    def _grid(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, P, D) -> the grid normalised position by position *without* the
        LayerNorm's affine (B, P, D); a pooled (B, D) vector is refused.

        Every reader of the grid mixes it with weights summing to 1 (the mean, the context)
        or is linear (the keys), so the affine is applied after mixing (:meth:`_affine`): the
        same numbers, but the grid needs no gradient, and no step's backward pass writes a
        (B, P, D) one (a third of a training step on the CPU)."""
        self.check_grid(features)
        if not self.config.feature_norm:
            return features
        norm = self.feature_norm
        return nn.functional.layer_norm(features, norm.normalized_shape, eps=norm.eps)

    def _affine(self, normalised: torch.Tensor) -> torch.Tensor:
        """The feature LayerNorm's scale and shift, on any (..., D) mix of grid positions."""
        if not self.config.feature_norm:
            return normalised
        return normalised * self.feature_norm.weight + self.feature_norm.bias  # (..., D)

    def init_state(self, features: torch.Tensor) -> AttentionState:
        """features: (B, P, D) -> h0, c0 (B, hidden) from the mean feature; the grid and its
        keys for every later step; no attention weights yet (B, 0, P)."""
        grid = self._grid(features)  # (B, P, D), normalised, affine not applied
        mean = self._affine(grid.mean(dim=1))  # (B, D)
        h0 = torch.tanh(self.init_h(mean))  # (B, hidden)
        c0 = torch.tanh(self.init_c(mean))  # (B, hidden)
        keys = self.score.keys(self._affine(grid))  # (B, P, K)
        attention = grid.new_zeros(grid.size(0), 0, grid.size(1))  # (B, 0, P)
        return AttentionState(h0, c0, grid, keys, attention)

    def attend(
        self, h: torch.Tensor, features: torch.Tensor, keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where to look for the next word, from the previous hidden state. h: (N, hidden),
        features: (N, P, D) from :meth:`_grid`, keys: (N, P, K) -> the gated context (N, D),
        the weights (N, P) and the gate beta (N, 1)."""
        alpha = torch.softmax(self.score(keys, h).float(), dim=-1).to(features.dtype)  # (N, P)
        mixed = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (N, D)
        context = self._affine(mixed)  # (N, D): = sum_p alpha_p * LayerNorm(f_p)
        beta = torch.sigmoid(self.f_beta(h))  # (N, 1)
        return beta * context, alpha, beta  # (N, D), (N, P), (N, 1)

    def _advance(
        self, embedded: torch.Tensor, state: AttentionState
    ) -> tuple[torch.Tensor, AttentionState]:
        """One word for every row, shared by teacher forcing and decoding.
        embedded: (N, embed) -> logits (N, vocab) and the state after it."""
        context, alpha, _ = self.attend(state.h, state.features, state.keys)  # (N, D), (N, P)
        inputs = torch.cat([embedded, context.to(embedded.dtype)], dim=-1)  # (N, embed + D)
        h, c = self.cell(inputs, (state.h, state.c))  # (N, hidden) each
        logits = self.head(self.dropout(h))  # (N, vocab)
        attention = torch.cat([state.attention, alpha.unsqueeze(1)], dim=1)  # (N, t+1, P)
        return logits, AttentionState(h, c, state.features, state.keys, attention)

    def forward(
        self, features: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing: features (B, P, D), captions (B, T) -> logits (B, T, vocab) and
        ``{"attention_penalty": alpha_c * batch mean}``.

        A loop over the T steps, since attention at step t needs h_{t-1}. Inputs after a
        caption's last word (``<pad>``, ``<end>``) are not computed (logits 0, ignored by the
        loss, no coverage). As in the paper's code, the batch is sorted by length so step t
        runs on a shrinking prefix of ``active[t]`` rows: about half the work on Flickr8k."""
        batch, length = captions.shape
        real = (captions != PAD_ID) & (captions != END_ID)  # (B, T)
        steps_of = torch.arange(1, length + 1, device=captions.device)  # (T,)
        lengths = torch.where(real, steps_of, 0).amax(dim=1)  # (B,) steps to run per row
        lengths, order = lengths.sort(descending=True)
        active = (lengths.unsqueeze(0) > steps_of.unsqueeze(1) - 1).sum(dim=1).tolist()  # [T]

        state = self.init_state(features.index_select(0, order))
        embedded = self.dropout(self.embed(captions.index_select(0, order)))  # (B, T, embed)
        logits_steps, alpha_steps = [], []
        for t, rows in enumerate(active):
            if rows < state.h.size(0):  # captions that ended leave the batch for good
                state = state.first(rows)
            logits, state = self._advance(embedded[:rows, t], state)  # (rows, V)
            # Rows that ended get zeros: (rows, .) -> (B, .), padding after the live rows.
            logits_steps.append(nn.functional.pad(logits, (0, 0, 0, batch - rows)))
            alpha_steps.append(nn.functional.pad(state.attention[:, -1], (0, 0, 0, batch - rows)))
        unsort = order.argsort()  # (B,) back to the caller's order
        logits = torch.stack(logits_steps, dim=1).index_select(0, unsort)  # (B, T, V)
        attention = torch.stack(alpha_steps, dim=1).index_select(0, unsort)  # (B, T, P)
        penalty = doubly_stochastic_penalty(attention, real)  # (B,)
        return logits, {"attention_penalty": self.options.alpha_c * penalty.mean()}

    def step(
        self, tokens: torch.Tensor, state: AttentionState
    ) -> tuple[torch.Tensor, AttentionState]:
        """tokens: (N,) -> log-probabilities (N, vocab); the state's ``attention``
        (N, t+1, P) ends with the weights this word was chosen with."""
        logits, state = self._advance(self.embed(tokens), state)  # (N, V)
        return torch.log_softmax(logits.float(), dim=-1), state

    def describe(self) -> str:
        kind = self.options.attention.capitalize()
        return f"LSTM {self.config.hidden_size} + {kind} attention"

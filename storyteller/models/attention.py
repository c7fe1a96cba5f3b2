"""The ``attention`` captioner: Show, Attend and Tell soft attention over the CNN's grid.

Where the ``lstm`` captioner sees one pooled vector, this one reads the CNN's last feature map
as P = h x w positions of D features (ResNet50: 7 x 7 = 49 x 2048; EfficientNet-Lite0:
49 x 1280) and, before every word, looks again: attention weights over the P positions come
from the previous hidden state, and their weighted sum of the features (the context) is fed to
the LSTM beside the previous word. The weights are kept for every generated word, so a caller
can show where the model looked, word by word.

Following Xu et al. (2015), "Show, Attend and Tell", soft attention:

* the initial h and c come from the mean of the grid features (linear, then tanh as in the
  ``lstm`` captioner);
* a gating scalar ``beta = sigmoid(f_beta(h))`` scales the context, so the model can lean on
  the language model for words like "a" and "of" that need no look at the image;
* training adds the doubly stochastic penalty ``alpha_c * sum_p (1 - sum_t alpha_tp)^2``,
  which asks every position to receive about as much attention over the caption as any other,
  instead of the same few positions being stared at for every word.

Two scoring functions (option ``attention``): Bahdanau's additive
``v^T tanh(W_f f + W_h h)`` and Luong's multiplicative "general" ``h^T W f``.
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
    """What the attention captioner carries between steps. The grid and its keys are carried
    (not recomputed) because every step attends over them again."""

    h: torch.Tensor = batch_field(dim=0)  # (N, hidden)
    c: torch.Tensor = batch_field(dim=0)  # (N, hidden)
    features: torch.Tensor = batch_field(dim=0)  # (N, P, D) the normalised grid
    keys: torch.Tensor = batch_field(dim=0)  # (N, P, K) the grid projected for scoring
    attention: torch.Tensor = batch_field(dim=0)  # (N, t, P) weights of each word so far


class BahdanauScore(nn.Module):
    """Additive scoring, ``score = v^T tanh(W_f f + W_h h)``: a small MLP that can match any
    hidden state to any position, at the price of a (N, P, attention_dim) tensor per step."""

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
    """Multiplicative "general" scoring, ``score = h^T W f``: one matrix product per step.

    The score is divided by sqrt(hidden) (as in scaled dot-product attention): a dot product
    over 512 dimensions of LayerNorm'd features is otherwise large at initialisation, and the
    softmax starts out saturated on one position. A constant factor, which W could learn; it
    only changes where training starts."""

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
    """Xu et al.'s regulariser, per caption: ``(1 - sum_t alpha_tp)^2`` averaged over the P
    positions, over the steps that ``mask`` keeps (a caption's padding is not attention paid).

    Averaged, not summed as in the paper's formula, as the reference implementations do: the
    paper adds it to a cross-entropy *summed* over the caption's words, the loss here is a
    mean per word, and with a caption of ~11 words over 49 positions the sum outweighs the
    words so much that the attention went flat (measured: every weight of every word at
    1/49, i.e. mean pooling, on Flickr8k at ``alpha_c`` = 1).

    attention: (B, T, P) weights; mask: (B, T) true for real steps -> (B,) in float32."""
    attention = attention.float() * mask.unsqueeze(-1).float()  # (B, T, P)
    coverage = attention.sum(dim=1)  # (B, P) attention each position received
    return ((1.0 - coverage) ** 2).mean(dim=1)  # (B,)


@register_decoder("attention")
class AttentionDecoder(CaptionDecoder):
    """An LSTM cell that attends over the CNN grid before every word.

    ``features`` are (B, P, D): P grid positions of ``config.feature_dim`` features each. Sizes
    come from ModelConfig (``embed_size``, ``hidden_size``, ``dropout``, ``feature_norm``) and
    :class:`AttentionOptions`; it is one LSTM layer (``num_layers`` must be 1) and the image
    enters through attention at every step (``inject`` is not read)."""

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
        # The LSTM captioner measured that un-normalised CNN features give the same caption for
        # every image; the grid is normalised position by position the same way.
        self.feature_norm = (
            nn.LayerNorm(config.feature_dim) if config.feature_norm else nn.Identity()
        )
        self.init_h = nn.Linear(config.feature_dim, hidden)
        self.init_c = nn.Linear(config.feature_dim, hidden)
        self.f_beta = nn.Linear(hidden, 1)  # the gating scalar
        self.embed = nn.Embedding(config.vocab_size, config.embed_size, padding_idx=PAD_ID)
        self.cell = nn.LSTMCell(config.embed_size + config.feature_dim, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, config.vocab_size)

    def _grid(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, P, D) -> the grid normalised position by position, *without* the
        LayerNorm's affine (B, P, D); a pooled (B, D) vector is refused with the layout it
        should have been.

        Every reader of the grid is linear in it after a convex combination (the mean for the
        initial state, the attention-weighted context) or directly (the scoring keys), so the
        affine ``gamma * x + beta`` is applied after pooling instead of to all P positions
        (:meth:`_affine`): the same numbers, since the weights sum to 1, but the grid then
        needs no gradient, and the backward pass of every step writes no (B, P, D)
        gradient into it (that would be a third of a training step's time on the CPU)."""
        if features.dim() != 3 or features.size(-1) != self.config.feature_dim:
            raise ValueError(
                "the attention decoder reads the CNN grid, (batch, positions, "
                f"{self.config.feature_dim}); got features of shape {tuple(features.shape)}"
            )
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
        """Where to look for the next word, from the previous hidden state.

        h: (N, hidden), features: (N, P, D) from :meth:`_grid`, keys: (N, P, K) -> the gated
        context (N, D), the weights over the grid (N, P) summing to 1, and the gate beta
        (N, 1) in (0, 1)."""
        alpha = torch.softmax(self.score(keys, h).float(), dim=-1).to(features.dtype)  # (N, P)
        mixed = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (N, D)
        context = self._affine(mixed)  # (N, D): = sum_p alpha_p * LayerNorm(f_p)
        beta = torch.sigmoid(self.f_beta(h))  # (N, 1)
        return beta * context, alpha, beta  # (N, D), (N, P), (N, 1)

    def _advance(
        self, embedded: torch.Tensor, state: AttentionState
    ) -> tuple[torch.Tensor, AttentionState]:
        """One word for every row, shared by teacher forcing and decoding so both compute the
        same thing. embedded: (N, embed) -> logits (N, vocab) and the state after it."""
        context, alpha, _ = self.attend(state.h, state.features, state.keys)  # (N, D), (N, P)
        inputs = torch.cat([embedded, context.to(embedded.dtype)], dim=-1)  # (N, embed + D)
        h, c = self.cell(inputs, (state.h, state.c))  # (N, hidden) each
        logits = self.head(self.dropout(h))  # (N, vocab)
        attention = torch.cat([state.attention, alpha.unsqueeze(1)], dim=1)  # (N, t+1, P)
        return logits, AttentionState(h, c, state.features, state.keys, attention)

    def forward(
        self, features: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing. features: (B, P, D); captions: (B, T) ids starting with
        ``<start>``. Returns next-word logits (B, T, vocab_size) and the doubly stochastic
        penalty ``{"attention_penalty": scalar}`` (mean over the batch, times alpha_c).

        A Python loop over the T steps: attention at step t needs h_{t-1}. Only the steps
        whose input is ``<start>`` or a word predict something: inputs that are ``<pad>``
        or ``<end>`` (a full caption's last token, whose target is padding) after a caption's
        last word are not computed at all (their logits are 0 and the loss ignores them) and
        add no coverage to the penalty. As in Show, Attend and Tell's reference code, the
        batch is sorted by that length so step t runs only on the first ``active[t]`` rows, a
        prefix that shrinks as captions end: on Flickr8k, about half the work of running
        every row to the batch's longest caption."""
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
        """One decoding step. tokens: (N,) -> log-probabilities (N, vocab), and the new state,
        whose ``attention`` (N, t+1, P) now ends with the weights this word was chosen with."""
        logits, state = self._advance(self.embed(tokens), state)  # (N, V)
        return torch.log_softmax(logits.float(), dim=-1), state

    def describe(self) -> str:
        kind = self.options.attention.capitalize()
        return f"LSTM {self.config.hidden_size} + {kind} attention"

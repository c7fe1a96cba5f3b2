"""The protocol every captioner follows, and the state it carries between decoding steps.

Training, greedy and beam search, evaluation, inference, the app and the checkpoint loader
talk to a captioner only through :class:`CaptionDecoder`'s three methods, so a new decoder
(soft attention over the CNN's grid, a transformer) plugs in without an ``if decoder == ...``
anywhere else:

* ``init_state(features) -> state``: what the decoder knows before the first word;
* ``step(tokens, state) -> (log_probs, state)``: one word for every row, used by greedy and
  beam search;
* ``forward(features, captions) -> (logits, extra_losses)``: teacher forcing for training,
  with any loss terms of the decoder's own (the attention decoder's doubly stochastic penalty)
  beside the logits, so the training loop adds them without knowing what they are.

The state is a :class:`DecoderState` dataclass that says which dimension of each tensor runs
over the rows (images, or images x beams), so beam search can reorder and repeat it without
knowing what is inside.

A new built-in decoder also gets a line in :data:`storyteller.decoder_options.BUILTIN_DECODERS`
with its options dataclass (defined there, free of torch), so ``--decoder`` lists it and
``--help`` shows its options without importing the model code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..config import ModelConfig, TrainConfig, checked_fields, option_bounds
from ..decoder_options import NoOptions
from ..errors import StorytellerError

S = TypeVar("S", bound="DecoderState")


def batch_field(dim: int = 0, **kwargs) -> Any:
    """Declare a :class:`DecoderState` field whose dimension ``dim`` runs over the rows.

    The field may hold a tensor, a tuple or list of tensors (e.g. one cache per layer, all with
    the rows on ``dim``) or ``None`` (nothing to carry in this configuration)."""
    return field(metadata={"batch_dim": dim}, **kwargs)


@dataclass
class DecoderState:
    """What a decoder carries from one step to the next. Subclass it as a dataclass and
    declare every per-row tensor with :func:`batch_field`::

        @dataclass
        class LSTMState(DecoderState):
            h: torch.Tensor = batch_field(dim=1)  # (num_layers, N, hidden)

    Beam search then reorders (:meth:`select`) and repeats (:meth:`repeat_interleave`) every
    such field on its own row dimension, whatever the decoder keeps there. Fields that are not
    batch fields are shared by all rows and carried over unchanged (a step counter, say); a
    tensor in such a field is refused, since beam search could not keep it in line with its
    rows.

    Per-step extras (the attention decoder's weights over the grid, where the model looked
    for each word) go into the state too: a batch field that ``step`` grows by one position,
    e.g. ``attention: (N, t, P)``. Beam search then keeps each hypothesis's extras with it,
    and a caller reads them from the state after decoding, with no change to the protocol.
    """

    def _map_rows(self: S, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> S:
        """A copy with ``fn(tensor, batch_dim)`` applied to every batch field's tensors."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            dim = f.metadata.get("batch_dim")
            if dim is None:
                if isinstance(value, torch.Tensor):
                    raise TypeError(
                        f"{type(self).__name__}.{f.name} holds a tensor but is not declared "
                        "with batch_field(dim): beam search cannot reorder it"
                    )
                continue
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value, dim)
            elif isinstance(value, (tuple, list)):
                changes[f.name] = type(value)(fn(v, dim) for v in value)
        return replace(self, **changes)

    def select(self: S, rows: torch.Tensor) -> S:
        """Keep rows ``rows`` (N',) of every batch field, in that order (beam search: each
        surviving hypothesis takes its parent's state)."""
        return self._map_rows(lambda tensor, dim: tensor.index_select(dim, rows))

    def first(self: S, rows: int) -> S:
        """The first ``rows`` rows of every batch field, as views (teacher forcing over a
        batch sorted by caption length: the rows still running are always a prefix)."""
        return self._map_rows(lambda tensor, dim: tensor.narrow(dim, 0, rows))

    def repeat_interleave(self: S, times: int) -> S:
        """Each row repeated ``times`` times in place: N rows -> N*times (one per beam)."""
        return self._map_rows(lambda tensor, dim: tensor.repeat_interleave(times, dim=dim))


class CaptionDecoder(nn.Module, ABC):
    """A captioner: features -> words. Subclasses register with
    :func:`storyteller.models.register_decoder` and are built from a :class:`ModelConfig`
    alone (``build_model(config)``), so a checkpoint rebuilds its own model.

    ``features`` are what the feature cache holds for one image, batched: (B, feature_dim)
    for a pooled vector, (B, P, feature_dim) for a grid (see :attr:`feature_layout`). ``captions`` and ``tokens``
    are word ids (:data:`storyteller.data.vocab.PAD_ID`, ``START_ID``, ...).
    """

    name: ClassVar[str | None] = None  # set by register_decoder
    #: The dataclass ``config.decoder_options`` is read into (its defaults fill the gaps).
    options_class: ClassVar[type] = NoOptions
    #: Which features the decoder reads, so the loader can ask the model rather than the
    #: caller knowing every decoder: ``"pooled"``, one vector per image (B, feature_dim), or
    #: ``"grid"``, the CNN's last feature map as positions (B, P, feature_dim), P = h x w.
    feature_layout: ClassVar[str] = "pooled"
    #: Whether ``step`` records where it looked: the state's ``attention`` field (N, t, P)
    #: gains one row of weights over the grid per word (see
    #: :func:`storyteller.decoding.decode_with_attention` and :mod:`storyteller.figures.attention_maps`).
    attends: ClassVar[bool] = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        if self.name is not None and config.decoder != self.name:
            raise StorytellerError(
                f"{type(self).__name__} is the {self.name!r} decoder, "
                f"but the config asks for {config.decoder!r}"
            )
        self.config = self.resolve_config(config)  # what the checkpoint stores
        self.options = self.options_class(**self.config.decoder_options)

    @classmethod
    def resolve_config(cls, config: ModelConfig) -> ModelConfig:
        """``config`` with this decoder's options complete (defaults filled in), so a
        checkpoint rebuilds the same model even if the defaults change later; unknown options
        are refused with the known ones listed, and each value's type and range checked
        (:func:`storyteller.config.option_bounds`)."""
        known = [f.name for f in fields(cls.options_class)]
        unknown = sorted(set(config.decoder_options) - set(known))
        if unknown:
            raise StorytellerError(
                f"the {config.decoder!r} decoder has no option {', '.join(unknown)} "
                f"(its options: {', '.join(known) or 'none'})"
            )
        checked = checked_fields(
            cls.options_class,
            config.decoder_options,
            "decoder_options",
            option_bounds(cls.options_class),
        )
        options = asdict(cls.options_class(**checked))
        return replace(config, decoder_options=options)

    @abstractmethod
    def init_state(self, features: torch.Tensor) -> DecoderState:
        """features: (B, ...) -> the state before the first word, B rows."""

    @abstractmethod
    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One decoding step for N rows. tokens: (N,) the previous words -> log-probabilities
        of the next word (N, vocab_size) in float32, and the new state (N rows)."""

    @abstractmethod
    def forward(
        self, features: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing. features: (B, ...); captions: (B, T) ids starting with
        ``<start>``. Returns next-word logits (B, T, vocab_size) for every input position,
        equal to what :meth:`step` gives word by word, and the decoder's extra loss terms:
        ``{name: scalar}``, each averaged over the batch, which training adds to the
        cross-entropy (``{}`` when there are none). Padded positions must not change the
        real ones: the loss masks them out afterwards."""

    def configure_optimizer(
        self, train_config: TrainConfig, extra_groups: Sequence[dict] = ()
    ) -> tuple[
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LRScheduler,
    ]:
        """The optimiser and the learning-rate schedule this decoder trains with. The default
        is the seed recipe: Adam, learning rate multiplied by ``lr_factor`` when the
        validation loss stops improving. Training steps a ``ReduceLROnPlateau`` once per epoch
        with the validation loss and any other scheduler once per optimiser step (batch), so
        a decoder that needs another recipe (the transformer: AdamW with warm-up) overrides
        this and returns, e.g., a ``LambdaLR`` over batches.

        ``extra_groups``: parameter groups of other modules trained with the decoder (a
        fine-tuned encoder's blocks at their own learning rate), in the optimiser before the
        schedule is made, so the schedule moves them too."""
        optimizer = torch.optim.Adam(
            [{"params": self.trainable_parameters()}, *extra_groups],
            lr=train_config.lr,
            weight_decay=train_config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=train_config.lr_factor, patience=train_config.lr_patience
        )
        return optimizer, scheduler

    def word_embedding(self) -> nn.Embedding:
        """The table of word vectors (vocab_size, width) that pretrained vectors
        (:mod:`storyteller.data.embeddings`) fill and ``freeze_embeddings`` keeps fixed. Every
        registered decoder keeps it as ``self.embed``; one that does not overrides this."""
        embed = getattr(self, "embed", None)
        if not isinstance(embed, nn.Embedding):
            raise TypeError(f"{type(self).__name__} has no word embedding at .embed")
        return embed

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates: a frozen embedding is left out, so neither a
        step nor weight decay can move it."""
        return [p for p in self.parameters() if p.requires_grad]

    @classmethod
    def with_embedding_width(cls, overrides: dict, width: int, source: str) -> dict:
        """``overrides`` (ModelConfig fields) with the word-embedding width set to ``width``,
        the dimension of pretrained vectors from ``source``; a different width the user asked
        for is a one-line error. The LSTMs' width is ``embed_size``; a decoder whose width is
        one of its own options (the transformer's ``d_model``) overrides this."""
        asked = overrides.get("embed_size")
        if asked is not None and asked != width:
            raise StorytellerError(
                f"--embed-size {asked} disagrees with {source}, whose vectors are {width}-d: "
                "leave --embed-size out (the file sets it)"
            )
        return {**overrides, "embed_size": width}

    @classmethod
    def with_grid(cls, overrides: dict, grid: tuple[int, int], source: str) -> dict:
        """``overrides`` (ModelConfig fields) fitted to a feature cache's (h, w) ``grid`` from
        ``source``, before the config is resolved for a run (so the checkpoint stores the
        fitted size and the app rebuilds it). Most decoders read any number of positions and
        return ``overrides`` unchanged; one with a table per position (the transformer's
        ``grid_positions``) sizes it here, and refuses a size asked for that is too small."""
        return overrides

    def describe(self) -> str:
        """A few words for people (the app's status line), e.g. ``LSTM 512``."""
        return f"{self.name} decoder"

"""The protocol every captioner follows, and the state it carries between decoding steps.

Training, decoding, evaluation, the app and the checkpoint loader use only three methods, so
a new decoder plugs in without an ``if decoder == ...`` elsewhere: ``init_state(features)``,
``step(tokens, state) -> (log_probs, state)`` (one word for every row) and
``forward(features, captions) -> (logits, extra_losses)`` (teacher forcing, with the decoder's
own loss terms). A built-in decoder's options dataclass is listed, torch-free, in
:data:`storyteller.decoder_options.BUILTIN_DECODERS`.
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
    """A :class:`DecoderState` field whose dimension ``dim`` runs over the rows: a tensor, a
    tuple or list of tensors (one cache per layer, say) or ``None``."""
    return field(metadata={"batch_dim": dim}, **kwargs)


@dataclass
class DecoderState:
    """What a decoder carries from one step to the next: a dataclass whose per-row tensors
    are declared with :func:`batch_field`, e.g. ``h: torch.Tensor = batch_field(dim=1)``.

    Beam search reorders (:meth:`select`) and repeats (:meth:`repeat_interleave`) every batch
    field on its own row dimension without knowing what is inside. Other fields are shared
    by all rows; a tensor there is refused, as beam search could not keep it in line. Per-step
    extras (where the model looked for each word) are a batch field that ``step`` grows,
    ``attention: (N, t, P)``, so each hypothesis keeps its own."""

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
    """A captioner: features -> words, registered with :func:`register_decoder` and built
    from a :class:`ModelConfig` alone, so a checkpoint rebuilds its own model. ``features``
    are the cache's, batched (see :attr:`feature_layout`); ``captions`` and ``tokens`` are
    word ids."""

    name: ClassVar[str | None] = None  # set by register_decoder
    options_class: ClassVar[type] = NoOptions
    #: "pooled": one vector per image (B, feature_dim); "grid": the CNN's last feature map
    #: as positions (B, P, feature_dim), P = h x w.
    feature_layout: ClassVar[str] = "pooled"
    #: Whether ``step`` records where it looked: the state's ``attention`` (N, t, P).
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
        """``config`` with this decoder's options checked and complete (defaults filled in),
        so a checkpoint rebuilds the same model even if the defaults change later."""
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
        """tokens: (N,) the previous words -> float32 log-probabilities of the next word
        (N, vocab_size), and the new state."""

    @abstractmethod
    def forward(
        self, features: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing. features: (B, ...); captions: (B, T) from ``<start>`` -> next-word
        logits (B, T, vocab_size), what :meth:`step` gives word by word, and the decoder's
        extra loss terms ``{name: batch mean}`` that training adds. Padding must not change
        the real positions."""

    def configure_optimizer(
        self, train_config: TrainConfig, extra_groups: Sequence[dict] = ()
    ) -> tuple[
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LRScheduler,
    ]:
        """The optimiser and learning-rate schedule: the seed's Adam, the rate times
        ``lr_factor`` when the validation loss stops improving. Training steps a
        ``ReduceLROnPlateau`` once per epoch, any other schedule once per batch.
        ``extra_groups``: other modules trained along (a fine-tuned encoder's blocks)."""
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
        """The word vectors (vocab_size, width) that pretrained vectors fill and
        ``freeze_embeddings`` keeps fixed: ``self.embed`` unless a decoder overrides this."""
        embed = getattr(self, "embed", None)
        if not isinstance(embed, nn.Embedding):
            raise TypeError(f"{type(self).__name__} has no word embedding at .embed")
        return embed

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: a frozen embedding is left out, so weight decay cannot
        move it either."""
        return [p for p in self.parameters() if p.requires_grad]

    @classmethod
    def with_embedding_width(cls, overrides: dict, width: int, source: str) -> dict:
        """``overrides`` (ModelConfig fields) with the word width set to ``width``, that of the
        pretrained vectors in ``source``; another width asked for is an error."""
        asked = overrides.get("embed_size")
        if asked is not None and asked != width:
            raise StorytellerError(
                f"--embed-size {asked} disagrees with {source}, whose vectors are {width}-d: "
                "leave --embed-size out (the file sets it)"
            )
        return {**overrides, "embed_size": width}

    @classmethod
    def with_grid(cls, overrides: dict, grid: tuple[int, int], source: str) -> dict:
        """``overrides`` (ModelConfig fields) fitted to the (h, w) ``grid`` of the cache
        ``source``, before the config is resolved: a decoder with a table per position sizes
        it here; most read any number of positions."""
        return overrides

    @staticmethod
    def feature_layer_norm(config: ModelConfig) -> nn.Module:
        """A LayerNorm over each feature vector (pooled, or per grid position) if
        ``feature_norm``: raw CNN features gave the same caption for every image (measured)."""
        return nn.LayerNorm(config.feature_dim) if config.feature_norm else nn.Identity()

    def check_grid(self, features: torch.Tensor) -> None:
        """Refuse features that are not a grid (B, P, feature_dim), a pooled vector say."""
        if features.dim() != 3 or features.size(-1) != self.config.feature_dim:
            raise ValueError(
                f"the {self.name} decoder reads the CNN grid, (batch, positions, "
                f"{self.config.feature_dim}); got features of shape {tuple(features.shape)}"
            )

    def describe(self) -> str:
        """A few words for people (the app's status line), e.g. ``LSTM 512``."""
        return f"{self.name} decoder"

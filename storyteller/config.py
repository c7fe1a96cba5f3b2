"""Dataclass configs: ``ModelConfig`` and ``TrainConfig``, stored in every checkpoint so the
model is rebuilt from it alone, and ``Strategy``, how a caption is decoded. No torch here."""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .config_cli import (
    FINITE,
    Bound,
    bounded,
    config_flags,
    config_flags_for,
    field_bounds,
    option,
    type_words,
)
from .decoder_options import BUILTIN_DECODERS, DEFAULT_DECODER
from .errors import StorytellerError

#: A word enters the vocabulary when the training captions use it this often (the seed's 5).
MIN_WORD_COUNT = 5

#: What every output of a smoke run says (figures, captions, stories), so that its
#: meaningless captions ("a a pair sky sky ...") are never taken for a real model's.
SMOKE_LABEL = "SMOKE RUN (tiny data and model: meaningless results)"
#: What every output of a model trained on the embedded drawn sample says (captions, stories,
#: the app, a Space, a model card): it knows coloured shapes, and a real photo gets nonsense.
SAMPLE_LABEL = (
    "SAMPLE MODEL: trained on drawn coloured shapes only, so real photos get meaningless "
    "captions (for real ones, train on Flickr8k: python -m storyteller run-all --data "
    "flickr8k --out outputs/flickr8k)"
)


def model_label(info: dict) -> str | None:
    """The label every caption of a model is shown with, from what its checkpoint records
    (``train_config``, ``trained_on_sample``): :data:`SMOKE_LABEL`, :data:`SAMPLE_LABEL`, or
    None for a real model."""
    train_config = info.get("train_config")
    if isinstance(train_config, dict) and train_config.get("smoke") is True:
        return SMOKE_LABEL
    return SAMPLE_LABEL if info.get("trained_on_sample") is True else None


#: Bounds on what a stored config may ask for, checked before anything is built from it (a
#: crafted ``hidden_size=12000`` would allocate 4 GB): far above any captioner trained here.
MAX_WIDTH = 65_536  # feature, embedding and hidden sizes
MAX_VOCAB = 1_000_000  # words
MAX_LAYERS = 64  # stacked layers of any kind
MAX_COUNT = 1_000_000  # other counts: a decoder option's steps or positions, epochs, batch
FRACTION = Bound(0.0, 1.0, high_open=True)  # dropout, label smoothing
COUNT = Bound(1, MAX_COUNT)  # epochs, batch, images, a word's occurrences
#: Seeds: NumPy's are 32-bit (:func:`storyteller.runtime.seed_everything` seeds it too).
SEED = Bound(0, 2**32 - 1)
#: The widest beam (the app's slider too): memory and time grow with it.
MAX_BEAM = 10

#: How the image reaches the LSTM: it sets the initial state only (the seed), or every step too.
INJECT_MODES = ("init", "init+input")
_LSTM_ONLY = "(lstm and attention; the transformer's are --decoder-option)"


def _checked_value(kind: type, value: Any, bound: Bound | None) -> Any | None:
    """``value`` as ``kind`` if it is one (an int is a float, a bool is not an int) and
    within ``bound``, else ``None``."""
    if kind in (bool, str):
        return value if isinstance(value, kind) else None
    if kind is dict:
        return value if isinstance(value, dict) and all(isinstance(k, str) for k in value) else None
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
            return None
        value = float(value) if kind is float else value
    return value if (bound or FINITE).holds(value) else None


def checked_fields(
    cls: type, data: Any, where: str, bounds: dict[str, Bound] | None = None
) -> dict[str, Any]:
    """The keyword arguments for ``cls`` from ``data`` (a checkpoint's dict), each value checked
    against its field's type and bound (else ``bounds``'): a one-line error naming
    ``where.field``. Unknown keys are ignored and missing optional ones take their defaults."""
    if not isinstance(data, dict):
        raise StorytellerError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    bounds = {**(bounds or {}), **field_bounds(cls)}
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise StorytellerError(f"{where} has no {f.name}")
            continue
        kind, bound, value = hints[f.name], bounds.get(f.name), data[f.name]
        checked = _checked_value(kind, value, bound)
        if checked is None:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise StorytellerError(
                f"{where}.{f.name} must be {type_words(kind, bound)}, got {shown}"
            )
        kwargs[f.name] = checked
    return kwargs


def field_values(cls: type, **values: Any) -> dict[str, Any]:
    """``values`` (overrides for a ``cls`` built later), names and types checked now, so a
    renamed field fails where the values are written, not in the run that uses them."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name not in hints:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
        if _checked_value(hints[name], value, None) is None:
            wanted = type_words(hints[name], None)
            raise TypeError(f"{cls.__name__}.{name} must be {wanted}, got {value!r}")
    return values


def option_bounds(cls: type) -> dict[str, Bound]:
    """Bounds for a decoder's options dataclass from each option's name and type: ``*layers``
    and other integers capped, ``*dropout`` a fraction, other numbers >= 0."""
    bounds = {}
    for name, kind in typing.get_type_hints(cls).items():
        if kind is int:
            bounds[name] = Bound(0, MAX_LAYERS if name.endswith("layers") else MAX_COUNT)
        elif kind is float:
            bounds[name] = FRACTION if name.endswith("dropout") else Bound(0.0, math.inf)
    return bounds


@dataclass
class ModelConfig:
    """The captioner's shape (defaults: the Neural Storyteller seed architecture)."""

    # A field's Bound is its flag's range and the one a checkpoint's config is checked against.
    # The fields declared with option() are `train`'s and `run-all`'s flags.
    vocab_size: int = bounded(Bound(4, MAX_VOCAB))  # the four special tokens at least
    feature_dim: int = bounded(Bound(1, MAX_WIDTH), 2048)  # ResNet50's; EfficientNet-Lite0: 1280
    # Not given, the width is a vectors file's, a resumed checkpoint's, else this default.
    embed_size: int = option(
        256,
        "word embedding width (default {default}; with --embeddings the file's dimension)",
        flag_default=None,
        bound=Bound(1, MAX_WIDTH),
    )
    hidden_size: int = option(512, f"LSTM state width {_LSTM_ONLY}", bound=Bound(1, MAX_WIDTH))
    num_layers: int = option(
        1, "stacked LSTM layers (--decoder lstm only)", bound=Bound(1, MAX_LAYERS)
    )
    dropout: float = option(0.5, f"dropout probability {_LSTM_ONLY}", bound=FRACTION)
    # LayerNorm on the CNN feature first (measured: stops "same caption for every image").
    feature_norm: bool = option(
        True, "the seed's exact projection, without LayerNorm on the image features"
    )
    inject: str = option(
        "init",
        "image only sets the LSTM's initial state (seed), or is also fed at every step",
        choices=INJECT_MODES,
    )
    encoder: str = "resnet50"  # which CNN made the features (the app needs the same one)
    decoder: str = option(
        DEFAULT_DECODER,
        "lstm: the seed captioner on one pooled vector; attention: an LSTM with soft "
        "attention over the CNN's grid (Show, Attend and Tell); transformer: a transformer "
        "encoder over the grid and a masked transformer decoder (default: {default})",
        choices=BUILTIN_DECODERS,
    )
    # That decoder's own options, checked against its options dataclass and stored complete.
    decoder_options: dict = field(default_factory=dict)
    # Stored so that a resumed run keeps the pretrained vectors frozen too.
    freeze_embeddings: bool = option(
        False, "with --embeddings: keep the pretrained vectors fixed (default: fine-tune them)"
    )
    # The encoder's last N blocks trained with the decoder (the checkpoint holds them); 0: frozen.
    fine_tuned_blocks: int = bounded(Bound(0, 1000), 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "model_config") -> ModelConfig:
        """A checkpoint's config, checked; one that names no decoder is the seed lstm's."""
        data = {"decoder": "lstm", **data} if isinstance(data, dict) else data
        return cls(**checked_fields(cls, data, where))


@dataclass
class TrainConfig:
    """How to train (defaults: the seed recipe plus early stopping and LR on plateau)."""

    # option() fields are flags, as in ModelConfig; the others keep their defaults there.
    num_epochs: int = option(15, "number of epochs (default {default})", flag="epochs", bound=COUNT)
    batch_size: int = option(64, "caption pairs per training step", bound=COUNT)
    lr: float = option(1e-3, "Adam learning rate", bound=Bound(0.0, 10.0))
    weight_decay: float = bounded(Bound(0.0, 10.0), 0.0)
    grad_clip: float = bounded(Bound(0.0, math.inf), 5.0)
    # Tokens per caption, <start> and <end> included: at least <start>, one word, <end>.
    max_length: int = bounded(Bound(3, 10_000), 50)
    patience: int = option(3, "early-stopping patience in epochs", bound=Bound(0, MAX_COUNT))
    lr_patience: int = bounded(Bound(0, MAX_COUNT), 1)  # ReduceLROnPlateau
    lr_factor: float = bounded(Bound(0.0, 1.0), 0.5)
    label_smoothing: float = bounded(FRACTION, 0.0)
    num_workers: int = bounded(Bound(0, 1024), 0)  # features are in memory: workers add overhead
    amp: bool = True  # mixed precision on CUDA (ignored on the CPU)
    data_parallel: bool = True  # nn.DataParallel when more than one GPU is visible
    seed: int = option(0, "random seed (initial weights, batch order)", bound=SEED)
    encoder_lr: float = option(  # the encoder's blocks learn slower
        1e-4,
        "with --fine-tune-encoder: the encoder blocks' learning rate (default {default})",
        bound=Bound(0.0, 10.0),
    )
    augment: bool = option(
        False, "with --fine-tune-encoder: random crops and horizontal flips of the training photos"
    )
    # Tiny data, model and epochs to test the code: stored so every figure and metric says so.
    smoke: bool = option(
        False,
        "mark the run as a smoke test (tiny, meaningless): its figures and metrics.json say so "
        "(the notebooks set it in smoke mode)",
    )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "train_config") -> TrainConfig:
        """A checkpoint's config, every field's type and range checked."""
        return cls(**checked_fields(cls, data, where))


def train_flags(train: TrainConfig, model: dict | None = None, resume: bool = True) -> list[str]:
    """The ``train`` command's flags that give these configs back: a model card's commands
    that train the same model again."""
    model = model or {}
    train_fields, defaults = config_flags(TrainConfig), TrainConfig().to_dict()
    fixed = [k for k, v in train.to_dict().items() if k not in train_fields and v != defaults[k]]
    unknown = [k for k in model if k not in config_flags(ModelConfig) and k != "decoder_options"]
    if fixed or unknown:
        raise StorytellerError(
            f"the train command has no flag for {', '.join(fixed + unknown)}: "
            "leave it at its default or call storyteller.pipeline.train_step"
        )
    flags = config_flags_for(TrainConfig, {k: getattr(train, k) for k in train_fields})
    for key, value in model.items():
        if key == "decoder_options":
            for name, option_value in (value or {}).items():
                flags += ["--decoder-option", f"{name}={option_value}"]
        else:
            flags += config_flags_for(ModelConfig, {key: value})
    return flags + ([] if resume else ["--no-resume"])


@dataclass(frozen=True)
class Strategy:
    """How to decode a caption: greedy when ``beam_size`` is 1, else beam search, at most
    ``max_length`` words, ranked with ``length_penalty`` (GNMT's alpha: 0 ranks by raw
    log-probability, higher favours longer captions). A bad setting is refused in one line."""

    beam_size: int = bounded(Bound(1, MAX_BEAM), 1)
    max_length: int = bounded(Bound(1, 10_000), 50)
    length_penalty: float = bounded(Bound(0.0, 5.0), 0.7)

    def __post_init__(self):
        checked_fields(Strategy, asdict(self), "Strategy")

    @property
    def greedy(self) -> bool:
        return self.beam_size == 1

    @property
    def name(self) -> str:
        """``greedy`` or ``beam5``: the decoding's key in ``metrics.json`` and caption files."""
        return "greedy" if self.greedy else f"beam{self.beam_size}"

    def describe(self) -> str:
        """``greedy`` or ``beam 5``: the decoding as people read it (the app's timings)."""
        return "greedy" if self.greedy else f"beam {self.beam_size}"

    def to_dict(self) -> dict:
        """The settings, as ``metrics.json``'s ``provenance.decoding``."""
        return asdict(self)


#: The default decoding: greedy, at most 50 words.
GREEDY = Strategy()

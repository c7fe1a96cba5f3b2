"""Dataclass configs. Both are stored in every checkpoint, so a model can be rebuilt from the
checkpoint file alone (the app does exactly that)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class ModelConfig:
    """The captioner's shape (defaults: the Neural Storyteller seed architecture)."""

    vocab_size: int
    feature_dim: int = 2048  # 2048 for ResNet50, 1280 for EfficientNet-Lite0
    embed_size: int = 256
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.5
    feature_norm: bool = (
        True  # LayerNorm on the CNN feature first (measured: stops "same caption for every image")
    )
    inject: str = "init"  # "init": image sets the LSTM's initial state (seed); "init+input": also fed every step
    encoder: str = "resnet50"  # which CNN made the features (the app needs the same one)
    # Which captioner reads the features (a name in storyteller.models.DECODERS). Checkpoints
    # written before there was a choice have no such key and load as "lstm".
    decoder: str = "lstm"
    # Sizes and switches of that decoder alone (e.g. an attention decoder's attention size),
    # checked against its options dataclass and stored complete, defaults filled in, in every
    # checkpoint. The fields above are the LSTM's and stay where they were.
    decoder_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainConfig:
    """How to train (defaults: the seed recipe plus early stopping and LR on plateau)."""

    num_epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    max_length: int = 50  # tokens per caption, <start> and <end> included
    patience: int = 3  # early stopping: epochs without a better validation loss
    lr_patience: int = 1  # ReduceLROnPlateau
    lr_factor: float = 0.5
    label_smoothing: float = 0.0
    num_workers: int = 0  # features are in memory: workers only add overhead
    amp: bool = True  # mixed precision on CUDA (ignored on the CPU)
    data_parallel: bool = True  # nn.DataParallel when more than one GPU is visible
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

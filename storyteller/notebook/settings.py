"""The set-up cell every notebook shares: :func:`setup_notebook` seeds, picks the device, finds
the data and the output folder, sizes batches for the GPUs found, and turns on smoke mode.

The data is ``DATA_DIR`` (or ``$STORYTELLER_DATA_DIR``) when set; else on Kaggle the attached
Flickr30k or Flickr8k dataset (:mod:`.kaggle`); else the embedded sample. *Smoke mode*
(``SMOKE=True`` or ``STORYTELLER_SMOKE=1``) is a 60-image sample when no dataset is found,
2 epochs and a small model: the whole series on a CPU in minutes (CI).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig, field_values
from ..data.captions import find_caption_file
from ..data.sample import default_sample_dir, ensure_sample_dataset, generate_sample_dataset
from ..decoder_options import DEFAULT_DECODER, TransformerOptions
from ..errors import StorytellerError
from ..models import decoder_class
from ..progress import Log
from ..runtime import describe_hardware, get_device, seed_everything
from .hardware import adapted_sizes
from .kaggle import find_datasets, import_previous_outputs, kaggle_root, no_dataset_error, on_kaggle
from .runs import find_output_dir

DATA_DIR_ENV = "STORYTELLER_DATA_DIR"
SMOKE_ENV = "STORYTELLER_SMOKE"

SMOKE_SAMPLE_IMAGES = 60
SMOKE_EPOCHS = 2
#: The LSTMs' sizes in smoke mode, named and typed as ModelConfig's fields.
SMOKE_MODEL = field_values(ModelConfig, embed_size=32, hidden_size=64)
#: The transformer's smoke-mode sizes (its sizes are options of its own).
SMOKE_TRANSFORMER = field_values(
    TransformerOptions, d_model=32, heads=2, ff_dim=64, warmup_steps=10
)
SMOKE_ENCODER = "efficientnet_lite0"  # ships with its weights: no download in CI


def find_data(
    data_dir: str | Path | None = None, smoke: bool = False, log: Log = print
) -> tuple[Path, str]:
    """The dataset folder and how it was found (``"DATA_DIR"``, ``"kaggle"`` or ``"sample"``).
    In smoke mode the sample has 60 images, and on Kaggle with no dataset attached it is used
    instead of stopping with what to attach."""
    explicit = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise StorytellerError(
                f"DATA_DIR {path} does not exist: set DATA_DIR (or ${DATA_DIR_ENV}) to a "
                "dataset folder with Images/ + captions.txt, or to None to find the data "
                "automatically (Kaggle input or the embedded sample)"
            )
        find_caption_file(path)  # a clear error now rather than three cells later
        return path, "DATA_DIR"
    if on_kaggle():
        input_root = kaggle_root() / "input"
        datasets = find_datasets(input_root)
        if datasets:
            if len(datasets) > 1:
                log(f"several datasets attached; using {datasets[0]} (set DATA_DIR to choose)")
            return datasets[0], "kaggle"
        if not smoke:
            raise no_dataset_error(input_root)
    if not smoke:
        return ensure_sample_dataset(), "sample"
    default = default_sample_dir()  # the smoke sample lives beside it, never over it
    folder = default.with_name(f"{default.name}-{SMOKE_SAMPLE_IMAGES}")
    return generate_sample_dataset(folder, SMOKE_SAMPLE_IMAGES), "sample"


@dataclass
class NotebookSettings:
    """Everything a notebook needs to know, found by :func:`setup`."""

    data_dir: Path
    data_source: str  # "DATA_DIR", "kaggle" or "sample"
    out_dir: Path
    device: torch.device
    gpu_count: int
    gpu_names: list[str]
    on_kaggle: bool
    smoke: bool
    seed: int
    num_epochs: int
    batch_size: int
    feature_batch_size: int
    num_workers: int
    encoder: str | None  # None: ResNet50, or EfficientNet-Lite0 when offline
    model_overrides: dict = field(default_factory=dict)  # "decoder" and any sizes
    decoder_chosen: bool = False  # DECODER was set (not the default): later notebooks check it
    embeddings: Path | None = None  # EMBEDDINGS: a GloVe text file the words start from

    @property
    def decoder(self) -> str:
        """The captioner notebook 03 trains (``DECODER``), a name in the decoder registry."""
        return self.model_overrides.get("decoder", DEFAULT_DECODER)

    @property
    def layout(self) -> str:
        """What notebook 01 caches for that captioner: ``"grid"`` (the CNN's feature map, for
        the attention and transformer decoders) or ``"pooled"`` (one vector per photo)."""
        return decoder_class(self.decoder).feature_layout

    def train_config(self, **changes) -> TrainConfig:
        """The :class:`TrainConfig` for this run (``changes`` override single fields)."""
        run = dict(num_epochs=self.num_epochs, batch_size=self.batch_size, seed=self.seed)
        return TrainConfig(**{**run, "smoke": self.smoke, **changes})

    def path(self, name: str) -> Path:
        """An artefact of this run, e.g. ``settings.path("best_model.pth")``."""
        return self.out_dir / name

    def _sizes(self) -> dict:
        return {k: v for k, v in self.model_overrides.items() if k != "decoder"}

    def describe(self) -> str:
        """A few lines saying what was found (printed by :func:`setup`)."""
        mode = "SMOKE mode (tiny run for CI)" if self.smoke else "full run"
        gpus = f"{self.gpu_count} x {', '.join(self.gpu_names)}" if self.gpu_count else "none"
        return "\n".join(
            [
                f"mode:     {mode}, seed {self.seed}",
                f"platform: {'Kaggle' if self.on_kaggle else 'local'}; device {self.device}; "
                f"GPUs: {gpus}",
                f"data:     {self.data_dir} (found via {self.data_source})",
                f"outputs:  {self.out_dir.resolve()}",
                f"sizes:    train batch {self.batch_size}, extraction batch "
                f"{self.feature_batch_size} with {self.num_workers} worker(s), "
                f"{self.num_epochs} epoch(s)",
                f"model:    {self.decoder} decoder on {self.layout} features"
                + (f", {sizes}" if (sizes := self._sizes()) else ""),
                *([f"words:    start from {self.embeddings.name}"] if self.embeddings else []),
            ]
        )


def setup(
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    smoke: bool | None = None,
    epochs: int | None = None,
    seed: int = 0,
    encoder: str | None = None,
    device: str | None = None,
    log: Log = print,
    decoder: str | None = None,
    embeddings: str | Path | None = None,
    freeze_embeddings: bool = False,
) -> NotebookSettings:
    """Seed, pick the device, print the hardware, find data and outputs; return the settings.
    Each argument is a parameters-cell name (:data:`SETUP_PARAMETERS`) or, for ``seed`` and
    ``device``, a choice the notebooks leave to the default; ``None`` finds or defaults it
    (``smoke``: ``$STORYTELLER_SMOKE``; ``epochs``: 15, or 2 in smoke mode; ``encoder``:
    ResNet50, EfficientNet-Lite0 offline or in smoke mode)."""
    name = decoder or DEFAULT_DECODER
    decoder_class(name)  # an unknown name: say so before any work
    if freeze_embeddings and not embeddings:
        raise StorytellerError("FREEZE_EMBEDDINGS needs EMBEDDINGS (a GloVe text file)")
    if embeddings and not Path(embeddings).is_file():
        raise StorytellerError(f"EMBEDDINGS file not found: {embeddings}")
    seed_everything(seed)
    if smoke is None:
        smoke = os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    smoke = bool(smoke)
    chosen = get_device(device)
    gpu_count = torch.cuda.device_count() if chosen.type == "cuda" else 0
    log(f"hardware: {describe_hardware()}")
    data, source = find_data(data_dir, smoke=smoke, log=log)
    sizes = adapted_sizes(gpu_count)
    if epochs is not None and epochs < 1:
        raise StorytellerError(f"EPOCHS must be at least 1, got {epochs}")
    settings = NotebookSettings(
        data_dir=data,
        data_source=source,
        out_dir=find_output_dir(out_dir, smoke=smoke),
        device=chosen,
        gpu_count=gpu_count,
        gpu_names=[torch.cuda.get_device_name(i) for i in range(gpu_count)],
        on_kaggle=on_kaggle(),
        smoke=smoke,
        seed=seed,
        num_epochs=epochs or (SMOKE_EPOCHS if smoke else TrainConfig().num_epochs),
        batch_size=sizes.batch_size,
        feature_batch_size=sizes.feature_batch_size,
        num_workers=sizes.num_workers,
        encoder=encoder or (SMOKE_ENCODER if smoke else None),
        model_overrides=_model_overrides(name, smoke, bool(embeddings), freeze_embeddings),
        decoder_chosen=decoder is not None,
        embeddings=Path(embeddings) if embeddings else None,
    )
    if settings.on_kaggle:
        import_previous_outputs(kaggle_root() / "input", settings.out_dir, log=log)
    log(settings.describe())
    return settings


#: The parameters-cell names :func:`setup` reads, and the argument each one is.
SETUP_PARAMETERS = {
    "DATA_DIR": "data_dir",
    "OUT_DIR": "out_dir",
    "SMOKE": "smoke",
    "EPOCHS": "epochs",
    "ENCODER": "encoder",
    "DECODER": "decoder",
    "EMBEDDINGS": "embeddings",
    "FREEZE_EMBEDDINGS": "freeze_embeddings",
}


def setup_notebook(namespace: Mapping, log: Log = print) -> NotebookSettings:
    """:func:`setup` with the parameters a notebook defines, read from its ``globals()``: the
    set-up cell is then the same in every notebook (``notebooks check`` verifies it), and a
    name a notebook does not define keeps :func:`setup`'s default."""
    chosen = {arg: namespace[name] for name, arg in SETUP_PARAMETERS.items() if name in namespace}
    return setup(**chosen, log=log)


def smoke_model(decoder: str) -> dict:
    """The small sizes a smoke run trains ``decoder`` with."""
    if decoder == "transformer":
        return {"decoder_options": dict(SMOKE_TRANSFORMER)}
    return dict(SMOKE_MODEL)


def _model_overrides(decoder: str, smoke: bool, embeddings: bool, freeze: bool) -> dict:
    """The model settings for ``decoder``: its smoke sizes in smoke mode, less the word width
    (``embed_size``, the transformer's ``d_model``) when pretrained ``embeddings`` set it."""
    overrides = {"decoder": decoder, **(smoke_model(decoder) if smoke else {})}
    if not embeddings:
        return overrides
    overrides.pop("embed_size", None)
    if "decoder_options" in overrides:
        options = overrides["decoder_options"]
        overrides["decoder_options"] = {k: v for k, v in options.items() if k != "d_model"}
    return {**overrides, **({"freeze_embeddings": True} if freeze else {})}

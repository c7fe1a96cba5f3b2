"""What the numbered notebooks share: one ``setup()`` that finds data, outputs and hardware.

Every notebook's set-up cell calls :func:`setup_notebook` (:func:`setup` with the notebook's
parameters), which

1. seeds everything once (:func:`storyteller.runtime.seed_everything`);
2. picks the device and prints the hardware found (GPU count and names);
3. finds the data instead of asking for a path, in this order:

   * ``DATA_DIR`` (the notebook parameter, or the ``STORYTELLER_DATA_DIR`` environment
     variable) when it is set: a folder that must exist;
   * on Kaggle, the attached ``adityajn105/flickr30k`` or ``adityajn105/flickr8k`` dataset,
     wherever Kaggle mounted it under ``/kaggle/input`` (Flickr30k preferred when both are
     attached); with none attached it stops with a message saying what to attach;
   * elsewhere, the embedded sample dataset the package draws itself;

4. picks the output folder: ``OUT_DIR`` / ``STORYTELLER_OUT_DIR`` if set, else
   ``/kaggle/working`` on Kaggle and ``./outputs`` anywhere else (``./outputs/smoke`` in
   smoke mode);
5. adapts batch size and workers to the GPUs found, and turns on *smoke mode* when asked
   (``SMOKE=True`` or ``STORYTELLER_SMOKE=1``): a 60-image sample when no dataset is found,
   2 epochs and a small model, so the whole series runs on a CPU in a few minutes (CI).

Where Kaggle's folders are is :mod:`.kaggle`'s business, the run folder :mod:`.runs`'s and the
sizes :mod:`.hardware`'s; this module puts their answers together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig, field_values
from ..data.captions import find_caption_file
from ..decoder_options import TransformerOptions
from ..errors import StorytellerError
from ..models import DEFAULT_DECODER, decoder_class
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

_TRUE = {"1", "true", "yes", "on"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def smoke_requested(smoke: bool | None = None) -> bool:
    """``smoke`` if given (the notebook's ``SMOKE`` parameter), else ``$STORYTELLER_SMOKE``."""
    return _env_flag(SMOKE_ENV) if smoke is None else bool(smoke)


def smoke_sample_dir(num_images: int = SMOKE_SAMPLE_IMAGES) -> Path:
    """Where the small smoke-mode sample lives: beside the default sample, never over it."""
    from ..data.sample import default_sample_dir

    default = default_sample_dir()
    return default.with_name(f"{default.name}-{num_images}")


def find_data(
    data_dir: str | Path | None = None, smoke: bool = False, log: Log = print
) -> tuple[Path, str]:
    """The dataset folder and how it was found (``"DATA_DIR"``, ``"kaggle"`` or ``"sample"``).

    Args:
        data_dir: an explicit folder (the notebook's ``DATA_DIR``); ``None`` to look at
            ``$STORYTELLER_DATA_DIR``, then Kaggle's inputs, then the embedded sample.
        smoke: use a 60-image sample (instead of 400) when no dataset is found; on Kaggle,
            fall back to it instead of stopping when no dataset is attached.

    Raises:
        StorytellerError: ``DATA_DIR`` does not exist or holds no caption file; on Kaggle
            with no dataset attached (outside smoke mode), saying what to attach.
    """
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
    from ..data.sample import generate_sample_dataset

    if smoke:
        return generate_sample_dataset(smoke_sample_dir(), SMOKE_SAMPLE_IMAGES), "sample"
    from ..pipeline import resolve_data

    return resolve_data(None, log=lambda _: None), "sample"


# --------------------------------------------------------------------------------------------
# The settings every notebook passes around
# --------------------------------------------------------------------------------------------


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
        config = {
            "num_epochs": self.num_epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "smoke": self.smoke,
            **changes,
        }
        return TrainConfig(**config)

    def path(self, name: str) -> Path:
        """An artefact of this run, e.g. ``settings.path("best_model.pth")``."""
        return self.out_dir / name

    def _sizes(self) -> dict:
        """The model settings besides the decoder's name (none: its defaults)."""
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

    Args:
        data_dir: the notebook's ``DATA_DIR`` (``None``: found automatically, see module doc).
        out_dir: the notebook's ``OUT_DIR`` (``None``: ``/kaggle/working`` or ``./outputs``).
        smoke: the notebook's ``SMOKE`` (``None``: ``$STORYTELLER_SMOKE``).
        epochs: number of epochs (``None``: 15, or 2 in smoke mode).
        seed: seeds Python, NumPy, torch and the split.
        encoder: the CNN (``None``: ResNet50, EfficientNet-Lite0 offline or in smoke mode).
        device: ``"cpu"``/``"cuda"`` to force one (``None``: CUDA when available).
        decoder: the notebook's ``DECODER``: the captioner to train (``None``: the default,
            :data:`storyteller.models.DEFAULT_DECODER`); notebook 01 caches the features it
            reads, notebooks 04 and 05 check that the trained model is that one.
        embeddings: notebook 03's ``EMBEDDINGS``: a GloVe text file whose vectors start the
            word embedding (its dimension sets the width, smoke sizes included);
            ``freeze_embeddings`` (``FREEZE_EMBEDDINGS``) keeps them fixed.
    """
    decoder_class(decoder or DEFAULT_DECODER)  # an unknown name: say so before any work
    if freeze_embeddings and not embeddings:
        raise StorytellerError("FREEZE_EMBEDDINGS needs EMBEDDINGS (a GloVe text file)")
    if embeddings and not Path(embeddings).is_file():
        raise StorytellerError(f"EMBEDDINGS file not found: {embeddings}")
    seed_everything(seed)
    smoke = smoke_requested(smoke)
    chosen = get_device(device)
    gpu_count = torch.cuda.device_count() if chosen.type == "cuda" else 0
    gpu_names = [torch.cuda.get_device_name(i) for i in range(gpu_count)]
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
        gpu_names=gpu_names,
        on_kaggle=on_kaggle(),
        smoke=smoke,
        seed=seed,
        num_epochs=epochs or (SMOKE_EPOCHS if smoke else TrainConfig().num_epochs),
        batch_size=sizes.batch_size,
        feature_batch_size=sizes.feature_batch_size,
        num_workers=sizes.num_workers,
        encoder=encoder or (SMOKE_ENCODER if smoke else None),
        model_overrides=_with_embeddings(
            {
                "decoder": decoder or DEFAULT_DECODER,
                **(smoke_model(decoder or DEFAULT_DECODER) if smoke else {}),
            },
            bool(embeddings),
            freeze_embeddings,
        ),
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
    """:func:`setup` with the parameters a notebook defines, read from its ``globals()``.

    This keeps the set-up cell the same in every notebook (``notebooks check`` verifies it):
    each notebook's own parameters cell says which of :data:`SETUP_PARAMETERS` it sets (02
    has no ``DECODER``, 03 alone has ``EPOCHS``), and a name it does not define keeps
    :func:`setup`'s default."""
    chosen = {arg: namespace[name] for name, arg in SETUP_PARAMETERS.items() if name in namespace}
    return setup(**chosen, log=log)


def _with_embeddings(overrides: dict, embeddings: bool, freeze: bool) -> dict:
    """``overrides`` for a run that starts from pretrained vectors: the file sets the word
    width, so the smoke sizes' (``embed_size``, the transformer's ``d_model``) are dropped."""
    if not embeddings:
        return overrides
    kept = {k: v for k, v in overrides.items() if k != "embed_size"}
    if "decoder_options" in kept:
        options = {k: v for k, v in kept["decoder_options"].items() if k != "d_model"}
        kept["decoder_options"] = options
    return {**kept, **({"freeze_embeddings": True} if freeze else {})}


def smoke_model(decoder: str) -> dict:
    """The small sizes a smoke run trains ``decoder`` with."""
    if decoder == "transformer":
        return {"decoder_options": dict(SMOKE_TRANSFORMER)}
    return dict(SMOKE_MODEL)

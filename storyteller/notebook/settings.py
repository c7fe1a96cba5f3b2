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

``STORYTELLER_KAGGLE_ROOT`` moves ``/kaggle`` (tests fake a Kaggle machine with it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import SMOKE_LABEL, ModelConfig, TrainConfig, field_values
from ..data.captions import CAPTION_FILES, find_caption_file, find_image_dir
from ..decoder_options import TransformerOptions
from ..errors import StorytellerError
from ..features.cache import CPU_BATCH_SIZE, CPU_NUM_WORKERS, GPU_BATCH_SIZE, GPU_NUM_WORKERS
from ..models import DEFAULT_DECODER, decoder_class
from ..run_folder import (
    BEST_CHECKPOINT,
    FEATURES_INDEX,
    HISTORY_FILE,
    HUB_MODEL_DIR,
    METRICS_FILE,
    RUN_ARTEFACTS,
    RUN_MARKERS,
    SPACE_DIR,
    SPLITS_FILE,
    TEST_CAPTIONS_FILE,
    VOCAB_FILE,
)
from ..runtime import describe_hardware, get_device, seed_everything

KAGGLE_ROOT_ENV = "STORYTELLER_KAGGLE_ROOT"
DATA_DIR_ENV = "STORYTELLER_DATA_DIR"
OUT_DIR_ENV = "STORYTELLER_OUT_DIR"
SMOKE_ENV = "STORYTELLER_SMOKE"

#: The Kaggle datasets the notebooks look for, best first, and the name that identifies each.
KAGGLE_DATASETS = (("adityajn105/flickr30k", "30k"), ("adityajn105/flickr8k", "8k"))
_SEARCH_DEPTH = 4  # /kaggle/input/<a>/<b>/<c>/<d>/captions.txt at the deepest

SMOKE_SAMPLE_IMAGES = 60
SMOKE_EPOCHS = 2
#: The LSTMs' sizes in smoke mode, named and typed as ModelConfig's fields.
SMOKE_MODEL = field_values(ModelConfig, embed_size=32, hidden_size=64)
#: The transformer's smoke-mode sizes (its sizes are options of its own).
SMOKE_TRANSFORMER = field_values(
    TransformerOptions, d_model=32, heads=2, ff_dim=64, warmup_steps=10
)
SMOKE_ENCODER = "efficientnet_lite0"  # ships with its weights: no download in CI

#: Which notebook writes each artefact (for "run notebook N first" messages).
PRODUCED_BY = {
    FEATURES_INDEX: "01_extract_features.ipynb",
    VOCAB_FILE: "02_build_vocabulary.ipynb",
    SPLITS_FILE: "02_build_vocabulary.ipynb",
    BEST_CHECKPOINT: "03_train.ipynb",
    HISTORY_FILE: "03_train.ipynb",
    METRICS_FILE: "04_evaluate.ipynb",
    TEST_CAPTIONS_FILE: "04_evaluate.ipynb",
}

Log = Callable[[str], None]
_TRUE = {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------------------------
# Where am I? Kaggle detection and the folders it mounts
# --------------------------------------------------------------------------------------------


def kaggle_root() -> Path:
    """``/kaggle``, or the folder in ``$STORYTELLER_KAGGLE_ROOT`` (a fake Kaggle for tests)."""
    return Path(os.environ.get(KAGGLE_ROOT_ENV) or "/kaggle")


def on_kaggle() -> bool:
    """True in a Kaggle notebook: Kaggle sets ``KAGGLE_KERNEL_RUN_TYPE`` and mounts
    ``/kaggle/input`` (either is enough, so a faked root counts too)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "input").is_dir()


def _is_dataset_folder(folder: Path) -> bool:
    """A folder holding a caption file and an image folder (a layout ``load_dataset`` reads)."""
    if not any((folder / name).is_file() for name in CAPTION_FILES):
        return False
    try:
        find_image_dir(folder)
    except StorytellerError:
        return False
    return True


def find_datasets(input_root: str | Path, max_depth: int = _SEARCH_DEPTH) -> list[Path]:
    """Every dataset folder under ``input_root`` (Kaggle's ``/kaggle/input``), best first.

    Kaggle mounts an attached dataset as ``/kaggle/input/<slug>`` (or deeper, e.g.
    ``/kaggle/input/<owner>/<slug>``; some datasets nest their files once more), so the
    search walks a few levels down and stops at the first folder that holds a dataset.
    Flickr30k ranks before Flickr8k, both before anything else that looks like one.
    """
    input_root = Path(input_root)
    found: list[Path] = []
    level = [input_root] if input_root.is_dir() else []
    for _ in range(max_depth + 1):
        next_level = []
        for folder in level:
            if _is_dataset_folder(folder):
                found.append(folder)
                continue
            try:
                children = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            next_level += [Path(e.path) for e in children if e.is_dir() and e.name[0] != "."]
        level = next_level

    def rank(path: Path) -> tuple[int, str]:
        text = str(path.relative_to(input_root)).lower()
        marks = [i for i, (_, mark) in enumerate(KAGGLE_DATASETS) if mark in text]
        return (marks[0] if marks else len(KAGGLE_DATASETS), text)

    return sorted(found, key=rank)


def _missing_kaggle_dataset(input_root: Path) -> StorytellerError:
    attached = sorted(p.name for p in input_root.iterdir()) if input_root.is_dir() else []
    return StorytellerError(
        f"running on Kaggle, but no Flickr dataset was found under {input_root} "
        f"(attached: {', '.join(attached) or 'nothing'}). Attach one: in the notebook's right "
        "panel, Input -> Add Input, search 'adityajn105/flickr30k' (or 'adityajn105/flickr8k') "
        "and click +. Or set DATA_DIR in the parameters cell to a folder with Images/ + "
        "captions.txt."
    )


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
            raise _missing_kaggle_dataset(input_root)
    from ..data.sample import generate_sample_dataset

    if smoke:
        return generate_sample_dataset(smoke_sample_dir(), SMOKE_SAMPLE_IMAGES), "sample"
    from ..pipeline import resolve_data

    return resolve_data(None, log=lambda _: None), "sample"


def default_output_dir(smoke: bool = False) -> Path:
    """The run folder off Kaggle when none is named: ``./outputs``, or ``./outputs/smoke`` in
    smoke mode, so a smoke run never meets a real run's cache (its features are of other
    images) and never leaves its sample's figures among the real run's."""
    return Path("outputs", "smoke") if smoke else Path("outputs")


def find_output_dir(out_dir: str | Path | None = None, smoke: bool = False) -> Path:
    """``out_dir`` / ``$STORYTELLER_OUT_DIR`` if set, else ``/kaggle/working`` on Kaggle, else
    :func:`default_output_dir` (``./outputs``, ``./outputs/smoke`` in smoke mode); created if
    missing."""
    explicit = out_dir if out_dir not in (None, "") else os.environ.get(OUT_DIR_ENV) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
    elif on_kaggle():
        path = kaggle_root() / "working"
    else:
        path = default_output_dir(smoke)
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_previous_runs(input_root: str | Path, max_depth: int = 3) -> list[Path]:
    """Folders under ``input_root`` that hold a previous notebook's outputs.

    On Kaggle each notebook is its own session with its own ``/kaggle/working``; the outputs
    of a saved notebook version are attached to the next one as an input (Input -> Add Input
    -> Your Work), where they appear under ``/kaggle/input``.
    """
    input_root = Path(input_root)
    found, level = [], [input_root] if input_root.is_dir() else []
    for _ in range(max_depth + 1):
        next_level = []
        for folder in level:
            if any((folder / marker).is_file() for marker in RUN_MARKERS):
                found.append(folder)
                continue
            if _is_dataset_folder(folder):
                continue  # never walk into the photos
            try:
                next_level += sorted(
                    Path(e.path) for e in os.scandir(folder) if e.is_dir() and e.name[0] != "."
                )
            except OSError:
                continue
        level = next_level
    return found


def import_previous_outputs(
    input_root: str | Path, out_dir: str | Path, log: Log = print
) -> list[str]:
    """Copy earlier notebooks' outputs found under ``input_root`` into ``out_dir``.

    Only files missing from ``out_dir`` are copied (nothing is ever overwritten), so a
    re-run keeps its own newer files; copying a ``last.pth`` is what lets training resume
    in a new Kaggle session. Returns the names copied.
    """
    import shutil

    out_dir = Path(out_dir)
    copied = []
    for run in find_previous_runs(input_root):
        from_run = []
        for name in RUN_ARTEFACTS:
            source, target = run / name, out_dir / name
            if source.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                from_run.append(name)
        if from_run:
            log(f"copied earlier outputs from {run}: {', '.join(from_run)}")
        copied += from_run
    return copied


# --------------------------------------------------------------------------------------------
# Sizes that follow the hardware
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Batch sizes and workers for the hardware found."""

    batch_size: int  # training batch (nn.DataParallel splits it across the GPUs)
    feature_batch_size: int  # images per batch at feature extraction
    num_workers: int  # worker processes reading (on a CPU: decoding) images at extraction


def adapted_sizes(gpu_count: int, cpu_count: int | None = None) -> Sizes:
    """Sizes for ``gpu_count`` GPUs and ``cpu_count`` CPU cores.

    * training: 64 captions per GPU (the seed recipe's 64 on one device; DataParallel gives
      each of Kaggle's two T4s a 64 share of a 128 batch); 64 on the CPU;
    * extraction: the package's defaults (``storyteller.features.cache``): on a GPU 64 images per
      GPU and a few workers that only read file bytes (JPEGs are decoded on the GPU); on the
      CPU the measured 4 and 1.
    """
    cpu_count = max(1, cpu_count or os.cpu_count() or 1)
    if gpu_count < 1:
        return Sizes(batch_size=64, feature_batch_size=CPU_BATCH_SIZE, num_workers=CPU_NUM_WORKERS)
    return Sizes(
        batch_size=64 * gpu_count,
        feature_batch_size=GPU_BATCH_SIZE * gpu_count,
        num_workers=min(cpu_count, GPU_NUM_WORKERS),
    )


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


def require_decoder(settings: NotebookSettings, checkpoint: str | Path) -> str:
    """The decoder ``checkpoint`` holds; with ``DECODER`` set in this notebook, a clear error
    when the trained model is another one (notebook 03 ran with another ``DECODER``)."""
    from ..models.checkpoint import read_checkpoint

    trained = read_checkpoint(checkpoint)["model_config"].get("decoder", "lstm")
    if settings.decoder_chosen and trained != settings.decoder:
        raise StorytellerError(
            f"{Path(checkpoint).name} holds a {trained!r} captioner but DECODER is "
            f"{settings.decoder!r}: run 03_train.ipynb with DECODER = {settings.decoder!r}, or "
            f"set DECODER = {trained!r} (or None) here"
        )
    return trained


def require(settings: NotebookSettings, *artefacts: str) -> None:
    """Stop with a clear message if an earlier notebook's output is missing.

    ``require(settings, "vocab.pkl", "features/features.json")`` raises
    :class:`StorytellerError` naming the notebook that writes each missing file.
    """
    missing = [name for name in artefacts if not (settings.out_dir / name).is_file()]
    if missing:
        notebooks = sorted({PRODUCED_BY.get(name, "the previous notebooks") for name in missing})
        raise StorytellerError(
            f"{', '.join(missing)} not found in {settings.out_dir}: run {', '.join(notebooks)} "
            "first (with the same DATA_DIR / OUT_DIR / SMOKE settings)"
        )


# --------------------------------------------------------------------------------------------
# Notebook 05: extras, the Hugging Face token, the story backend, the Space
# --------------------------------------------------------------------------------------------

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def missing_requirements(*extras: str) -> list[str]:
    """Requirements of the package's optional ``extras`` (e.g. ``"story"``, ``"app"``) whose
    distributions are not installed, as pip requirement strings."""
    from importlib import metadata

    try:
        requirements = metadata.requires("storyteller") or []
    except metadata.PackageNotFoundError:
        return []  # run from a source folder without metadata: nothing to compare with
    missing = []
    for line in requirements:
        spec, _, marker = line.partition(";")
        extra = _EXTRA_MARKER.search(marker)
        name = _REQUIREMENT_NAME.match(spec)
        if not extra or extra.group(1) not in extras or not name:
            continue
        if name.group(1).lower() == "storyteller":
            continue  # the test extra names the package's own extras
        try:
            metadata.distribution(name.group(1))
        except metadata.PackageNotFoundError:
            if spec.strip() not in missing:  # huggingface_hub is in two extras
                missing.append(spec.strip())
    return missing


#: The extra whose requirements the Space needs here: gradio to build its folder (the README
#: names the Gradio version), huggingface_hub to push it. Everything else is for the story.
SPACE_EXTRA = "app"


def install_extras(*extras: str, log: Log = print) -> list[str]:
    """pip-install whatever the named extras need and is missing (Kaggle has most of it).

    Never stops the notebook: when pip fails (no internet, e.g. Kaggle with Internet off) it
    says what could not be installed and what that costs: without the story requirements
    there may be no story (the notebook goes on with the caption alone); without the
    :data:`SPACE_EXTRA` ones the Space folder cannot be built or pushed (said plainly, since
    the last cell then stops). Returns the requirements still missing (``[]``: all there).
    """
    import importlib
    import subprocess
    import sys

    missing = missing_requirements(*extras)
    if not missing:
        log(f"everything the {' and '.join(extras)} extra(s) need is installed")
        return []
    log(f"installing {', '.join(missing)}")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *missing],
        capture_output=True,
        text=True,
    )
    importlib.invalidate_caches()
    still = missing_requirements(*extras)
    if not still:
        return []
    lines = [line.strip() for line in (pip.stderr + pip.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines or ["no output"]
    log(f"could not install {', '.join(still)} (pip: {errors[-1]})")
    space = [r for r in still if r in missing_requirements(SPACE_EXTRA)]
    story = [r for r in still if r not in space]
    if story:
        log(
            f"  story: without {', '.join(story)} there may be no story model; the notebook goes "
            "on and keeps the caption alone (a Hugging Face token also gives the hosted model)"
        )
    if space:
        log(
            f"  Space: the Space needs {', '.join(space)} (gradio to build its folder, "
            "huggingface_hub to push it): the last cell stops without it. Turn Internet on "
            "(Kaggle: Settings -> Internet) and run this cell again"
        )
    return still


def hf_token(prompt: bool = False) -> str | None:
    """A Hugging Face token, or None. Never printed, logged or written anywhere.

    Looks in Kaggle Secrets (a secret named ``HF_TOKEN``, on Kaggle only), then the
    ``HF_TOKEN`` environment variable and the ``hf auth login`` cache
    (:func:`storyteller.hf_token.find_hf_token`), then, with ``prompt``, asks with a hidden
    prompt (``getpass``; skipped where there is no one to answer, e.g. a batch run).
    """
    from ..hf_token import ask_hf_token, find_hf_token

    token = find_hf_token(kaggle=on_kaggle())
    if token is None and prompt:
        token = ask_hf_token()
    return token


#: New tokens per story turn in smoke mode (the offline model stays quick on a CPU).
SMOKE_STORY_TOKENS = 40


def _backend_choice(name: str, token: str | None, smoke: bool) -> tuple[str, str]:
    """The backend :func:`story_backend` uses for ``name``, and why (for messages)."""
    from ..story.backends import choose_auto

    name = (name or "auto").strip().lower()
    if name != "auto":
        return name, f"STORY_BACKEND = {name!r}"
    if smoke:
        return "offline", "auto, smoke mode: the offline model only"
    return choose_auto(token, base_url=None)  # a notebook names no story server: the token decides


def story_backend(name: str = "auto", token: str | None = None, smoke: bool = False):
    """The story backend for a notebook: ``name`` as in :func:`storyteller.story.get_backend`.

    ``"auto"`` means the hosted model when there is a token and the offline Gemma model
    otherwise; in smoke mode ``"auto"`` is always the offline model (CI has no network).
    The token is handed to the hosted backend only.

    Raises:
        StoryError: the backend cannot be loaded (see :func:`find_story_backend`, which
            returns the reason instead).
    """
    from ..story import get_backend

    name, _ = _backend_choice(name, token, smoke)
    if name == "hosted" and token:
        return get_backend("hosted", token=token)
    return get_backend(name)


def _no_story(reason: str, log: Log) -> str:
    log(f"no story: {reason}. Going on with the caption alone (story.json records why).")
    return reason


def find_story_backend(
    name: str = "auto", token: str | None = None, smoke: bool = False, log: Log = print
):
    """The story backend, or ``None`` and why there is none: ``(backend, "")`` or
    ``(None, reason)``.

    Like :func:`story_backend`, but a missing model (no token, the offline package not
    installed, ...) is not an error: the reason names the backend that was tried and what
    would make one available, it is printed once, and the notebook goes on with the caption
    alone (and still builds the Space, whose own story model is installed on the Space).
    """
    from ..story import StoryError

    chosen, why = _backend_choice(name, token, smoke)
    try:
        backend = story_backend(name, token, smoke=smoke)
    except StoryError as exc:
        detail = str(exc).removeprefix(f"{chosen}: ")
        return None, _no_story(f"tried the {chosen} backend ({why}): {detail}", log)
    log(f"story backend: {backend.describe()}")
    return backend, ""


def tell_story(session, caption: str, smoke: bool = False, log: Log = print) -> tuple[str, str]:
    """Start ``session``'s story from ``caption``, shown while it is written
    (``report.stream(session.start(caption))``); ``smoke``: the caption comes from a smoke
    run's model, and the story, which opens with it, is headed :data:`SMOKE_LABEL`.

    Returns ``(story, "")``, or ``("", reason)`` when the model fails (a hosted model with
    no network, an empty caption, a model that writes nothing); the reason is printed once
    and the notebook goes on with the caption alone.
    """
    from ..story import StoryError
    from . import report

    if smoke:
        log(f"{SMOKE_LABEL}: the story opens with a smoke model's caption")
    try:
        return report.stream(session.start(caption)), ""
    except StoryError as exc:
        return "", _no_story(str(exc), log)


def save_story(
    path: str | Path,
    photo: str | Path,
    caption: str,
    session,
    why_no_story: str = "",
    smoke: bool = False,
    log: Log = print,
) -> dict:
    """Write ``story.json``: the photo, its caption, the backend and options, the story turn
    by turn, ``why_no_story`` (``None`` when there is a story) and ``smoke`` (the caption
    comes from a smoke run's model: caption and story are meaningless). Returns the record."""
    from ..runtime import write_json

    path = Path(path)
    record = {
        "photo": Path(photo).name,
        "caption": caption,
        "backend": session.backend.describe() if session.backend is not None else None,
        "options": vars(session.options),
        "story": session.story,
        "turns": session.turns,
        "why_no_story": why_no_story or None,
        "smoke": smoke,
    }
    write_json(path, record)
    if session.turns:
        words = len(session.story.split())
        log(f"{len(session.turns)} turn(s), {words} words -> {path.name}")
    else:
        log(f"the caption, no story (why_no_story says why) -> {path.name}")
    return record


def publish_model(
    run_dir: str | Path, model_id: str = "", token: str | None = None, log: Log = print
) -> str | None:
    """Push the run's captioner to the Hub model ``model_id`` (:func:`storyteller.serving.hub_push.
    push_model`) and return the id, or, without an id or a token, write the model folder to
    ``run_dir/hub_model`` (rebuilt each time), say how to push it and return None."""
    import shutil

    from ..serving.hub import is_model_folder
    from ..serving.hub_push import push_model

    run_dir = Path(run_dir)
    if model_id and token:
        push_model(run_dir, model_id, token=token, log=log)
        return model_id
    dest = run_dir / HUB_MODEL_DIR
    if is_model_folder(dest):
        shutil.rmtree(dest)  # our own earlier dry run: rebuild it from the current run
    push_model(run_dir, model_id or None, dry_run=dest, log=log)
    reason = "no MODEL_ID set" if not model_id else "no Hugging Face token found"
    log(f"not pushed ({reason}): set MODEL_ID and a write token (HF_TOKEN) to share the model")
    return None


def publish_space(
    run_dir: str | Path,
    space_id: str = "",
    token: str | None = None,
    log: Log = print,
    model: str | None = None,
) -> str:
    """Push the run to the Hugging Face Space ``space_id``, or build its folder (dry run).

    With a ``space_id`` and a ``token``: :func:`storyteller.serving.deploy.deploy_space`, returns the
    Space's URL. Otherwise writes the Space folder to ``run_dir/space`` (rebuilt each time),
    says how to push it, and returns the folder's path. With ``model`` (a pushed Hub model
    id) the Space loads that model from the Hub instead of carrying the run's weights.
    """
    import shutil

    from ..serving.deploy import build_space_folder, deploy_space

    run_dir = Path(run_dir)
    if space_id and token:
        return deploy_space(space_id, run_dir, token=token, log=log, model=model)
    dest = run_dir / SPACE_DIR
    if dest.is_dir() and (dest / "app.py").is_file():
        shutil.rmtree(dest)  # our own earlier dry run: rebuild it from the current run
    folder = build_space_folder(run_dir, dest, log=log, model=model)
    reason = "no SPACE_ID set" if not space_id else "no Hugging Face token found"
    log(
        f"dry run ({reason}): the Space folder is in {folder}. To push it, set SPACE_ID in "
        "the parameters cell and add a write token as the Kaggle secret HF_TOKEN (or the "
        "HF_TOKEN environment variable), then run this cell again; or, from a checkout: "
        f"python -m storyteller deploy --space USER/NAME --run {run_dir}"
    )
    return str(folder)

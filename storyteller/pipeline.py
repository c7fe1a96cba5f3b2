"""The whole chain as steps that share one run folder (its files: :mod:`storyteller.run_folder`):
data -> cached features -> vocabulary -> training -> evaluation. Each step reads what the
previous ones wrote, so the command line, the notebooks and ``run_all`` call the same functions
and a step can be re-run on its own; each holds its run folder while it writes."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .artefacts import read_splits
from .config import MIN_WORD_COUNT, ModelConfig, Strategy, TrainConfig
from .data.captions import CaptionDataset, load_dataset
from .data.vocab import Vocabulary
from .data.vocab_build import build_split_vocabulary, captions_of_file, save_split_vocabulary
from .errors import StorytellerError
from .features.cache import FeatureExtractor, extract_features
from .features.cache_format import FeatureCache, load_feature_cache, read_cache_index
from .features.encoders import resolve_encoder
from .models import decoder_class
from .models.checkpoint import load_model
from .progress import Log
from .run_folder import DEFAULT_OUT, SPLITS_FILE, RunPaths
from .runtime import get_device, seed_everything, write_json
from .training.distributed import SINGLE_PROCESS, DistContext, launch, session, writes_run_folder
from .training.finetune import build_fine_tuned_encoder, checkpoint_encoder, encode_images
from .training.model_setup import run_model_config, word_vectors
from .training.train import TrainResult, train_model

if TYPE_CHECKING:
    import torch


def resolve_data(
    data: str | Path | None,
    sample_images: int | None = None,
    log: Log = print,
    out: str | Path | None = None,
) -> Path:
    """The dataset folder to use: ``data``; else the one the run folder ``out`` was made from;
    else the embedded sample (generated once)."""
    if data is not None:
        return Path(data).expanduser()
    made_from = None if out is None else recorded_data(out)
    if made_from is not None:
        log(f"no --data given: using {made_from}, the dataset the run folder {out} was made from")
        return made_from
    from .data.sample import DEFAULT_NUM_IMAGES, ensure_sample_dataset

    path = ensure_sample_dataset(num_images=sample_images or DEFAULT_NUM_IMAGES)
    log(f"no --data given: using the embedded sample dataset in {path}")
    return path


def recorded_data(out: str | Path) -> Path | None:
    """The dataset folder whose photos the feature cache in ``out`` was made from. None without
    a readable index, or for the embedded sample when it is gone (it is made again)."""
    from .data.captions import find_caption_file, find_image_dir
    from .data.sample import default_sample_dir

    index = RunPaths(Path(out)).features_index
    try:
        image_dir = read_cache_index(index.parent).get("image_dir") if index.is_file() else None
    except StorytellerError:
        return None
    if not isinstance(image_dir, str) or not image_dir:
        return None
    image_dir = Path(image_dir)
    for folder in list(image_dir.parents)[:3]:
        with contextlib.suppress(StorytellerError):
            find_caption_file(folder)
            if find_image_dir(folder) == image_dir:
                return folder
    if image_dir.parent == default_sample_dir():
        return None
    raise StorytellerError(
        f"{index} says this run's photos are in {image_dir}, which is no dataset folder now: "
        "pass --data with the dataset the run was made from"
    )


@writes_run_folder
def features_step(
    data: str | Path | None,
    out: str | Path = DEFAULT_OUT,
    encoder: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    log: Log = print,
    decode_on: str = "auto",
    layout: str | None = None,
) -> Path:
    """Extract and cache each image's features with ``encoder``. ``layout``: ``"pooled"`` or
    ``"grid"`` (whose means serve a pooled captioner too); ``None``: what an existing cache
    holds, else pooled."""
    paths = RunPaths(Path(out))
    dataset = load_dataset(resolve_data(data, log=log, out=out))
    if paths.features_index.is_file() and not overwrite:  # resume with what it was made with
        meta = read_cache_index(paths.features)
        encoder = encoder or meta["encoder"]
        layout = layout or meta.get("layout", "pooled")
    layout = layout or "pooled"
    name, module = resolve_encoder(encoder, log=log)
    log(f"extracting {name} {layout} features for {len(dataset)} images into {paths.features}")
    image_dir = dataset.image_dir.absolute()  # recorded: later steps find the data from anywhere
    extract_features(
        image_dir, dataset.images, paths.features, name, batch_size=batch_size,
        num_workers=num_workers, device=get_device(device), overwrite=overwrite, encoder=module,
        decode_on=decode_on, layout=layout,
    )  # fmt: skip
    return paths.features


@writes_run_folder
def vocab_step(
    data: str | Path | None,
    out: str | Path = DEFAULT_OUT,
    threshold: int = MIN_WORD_COUNT,
    seed: int = 0,
    log: Log = print,
) -> Vocabulary:
    """Split images 80/10/10 (seeded) and build the vocabulary from the *training* captions."""
    dataset = load_dataset(resolve_data(data, log=log, out=out))
    vocab, split = build_split_vocabulary(
        dataset.captions, threshold, seed, provenance={"source": str(dataset.source)}
    )
    save_split_vocabulary(RunPaths(Path(out)), vocab, split, seed, log)
    return vocab


@writes_run_folder
def vocab_from_captions(
    captions_file: str | Path,
    out: str | Path = DEFAULT_OUT,
    threshold: int = MIN_WORD_COUNT,
    seed: int = 0,
    dataset_name: str | None = None,
    log: Log = print,
) -> Vocabulary:
    """:func:`vocab_step` from a caption file alone: the same split and vocabulary as from the
    dataset folder. The provenance records the file's name and content hash, not its path, so
    the result is the same on every machine."""
    captions, provenance = captions_of_file(captions_file)
    if dataset_name:
        provenance["dataset"] = dataset_name
    vocab, split = build_split_vocabulary(captions, threshold, seed, provenance)
    save_split_vocabulary(RunPaths(Path(out)), vocab, split, seed, log)
    return vocab


def load_splits(out: str | Path) -> dict[str, list[str]]:
    path = RunPaths(Path(out)).splits
    if not path.is_file():
        raise StorytellerError(
            f"no {SPLITS_FILE} in {out}: run `python -m storyteller vocab` first"
        )
    return read_splits(path)


def _load_run(data, out, log) -> tuple[Path, CaptionDataset, dict, Vocabulary, FeatureCache]:
    """What training and evaluation read from a run folder, checked against each other."""
    paths = RunPaths(Path(out))
    splits, vocab = load_splits(out), Vocabulary.load(paths.vocab)  # cheap checks first
    cache = load_feature_cache(paths.features)
    data_dir = resolve_data(data, log=log, out=out)
    dataset = load_dataset(data_dir)
    check_splits(splits, paths, cache, dataset)
    return data_dir, dataset, splits, vocab, cache


def check_splits(
    splits: dict, paths: RunPaths, cache: FeatureCache, dataset: CaptionDataset
) -> None:
    """Every image ``splits.json`` names is in the feature cache, and every cached one has
    captions and a photo in ``dataset`` (images unreadable at extraction are left out)."""
    named = [name for split in ("train", "val", "test") for name in splits[split]]
    extracted = set(cache.meta["images"])
    missing = [name for name in named if name not in extracted]
    if missing:
        raise StorytellerError(
            f"{paths.splits} names {len(missing)} image(s) the feature cache "
            f"{paths.features_index} does not hold (e.g. {missing[0]}): extract the features "
            "of the same --data again (features --overwrite), or make the splits from the "
            "data the features came from (vocab)"
        )
    uncaptioned = [name for name in named if name in cache and name not in dataset.captions]
    if uncaptioned:
        raise StorytellerError(
            f"{len(uncaptioned)} image(s) of {paths.splits} have no captions in "
            f"{dataset.source} or no photo in {dataset.image_dir} (e.g. {uncaptioned[0]}): "
            "pass the --data this run was made from"
        )


@writes_run_folder
def train_step(
    data: str | Path | None,
    out: str | Path = DEFAULT_OUT,
    train_config: TrainConfig | None = None,
    model_overrides: dict | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    on_epoch=None,
    log: Log = print,
    context: DistContext = SINGLE_PROCESS,
    embeddings: str | Path | None = None,
    fine_tune_encoder: int = 0,
    encoder: str | None = None,
) -> TrainResult:
    """Train the captioner ``model_overrides`` describe (ModelConfig fields) on the run's
    cached features. ``fine_tune_encoder`` N > 0: train the last N blocks of ``encoder``
    (default: the cache's) too, from the photos. ``embeddings``: a GloVe text file whose
    vectors start the word embedding. Under torchrun every process calls this."""
    train_config = train_config or TrainConfig()
    seed_everything(train_config.seed)
    paths = RunPaths(Path(out))
    _, dataset, splits, vocab, cache = _load_run(data, out, log)
    overrides = {"decoder": ModelConfig.decoder, **(model_overrides or {})}
    vectors, width = word_vectors(embeddings, overrides, paths, resume, vocab, train_config, log)
    encoder_name = encoder or cache.encoder
    model_config = run_model_config(
        overrides, len(vocab), cache, paths.features, encoder_name, fine_tune_encoder, width
    )
    fine_tuned = build_fine_tuned_encoder(model_config) if fine_tune_encoder else None
    if fine_tune_encoder:
        log(
            f"fine-tuning the last {fine_tune_encoder} block(s) of {encoder_name} from the "
            f"photos (encoder lr {train_config.encoder_lr:g}, augment "
            f"{'on' if train_config.augment else 'off'})"
        )
    return train_model(
        cache, dataset, splits, vocab, paths.out, model_config, train_config,
        device=get_device(device), resume=resume, on_epoch=on_epoch, log=log, context=context,
        embeddings=vectors, encoder=fine_tuned,
    )  # fmt: skip


def launch_training(
    nproc: int,
    data: str | Path,
    out: str | Path,
    train_config: TrainConfig | None = None,
    model_overrides: dict | None = None,
    log: Log = print,
    **options,
) -> TrainResult:
    """:func:`train_step` in ``nproc`` processes under torchrun (DDP), started from Python with
    their output streamed to ``log``; they read their arguments from a JSON file this writes."""
    request = {
        "data": str(data),
        "out": str(out),
        "train_config": (train_config or TrainConfig()).to_dict(),
        "model_overrides": model_overrides or {},
        **{key: str(value) if isinstance(value, Path) else value for key, value in options.items()},
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.json"
        write_json(path, request)
        launch(nproc, [str(path)], log=log, module="storyteller.pipeline")
    return TrainResult.from_run(out)


def _train_from_file(path: str) -> int:
    """One of :func:`launch_training`'s processes: train_step with the arguments in ``path``."""
    request = json.loads(Path(path).read_text())
    request["train_config"] = TrainConfig.from_dict(request["train_config"])
    with session(request.pop("device", None)) as (context, device):
        try:
            log = print if context.is_main else lambda _: None
            train_step(**request, device=device, context=context, log=log)
        except StorytellerError as exc:
            print(f"error: {exc}", flush=True)
            return 1
    return 0


@writes_run_folder
def evaluate_step(
    data: str | Path | None,
    out: str | Path = DEFAULT_OUT,
    beam_sizes: tuple[int, ...] = (1, 5),
    length_penalty: float = Strategy.length_penalty,
    meteor: str = "auto",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    log: Log = print,
    revision: str | None = None,
) -> dict[str, dict]:
    """Score the best checkpoint (or a model folder, or a Hub model id, with its own
    vocabulary) on the test split, greedy and beam, plus the baseline."""
    from .evaluation.evaluate import baseline_scores, evaluate_model
    from .evaluation.provenance import evaluation_provenance

    paths = RunPaths(Path(out))
    data_dir, dataset, splits, vocab, cache = _load_run(data, out, log)
    # the images training used and evaluation scores: those readable at extraction
    trained, tested = ([n for n in splits[split] if n in cache] for split in ("train", "test"))
    checkpoint = checkpoint or paths.checkpoint
    model, vocab, state, cache = _model_to_score(
        checkpoint, revision, vocab, cache, dataset, tested, get_device(device)
    )
    provenance = evaluation_provenance(
        state, checkpoint, model.config, dataset, data_dir, splits.get("seed")
    )
    results = evaluate_model(
        model, vocab, cache, dataset, splits["test"], paths.out, beam_sizes, length_penalty,
        meteor=meteor, log=log, provenance=provenance,
    )  # fmt: skip
    baseline = baseline_scores(dataset, trained, tested)
    write_json(paths.baseline, baseline)
    log(
        f"baseline (most frequent training caption '{baseline['caption']}'): BLEU-4 {baseline['bleu4']:.4f}"
    )
    return results


def _model_to_score(checkpoint, revision, vocab, cache, dataset, tested, device):
    """The model a checkpoint file, model folder or Hub id holds, its vocabulary and training
    info, and the features it reads: the cache's, or the test photos through its fine-tuned
    encoder."""
    from .serving.hub import is_checkpoint_file, load_model_folder, resolve_model

    if is_checkpoint_file(checkpoint):
        model, state = load_model(checkpoint, vocab, device)
        fine_tuned = checkpoint_encoder(model.config, state, checkpoint)
    else:
        loaded = load_model_folder(resolve_model(checkpoint, revision), device)
        model, vocab, fine_tuned, state = loaded.model, loaded.vocab, loaded.encoder, loaded.info
    if fine_tuned is not None:
        extractor = FeatureExtractor(model.config.encoder, device, fine_tuned, model.feature_layout)
        cache = encode_images(extractor, dataset.image_dir, tested)
    elif model.config.encoder != cache.encoder:
        raise StorytellerError(
            f"the checkpoint was trained on {model.config.encoder} features, the cache holds "
            f"{cache.encoder}"
        )
    return model, vocab, state, cache


@writes_run_folder
def run_all(
    data: str | Path | None = None,
    out: str | Path = DEFAULT_OUT,
    encoder: str | None = None,
    train_config: TrainConfig | None = None,
    model_overrides: dict | None = None,
    threshold: int = MIN_WORD_COUNT,
    beam_sizes: tuple[int, ...] = (1, 5),
    length_penalty: float = Strategy.length_penalty,
    meteor: str = "auto",
    device: str | torch.device | None = None,
    resume: bool = True,
    log: Log = print,
    context: DistContext = SINGLE_PROCESS,
    layout: str | None = None,
    embeddings: str | Path | None = None,
    fine_tune_encoder: int = 0,
) -> dict[str, dict] | None:
    """Every step in order into one folder; safe to re-run (finished steps are reused). Under
    torchrun rank 0 extracts features, builds the vocabulary and evaluates; every process
    trains."""
    train_config = train_config or TrainConfig()
    started = time.perf_counter()
    seed_everything(train_config.seed)
    if layout is None:  # what the decoder reads; a grid cache serves a pooled decoder too
        decoder = decoder_class((model_overrides or {}).get("decoder", ModelConfig.decoder))
        layout = "grid" if decoder.feature_layout == "grid" else None
    if context.is_main:
        data_dir = resolve_data(data, log=log, out=out)
        features_step(data_dir, out, encoder, device=device, log=log, layout=layout)
        vocab_step(data_dir, out, threshold, seed=train_config.seed, log=log)
    context.barrier()
    if not context.is_main:
        data_dir = resolve_data(data, log=lambda _: None, out=out)  # ready: rank 0 drew any
    train_step(
        data_dir, out, train_config, model_overrides, resume=resume, device=device, log=log,
        context=context, embeddings=embeddings, fine_tune_encoder=fine_tune_encoder,
    )  # fmt: skip
    if not context.is_main:
        return None
    results = evaluate_step(
        data_dir, out, beam_sizes, length_penalty, meteor, device=device, log=log
    )
    log(f"run-all finished in {time.perf_counter() - started:.0f}s; results in {out}")
    return results


if __name__ == "__main__":  # a process of launch_training, under torchrun
    sys.exit(_train_from_file(sys.argv[1]))

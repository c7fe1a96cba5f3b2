"""The training loop: any registered decoder, cross-entropy (padding ignored) plus the
decoder's extra loss terms, gradient clipping, its own schedule, early stopping, best and last
checkpoints, resume; on the CPU, one GPU (AMP), ``nn.DataParallel`` or DDP under torchrun."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..config import ModelConfig, TrainConfig
from ..data.captions import CaptionDataset
from ..data.embeddings import WordVectors
from ..data.vocab import PAD_ID, Vocabulary
from ..errors import StorytellerError
from ..features.cache_format import FeatureCache
from ..figures.plots import plot_loss_curves
from ..models import decoder_class, resolve_config
from ..models.checkpoint import check_progress, read_checkpoint, save_checkpoint
from ..progress import Log, progress
from ..run_folder import BEST_CHECKPOINT, HISTORY_FILE, LAST_CHECKPOINT, LOSS_CURVE_FILE
from ..runtime import autocast, get_device, write_json
from .data import is_sample, make_loaders, training_data
from .distributed import SINGLE_PROCESS, DistContext
from .finetune import FineTunedEncoder
from .state import TrainingState, load_word_vectors, start_run


@dataclass
class TrainResult:
    best_checkpoint: Path
    history: list[dict]
    best_val_loss: float
    epochs_run: int
    stopped_early: bool

    @classmethod
    def from_run(cls, out_dir: str | Path) -> TrainResult:
        """The result of a finished run, read back from its folder (e.g. after a torchrun)."""
        out_dir = Path(out_dir)
        best_path = out_dir / BEST_CHECKPOINT
        if not best_path.is_file():
            raise StorytellerError(f"training finished without a best checkpoint in {out_dir}")
        state = read_checkpoint(out_dir / LAST_CHECKPOINT)
        check_progress(state, out_dir / LAST_CHECKPOINT)
        history = list(state["history"])
        return cls(best_path, history, state["best_val_loss"], len(history), state["stopped_early"])


def parallelize(
    model: nn.Module,
    train_config: TrainConfig,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    log: Log = print,
) -> nn.Module:
    """Wrap the model for several devices: DDP under torchrun, else ``nn.DataParallel`` when
    one process sees several GPUs (and ``train_config.data_parallel``), else the model itself."""
    if context.enabled:
        log(f"DistributedDataParallel over {context.world_size} processes ({device.type})")
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if train_config.data_parallel and device.type == "cuda" and torch.cuda.device_count() > 1:
        log(f"using nn.DataParallel over {torch.cuda.device_count()} GPUs")
        return nn.DataParallel(model)
    return model


class LossTerms(NamedTuple):
    """One batch's losses: ``total`` is minimised, the others are reported."""

    total: torch.Tensor  # cross_entropy + the extra terms
    cross_entropy: torch.Tensor  # next-word cross-entropy, padding ignored
    extra: dict[str, torch.Tensor]  # the decoder's own terms, each a scalar


BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], LossTerms]


def mean_extra_losses(extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each extra loss term as one float32 scalar. ``nn.DataParallel`` gathers one scalar per
    GPU into a vector: their mean is the batch's term (shares weighed equally, not by size).
    Under DDP each process keeps its own, and DDP's gradient averaging averages it."""
    return {name: value.float().mean() for name, value in extra.items()}


def make_batch_loss(
    device: torch.device, use_amp: bool, pad_id: int, label_smoothing: float
) -> BatchLoss:
    """``batch_loss(network, features, captions)``: next-word cross-entropy, padding ignored,
    plus the decoder's extra loss terms, in float16 autocast on a GPU (a no-op on the CPU)."""
    loss_fn = nn.CrossEntropyLoss(ignore_index=pad_id, label_smoothing=label_smoothing)

    def batch_loss(network: nn.Module, features: torch.Tensor, captions: torch.Tensor):
        # features: (B, ...) as the decoder reads them, or photos (B, 3, H, W) when the
        # network is an EncoderDecoder; captions: (B, T), or (B, K, T) K per photo
        features = features.to(device, non_blocking=True)
        captions = captions.to(device, non_blocking=True)
        inputs, targets = captions[..., :-1], captions[..., 1:]  # (..., T-1) each: next word
        with autocast(device, use_amp):
            logits, extra = network(features, inputs)  # (B*K, T-1, V), {name: scalar}
        cross_entropy = loss_fn(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        extra = mean_extra_losses(extra)
        total = cross_entropy
        for value in extra.values():
            total = total + value
        return LossTerms(total, cross_entropy, extra)

    return batch_loss


def train_epoch(
    network: nn.Module,
    state: TrainingState,
    loader: DataLoader,
    batch_loss: BatchLoss,
    train_config: TrainConfig,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    desc: str = "train",
) -> tuple[float, dict[str, float]]:
    """One pass over the training data. Returns the mean cross-entropy per caption over every
    process, and the mean of each extra term (``{}`` for the LSTM)."""
    network.train()
    total, count = 0.0, 0
    extra_totals: dict[str, float] = {}
    # lines=0: without a terminal the epoch line train_model logs is the record
    bar = progress(
        loader, desc=desc, leave=False, unit="batch", disable=not context.is_main, lines=0
    )
    for features, captions in bar:
        loss = batch_loss(network, features, captions)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss.total).backward()
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(network.parameters(), train_config.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.end_batch()
        size = captions[..., 0].numel()  # captions in the batch: B, or B*K with photos
        total, count = total + loss.cross_entropy.item() * size, count + size
        for name, value in loss.extra.items():
            extra_totals[name] = extra_totals.get(name, 0.0) + value.item() * size
        bar.set_postfix(loss=f"{total / count:.3f}")
    names = list(extra_totals)  # the same decoder, so the same names, in every process
    total, count, *extras = context.sum([total, count, *extra_totals.values()], device)
    return total / count, {name: value / count for name, value in zip(names, extras, strict=True)}


def validate(
    network: nn.Module,
    loader: DataLoader,
    batch_loss: BatchLoss,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
) -> float:
    """Mean validation cross-entropy per caption over every process (extra terms left out, so
    perplexity means the same for every decoder). Under DDP the bare model runs: processes may
    see different numbers of batches, and the wrapper's forward would wait for the others."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    network.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for features, captions in loader:
            size = captions[..., 0].numel()  # B, or B*K with photos
            total += batch_loss(network, features, captions).cross_entropy.item() * size
            count += size
    total, count = context.sum([total, count], device)
    return total / count


def check_finite(
    train_loss: float, val_loss: float, epoch: int, last_path: Path, train_config: TrainConfig
) -> None:
    """Stop a run whose loss is NaN or infinite, before the epoch is saved: its weights are
    lost, and a best checkpoint could never be chosen after it (every process sees the same
    summed losses, so all stop together)."""
    if math.isfinite(train_loss) and math.isfinite(val_loss):
        return
    kept = f"{last_path} still holds epoch {epoch - 1}" if epoch > 1 else "no checkpoint written"
    raise StorytellerError(
        f"training diverged at epoch {epoch}: train loss {train_loss:.4g}, validation loss "
        f"{val_loss:.4g}; this epoch was not saved ({kept}): train again with --no-resume "
        f"and a lower --lr (it was {train_config.lr:g})"
    )


def _check_fits(
    model_config: ModelConfig,
    vocab: Vocabulary,
    cache: FeatureCache,
    encoder: FineTunedEncoder | None,
) -> None:
    """Refuse, in one line, a model config that does not fit the data it would train on."""
    feature_dim = cache.dim if encoder is None else encoder.backbone.dim
    if model_config.vocab_size != len(vocab) or model_config.feature_dim != feature_dim:
        raise StorytellerError(
            f"model config (vocab {model_config.vocab_size}, features {model_config.feature_dim}) "
            f"does not match the data (vocab {len(vocab)}, features {feature_dim})"
        )
    if encoder is not None and model_config.fine_tuned_blocks != encoder.num_blocks:
        raise StorytellerError(
            f"model config says {model_config.fine_tuned_blocks} fine-tuned encoder block(s), "
            f"the encoder trains {encoder.num_blocks}"
        )
    decoder = decoder_class(model_config.decoder)
    layout = decoder.feature_layout
    if encoder is not None and encoder.backbone.layout != layout:
        raise StorytellerError(
            f"the '{model_config.decoder}' decoder reads {layout} features, the encoder gives "
            f"{encoder.backbone.layout} ones"
        )
    if encoder is None and layout == "grid" and cache.layout != "grid":
        raise StorytellerError(
            f"the '{model_config.decoder}' decoder reads the CNN's feature grid, but the "
            f"feature cache holds {cache.layout} vectors: extract features with --layout grid "
            "(one grid cache serves every decoder)"
        )
    if layout == "grid":  # a grid too large for the model: one line now, not at the first batch
        grid, source = (
            (cache.grid, "the cache")
            if encoder is None
            else (encoder.backbone.grid, f"the {model_config.encoder} encoder")
        )
        options = resolve_config(model_config).decoder_options
        decoder.with_grid({"decoder_options": options}, grid, source)


def _run_epoch(
    state: TrainingState,
    network: nn.Module,
    loaders: tuple[DataLoader, DataLoader],
    batch_loss: BatchLoss,
    train_config: TrainConfig,
    vocab: Vocabulary,
    device: torch.device,
    context: DistContext,
    out_dir: Path,
    log: Log,
) -> dict:
    """Train one epoch and validate (a NaN or infinite loss stops the run first); then rank 0
    saves its checkpoints, history and loss curves and logs its line. Returns its record."""
    if isinstance(loaders[0].sampler, DistributedSampler):
        loaders[0].sampler.set_epoch(state.epoch)  # a new order every epoch, the same on resume
    started = time.perf_counter()
    desc = f"epoch {state.epoch + 1}/{train_config.num_epochs}"
    train_loss, train_extra = train_epoch(
        network, state, loaders[0], batch_loss, train_config, device, context, desc
    )
    val_loss = validate(network, loaders[1], batch_loss, device, context)
    check_finite(train_loss, val_loss, state.epoch + 1, out_dir / LAST_CHECKPOINT, train_config)
    seconds = time.perf_counter() - started
    record = state.end_epoch(train_loss, val_loss, seconds, train_config.patience, train_extra)
    extra = state.checkpoint_extra(train_config, vocab, device, context)
    if not context.is_main:
        return record
    if record["best"]:
        save_checkpoint(out_dir / BEST_CHECKPOINT, state.model, **extra)
    # last.pth after best_model.pth: a resume never skips a best epoch
    save_checkpoint(out_dir / LAST_CHECKPOINT, state.model, **extra)
    write_json(out_dir / HISTORY_FILE, state.history)
    plot_loss_curves(state.history, out_dir / LOSS_CURVE_FILE, train_config.smoke)
    log(
        f"epoch {record['epoch']:>3}/{train_config.num_epochs}  train {record['train_loss']:.4f}  "
        f"val {record['val_loss']:.4f}  ppl {record['val_perplexity']:.1f}  lr {record['lr']:.2g}  "
        f"{record['seconds']:.1f}s" + ("  *best*" if record["best"] else "")
    )
    return record


def train_model(
    cache: FeatureCache,
    dataset: CaptionDataset,
    splits: dict[str, list[str]],
    vocab: Vocabulary,
    out_dir: str | Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    device: torch.device | None = None,
    resume: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    log: Log = print,
    context: DistContext = SINGLE_PROCESS,
    embeddings: WordVectors | None = None,
    encoder: FineTunedEncoder | None = None,
) -> TrainResult:
    """Train on ``splits["train"]``, keep the model with the best loss on ``splits["val"]``
    (``best_model.pth``; ``last.pth`` after every epoch, which ``resume`` continues from).
    Under torchrun rank 0 alone writes, logs and calls ``on_epoch``. ``encoder``: fine-tune it
    with the decoder from the photos."""
    out_dir = Path(out_dir)
    train_config, device = train_config or TrainConfig(), device or get_device()
    log = log if context.is_main else (lambda _: None)  # rank 0 alone logs and writes
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    feature_dim = cache.dim if encoder is None else encoder.backbone.dim
    model_config = model_config or ModelConfig(len(vocab), feature_dim, encoder=cache.encoder)
    data = training_data(cache, dataset, splits, vocab, model_config, train_config, encoder)
    state = TrainingState.create(model_config, train_config, device, encoder)
    state.trained_on_sample = is_sample(dataset)
    _check_fits(model_config, vocab, cache, encoder)
    if embeddings is not None:
        load_word_vectors(state, embeddings)
    start_run(state, out_dir, resume, train_config.seed, vocab, device, context, log)
    network = parallelize(state.network(), train_config, device, context, log)
    loaders = make_loaders(data, train_config, device, state.generator, context)
    batch_loss = make_batch_loss(
        device, state.scaler.is_enabled(), PAD_ID, train_config.label_smoothing
    )
    while state.epoch < train_config.num_epochs and not state.stopped_early:
        record = _run_epoch(
            state, network, loaders, batch_loss, train_config, vocab, device, context, out_dir, log
        )
        if on_epoch is not None and context.is_main:
            on_epoch(record)
        if state.stopped_early:
            log(f"early stopping: no better validation loss for {state.bad_epochs} epoch(s)")
    context.barrier()  # every process sees rank 0's files before it returns
    return TrainResult.from_run(out_dir)

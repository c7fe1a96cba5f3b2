"""Training the captioner on cached features: Adam, cross-entropy that ignores padding,
gradient clipping, LR on plateau, early stopping, best + last checkpoints, resume.

Any decoder of :mod:`storyteller.models` trains here: the model is built from its config by
the registry, its optimiser comes from its ``configure_optimizer``, and the extra loss terms
its ``forward`` returns beside the logits are added to the cross-entropy (validation reports
the cross-entropy alone, so its perplexity means the same for every decoder).

Runs on the CPU, one GPU (mixed precision), several GPUs in one process (``nn.DataParallel``)
or one process per GPU under torchrun (``DistributedDataParallel``, see
:mod:`storyteller.training.distributed`) with the same code. The loop is in small parts:
:class:`TrainingState` (everything that resumes, saved and restored as one object),
:func:`train_epoch`, :func:`validate` and :func:`train_model`, which fits.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    SequentialSampler,
)

from ..config import ModelConfig, TrainConfig
from ..data.captions import CaptionDataset
from ..data.embeddings import WordVectors
from ..data.vocab import PAD_ID, Vocabulary
from ..errors import StorytellerError
from ..features.cache_format import FeatureCache
from ..features.encoders import get_encoder_spec
from ..features.finetune import (
    ENCODER_WEIGHTS,
    EncoderDecoder,
    FineTunedEncoder,
    ImageCaptions,
    check_encoder_weights,
    collate_images,
    image_transform,
)
from ..figures.plots import plot_loss_curves
from ..models import CaptionDecoder, build_model, resolve_config
from ..models.checkpoint import (
    check_model_config,
    check_progress,
    check_training_state,
    read_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from ..progress import progress
from ..run_folder import (
    BEST_CHECKPOINT,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    LOSS_CURVE_FILE,
    TRAINING_FILES,
)
from ..runtime import autocast, get_device, write_json
from .distributed import SINGLE_PROCESS, DistContext


class CaptionPairs(Dataset):
    """One item per (image, caption) pair: (feature row, caption ids)."""

    def __init__(
        self,
        cache: FeatureCache,
        dataset: CaptionDataset,
        images: list[str],
        vocab: Vocabulary,
        max_length: int,
    ):
        self.cache = cache
        self.items: list[tuple[int, torch.Tensor]] = []
        for name in images:
            if name not in cache:  # unreadable image: already reported at extraction
                continue
            row = cache.index[name]
            for caption in dataset.captions[name]:
                self.items.append((row, torch.tensor(vocab.encode(caption, max_length))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return self.items[i]


def make_collate(cache: FeatureCache, layout: str = "pooled") -> Callable:
    """Batches of (features, captions); features in ``layout``: (B, feature_dim) pooled or
    (B, h*w, feature_dim) grid, read by :meth:`FeatureCache.batch` (a grid from disk)."""

    def collate(batch):
        rows = torch.tensor([row for row, _ in batch])
        features = cache.batch(rows, layout)  # (B, feature_dim) or (B, h*w, feature_dim)
        captions = nn.utils.rnn.pad_sequence(
            [ids for _, ids in batch], batch_first=True, padding_value=PAD_ID
        )  # (B, T)
        return features, captions

    return collate


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


def _describe_mismatch(saved: dict, current: dict) -> str:
    diffs = [
        f"{k}: {saved.get(k)} -> {current.get(k)}"
        for k in current
        if saved.get(k) != current.get(k)
    ]
    return ", ".join(diffs)


# --------------------------------------------------------------------------------------------
# Random states and the gradient scaler: what makes a resumed run repeat the uninterrupted one
# --------------------------------------------------------------------------------------------


def _cpu_bytes(state) -> torch.Tensor:
    """An RNG state as the CPU ``ByteTensor`` that ``set_rng_state`` demands, wherever the
    checkpoint's tensors were loaded (a state mapped onto a GPU is what broke resume on CUDA)."""
    return torch.as_tensor(state).to(device="cpu", dtype=torch.uint8)


def save_rng_states(device: torch.device, context: DistContext = SINGLE_PROCESS) -> dict:
    """The random states to store in a checkpoint (collective under torchrun: every process
    must call it).

    One process: the CPU's and, on GPUs, every visible GPU's (``nn.DataParallel`` draws
    dropout on each). Several processes: each process's CPU and own-GPU state, by rank.
    """
    states: dict = {"rng_state": torch.get_rng_state(), "world_size": context.world_size}
    if context.enabled:
        own_gpu = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        states["rank_rng_states"] = context.gather({"cpu": torch.get_rng_state(), "cuda": own_gpu})
        states["cuda_rng_states"] = []
    else:
        states["cuda_rng_states"] = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return states


def restore_rng_states(
    checkpoint: dict,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    log: Callable[[str], None] = print,
) -> None:
    """Put back the random states :func:`save_rng_states` stored, as far as this machine allows.

    CPU states always come back. GPU states come back only onto as many GPUs as wrote them; a
    checkpoint moved between a GPU and the CPU (or between process counts) resumes all the
    same, with a note that dropout draws will differ from an uninterrupted run.
    """
    saved_world = int(checkpoint.get("world_size", 1))
    if saved_world != context.world_size:
        log(
            f"note: the checkpoint was written by {saved_world} training process(es), this run "
            f"has {context.world_size}: random streams restart from the seed, so the result "
            "will not repeat an uninterrupted run exactly"
        )
        return
    if context.enabled:
        own = checkpoint["rank_rng_states"][context.rank]
        torch.set_rng_state(_cpu_bytes(own["cpu"]))
        gpu_states = [] if own.get("cuda") is None else [own["cuda"]]
        if device.type == "cuda" and gpu_states:
            torch.cuda.set_rng_state(_cpu_bytes(gpu_states[0]), device)
            return
    else:
        torch.set_rng_state(_cpu_bytes(checkpoint["rng_state"]))
        gpu_states = list(checkpoint.get("cuda_rng_states") or [])
        if device.type == "cuda" and gpu_states:
            if len(gpu_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all([_cpu_bytes(s) for s in gpu_states])
                return
            log(
                f"note: the checkpoint holds the random states of {len(gpu_states)} GPU(s) but "
                f"{torch.cuda.device_count()} are visible: GPU random states restart from the "
                "seed (dropout draws will differ from an uninterrupted run)"
            )
            return
    if device.type == "cuda" and not gpu_states:
        log(
            "note: the checkpoint was written on the CPU: the GPU's random state starts from "
            "the seed (dropout draws will differ from an uninterrupted run)"
        )
    elif device.type != "cuda" and gpu_states:
        log(
            f"note: the checkpoint was written on {len(gpu_states)} GPU(s) and resumes on the "
            "CPU: GPU random states are not used here (dropout draws will differ from an "
            "uninterrupted run)"
        )


def restore_scaler(
    scaler: torch.amp.GradScaler, saved: dict, log: Callable[[str], None] = print
) -> None:
    """Resume the mixed-precision gradient scaler. Only an enabled scaler (a GPU with AMP) has
    a state; one from a run without mixed precision (the CPU) leaves this scaler fresh, and a
    GPU run's scale is simply unused on the CPU."""
    if not scaler.is_enabled():
        return
    if not saved:
        log(
            "note: the checkpoint was trained without mixed precision: the gradient scaler starts afresh"
        )
        return
    scaler.load_state_dict(saved)


# --------------------------------------------------------------------------------------------
# Everything that resumes, as one object
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """The model, its optimiser, schedule, gradient scaler, data-order generator and the run's
    progress: saved into ``last.pth`` after every epoch and restored from it as one object."""

    model: CaptionDecoder  # the bare model; DataParallel/DDP wrap it only for the forward pass
    optimizer: torch.optim.Optimizer
    # ReduceLROnPlateau (the LSTMs): stepped once an epoch on the validation loss; any other
    # LRScheduler (the transformer's warm-up): stepped after every optimiser step.
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # one process's shuffling order (DDP's sampler is seeded instead)
    epoch: int = 0  # epochs finished
    history: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    # Where the first word embedding came from (WordVectors.provenance()), kept in every
    # checkpoint of the run, resumed ones included; None when it started random.
    embeddings: dict | None = None
    # With --fine-tune-encoder: the encoder whose last blocks train with the decoder (its
    # weights are saved in every checkpoint beside the decoder's); None for cached features.
    encoder: FineTunedEncoder | None = None

    @classmethod
    def create(
        cls,
        model_config: ModelConfig,
        train_config: TrainConfig,
        device: torch.device,
        encoder: FineTunedEncoder | None = None,
    ) -> TrainingState:
        """A fresh run: the decoder the config names, with the optimiser and schedule it asks
        for (the seed recipe's Adam, LR halved on plateau, unless it says otherwise), AMP on a
        GPU. A fine-tuned ``encoder``'s trainable blocks join the optimiser as one more group
        at ``train_config.encoder_lr``."""
        model = build_model(model_config).to(device)
        extra_groups = []
        if encoder is not None:
            encoder.to(device)
            extra_groups.append(
                {
                    "params": encoder.trainable_parameters(),
                    "lr": train_config.encoder_lr,
                    "weight_decay": train_config.weight_decay,
                }
            )
        optimizer, scheduler = model.configure_optimizer(train_config, extra_groups)
        scaler = torch.amp.GradScaler("cuda", enabled=train_config.amp and device.type == "cuda")
        generator = torch.Generator().manual_seed(train_config.seed)
        return cls(model, optimizer, scheduler, scaler, generator, encoder=encoder)

    def network(self) -> nn.Module:
        """What a training step runs: the decoder on features, or photos through the
        fine-tuned encoder into the decoder."""
        return self.model if self.encoder is None else EncoderDecoder(self.encoder, self.model)

    @property
    def schedule_per_batch(self) -> bool:
        """Whether the schedule follows optimiser steps (warm-up) rather than epochs: only
        ReduceLROnPlateau needs a validation loss, so it alone waits for the epoch's end."""
        return not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def end_batch(self) -> None:
        """After every optimiser step: a per-batch schedule moves on (a no-op for the LSTMs'
        per-epoch one, so their runs are unchanged)."""
        if self.schedule_per_batch:
            self.scheduler.step()

    def end_epoch(
        self,
        train_loss: float,
        val_loss: float,
        seconds: float,
        patience: int,
        train_extra: dict[str, float] | None = None,
    ) -> dict:
        """Record a finished epoch: schedule, best-so-far, early stopping. Returns its record.

        ``train_loss`` and ``val_loss`` are cross-entropies; ``train_extra`` the means of the
        decoder's extra loss terms (recorded as ``train_<name>``; none for the LSTM)."""
        if not self.schedule_per_batch:
            self.scheduler.step(val_loss)
        improved = val_loss < self.best_val - 1e-4
        self.best_val = min(self.best_val, val_loss)
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.stopped_early = self.bad_epochs >= patience
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "train_loss": round(train_loss, 5),
            **{f"train_{name}": round(value, 5) for name, value in (train_extra or {}).items()},
            "val_loss": round(val_loss, 5),
            "val_perplexity": round(math.exp(min(val_loss, 50)), 3),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 2),
            "best": improved,
        }
        self.history.append(record)
        return record

    def checkpoint_extra(
        self,
        train_config: TrainConfig,
        vocab: Vocabulary,
        device: torch.device,
        context: DistContext = SINGLE_PROCESS,
    ) -> dict:
        """What ``last.pth`` holds besides the model (collective under torchrun)."""
        return {
            "train_config": train_config.to_dict(),
            "vocab_fingerprint": vocab.fingerprint,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator_state": self.generator.get_state(),
            **save_rng_states(device, context),
            "epoch": self.epoch,
            "history": self.history,
            "best_val_loss": self.best_val,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            **({"embeddings": self.embeddings} if self.embeddings else {}),
            **self.encoder_checkpoint(),
        }

    def encoder_checkpoint(self) -> dict:
        """The fine-tuned encoder's weights for a checkpoint (``best_model.pth`` too: the
        decoder is useless without the encoder it learned with); ``{}`` when it is frozen."""
        if self.encoder is None:
            return {}
        return {ENCODER_WEIGHTS: self.encoder.backbone.state_dict()}

    def restore(
        self,
        checkpoint: dict,
        device: torch.device,
        context: DistContext = SINGLE_PROCESS,
        log: Callable[[str], None] = print,
    ) -> None:
        """Continue from ``checkpoint`` (read onto the CPU; weights and optimiser moments are
        copied to this run's device by ``load_state_dict``)."""
        self.model.load_state_dict(strip_module_prefix(checkpoint["model"]))
        if self.encoder is not None:
            self.encoder.backbone.load_state_dict(checkpoint[ENCODER_WEIGHTS])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        restore_scaler(self.scaler, checkpoint.get("scaler") or {}, log)
        self.generator.set_state(_cpu_bytes(checkpoint["generator_state"]))
        restore_rng_states(checkpoint, device, context, log)
        self.history = list(checkpoint["history"])
        self.best_val = checkpoint["best_val_loss"]
        self.epoch = checkpoint["epoch"]
        self.bad_epochs = checkpoint["bad_epochs"]
        self.stopped_early = checkpoint["stopped_early"]
        self.embeddings = checkpoint.get("embeddings") or self.embeddings


def load_word_vectors(state: TrainingState, embeddings: WordVectors) -> None:
    """Copy pretrained vectors into the fresh model's word embedding and record their
    provenance; their shape must be the embedding's (the width was set from the file)."""
    weight = state.model.word_embedding().weight  # (vocab_size, width)
    if tuple(embeddings.matrix.shape) != tuple(weight.shape):
        raise StorytellerError(
            f"embeddings {embeddings.source} are {tuple(embeddings.matrix.shape)} but the "
            f"model's word embedding is {tuple(weight.shape)} (vocabulary x width)"
        )
    with torch.no_grad():
        weight.copy_(embeddings.matrix)
    state.embeddings = embeddings.provenance()


def _check_resumable(checkpoint: dict, path: Path, state: TrainingState, vocab) -> None:
    """Refuse to resume a different model, or from a file that does not hold what a resume
    needs (:func:`~storyteller.models.checkpoint.check_training_state`: checked before anything
    is loaded). Both configs are compared as their models store them (defaults filled in),
    so a file written before a field existed still resumes."""
    saved = check_model_config(checkpoint, path).to_dict()
    current = resolve_config(state.model.config).to_dict()
    if saved != current:
        mismatch = _describe_mismatch(saved, current)
        raise StorytellerError(
            f"{path} holds a different architecture ({mismatch}); "
            "use another output folder or pass --no-resume"
        )
    if checkpoint.get("vocab_fingerprint") != vocab.fingerprint:
        raise StorytellerError(f"{path} was trained with another vocabulary; use --no-resume")
    check_training_state(checkpoint, path, state.model, state.optimizer, state.scheduler)
    if state.encoder is not None:
        check_encoder_weights(
            state.encoder.backbone,
            checkpoint.get(ENCODER_WEIGHTS),
            path,
            state.model.config.encoder,
        )


# --------------------------------------------------------------------------------------------
# The parts of the loop
# --------------------------------------------------------------------------------------------


def parallelize(
    model: nn.Module,
    train_config: TrainConfig,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    log: Callable[[str], None] = print,
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


def make_loaders(
    train_set: Dataset,
    val_set: Dataset,
    collate: Callable,
    train_config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    context: DistContext = SINGLE_PROCESS,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Training batches (shuffled; under DDP each process gets its share of every global
    batch of ``batch_size`` items, by default ``train_config.batch_size``) and validation
    batches (the one-process batches dealt out to the processes in turn, so the summed loss
    equals the one-process loss), made by ``collate``."""
    batch_size = batch_size or train_config.batch_size
    workers = train_config.num_workers if num_workers is None else num_workers
    options = {"collate_fn": collate, "num_workers": workers, "pin_memory": device.type == "cuda"}
    if context.enabled:
        per_process = batch_size // context.world_size
        if per_process < 1:
            raise StorytellerError(
                f"batch size {batch_size} is smaller than the number of "
                f"processes ({context.world_size})"
            )
        sampler = DistributedSampler(
            train_set, context.world_size, context.rank, shuffle=True, seed=train_config.seed
        )
        train_loader = DataLoader(train_set, per_process, sampler=sampler, **options)
    else:
        train_loader = DataLoader(
            train_set, batch_size, shuffle=True, generator=generator, **options
        )
    val_batches = list(BatchSampler(SequentialSampler(val_set), batch_size * 2, drop_last=False))
    val_loader = DataLoader(
        val_set, batch_sampler=val_batches[context.rank :: context.world_size], **options
    )
    return train_loader, val_loader


class LossTerms(NamedTuple):
    """One batch's losses: ``total`` is minimised, the others are reported."""

    total: torch.Tensor  # cross_entropy + the extra terms
    cross_entropy: torch.Tensor  # next-word cross-entropy, padding ignored
    extra: dict[str, torch.Tensor]  # the decoder's own terms, each a scalar


BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], LossTerms]


def mean_extra_losses(extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each extra loss term as one float32 scalar.

    A decoder returns scalars already averaged over its batch. ``nn.DataParallel`` gathers the
    replicas' scalars into a vector, one per GPU, and their mean is the term for the whole
    batch (exact when the GPUs got equal shares; a last batch that does not split evenly
    weighs its shares equally rather than by size). Under DDP each process keeps its own
    scalar, and DDP's averaging of the gradients averages the term, as it does the
    cross-entropy."""
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
    """One pass over the training data, minimising cross-entropy plus the decoder's extra
    terms. Returns the mean cross-entropy per caption over every process, and the mean of
    each extra term (``{}`` for the LSTM)."""
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
    """Mean validation cross-entropy per caption over every process (the decoder's extra terms
    left out, so perplexity means the same for every decoder), without a graph (no memory
    blow-up).

    Under DDP the bare model runs: processes may see different numbers of batches, and the
    wrapper's forward would wait for the others."""
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


def discard_earlier_run(out_dir: Path, log: Callable[[str], None] = print) -> None:
    """Remove an earlier run's checkpoints and curves before a fresh run trains, so none of
    them passes for this run's if it fails before writing its own; said in one line."""
    found = [name for name in TRAINING_FILES if (out_dir / name).is_file()]
    for name in found:
        (out_dir / name).unlink()
    if found:
        log(f"--no-resume: removed the earlier run's {', '.join(found)} from {out_dir}")


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


def _quiet(_: str) -> None:
    pass


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
    log: Callable[[str], None] = print,
    context: DistContext = SINGLE_PROCESS,
    embeddings: WordVectors | None = None,
    encoder: FineTunedEncoder | None = None,
) -> TrainResult:
    """Train on ``splits["train"]``, select by loss on ``splits["val"]``, write checkpoints.

    ``out_dir/last.pth`` is written after every epoch (everything needed to resume);
    ``out_dir/best_model.pth`` whenever the validation loss improves. With ``resume`` a run
    that was interrupted continues from ``last.pth``; its architecture must match. Without it,
    an earlier run's files are removed first (:func:`discard_earlier_run`). A NaN or infinite
    loss ends the run before that epoch is saved (:func:`check_finite`). Under
    torchrun (``context``) every process trains and rank 0 alone writes, logs and calls
    ``on_epoch``. ``embeddings``: pretrained word vectors the fresh model starts from (a
    resumed run continues from its checkpoint's learned ones). ``encoder``: fine-tune it
    (``ModelConfig.fine_tuned_blocks`` of its blocks) with the decoder from the photos in
    ``dataset.image_dir``; the cache then only says which photos were readable.
    """
    out_dir = Path(out_dir)
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        log = _quiet
    train_config = train_config or TrainConfig()
    device = device or get_device()
    feature_dim = cache.dim if encoder is None else encoder.backbone.dim
    model_config = model_config or ModelConfig(
        vocab_size=len(vocab), feature_dim=feature_dim, encoder=cache.encoder
    )
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
    if encoder is None:
        train_set = CaptionPairs(cache, dataset, splits["train"], vocab, train_config.max_length)
        val_set = CaptionPairs(cache, dataset, splits["val"], vocab, train_config.max_length)
    else:
        train_set, val_set = (
            ImageCaptions(
                dataset,
                splits[split],
                vocab,
                train_config.max_length,
                image_transform(
                    get_encoder_spec(model_config.encoder).preprocessing,
                    augment=train_config.augment and split == "train",
                ),
                keep=cache.__contains__,  # unreadable at extraction: left out, as cached
            )
            for split in ("train", "val")
        )
    if not len(train_set) or not len(val_set):
        raise StorytellerError("the train and validation splits must both hold captioned images")

    state = TrainingState.create(model_config, train_config, device, encoder)
    if embeddings is not None:
        load_word_vectors(state, embeddings)
    layout = state.model.feature_layout
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
        type(state.model).with_grid(
            {"decoder_options": state.model.config.decoder_options}, grid, source
        )
    if context.enabled:  # the same weights everywhere (DDP copies rank 0's), own dropout draws
        torch.manual_seed(train_config.seed + context.rank)
    last_path, best_path = out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT
    if resume and last_path.is_file():
        # Onto the CPU: RNG states must stay there; load_state_dict copies the rest over.
        checkpoint = read_checkpoint(last_path, map_location="cpu")
        _check_resumable(checkpoint, last_path, state, vocab)
        state.restore(checkpoint, device, context, log)
        log(
            f"resuming from {last_path}: {state.epoch} epoch(s) done, "
            f"best val loss {state.best_val:.4f}"
        )
    elif not resume and context.is_main:
        discard_earlier_run(out_dir, log)

    network = parallelize(state.network(), train_config, device, context, log)
    if encoder is None:
        train_loader, val_loader = make_loaders(
            train_set, val_set, make_collate(cache, layout), train_config, device,
            state.generator, context,
        )  # fmt: skip
    else:  # batch_size counts captions: as many per step as the cached path, K per photo
        train_loader, val_loader = make_loaders(
            train_set,
            val_set,
            collate_images,
            train_config,
            device,
            state.generator,
            context,
            batch_size=max(1, train_config.batch_size // train_set.per_image),
            num_workers=train_config.num_workers or min(4, os.cpu_count() or 1),
        )
    batch_loss = make_batch_loss(
        device, state.scaler.is_enabled(), PAD_ID, train_config.label_smoothing
    )
    for epoch in range(state.epoch, train_config.num_epochs):
        if state.stopped_early:
            break
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a new order every epoch, the same on resume
        started = time.perf_counter()
        desc = f"epoch {epoch + 1}/{train_config.num_epochs}"
        train_loss, train_extra = train_epoch(
            network, state, train_loader, batch_loss, train_config, device, context, desc
        )
        val_loss = validate(network, val_loader, batch_loss, device, context)
        check_finite(train_loss, val_loss, epoch + 1, last_path, train_config)
        record = state.end_epoch(
            train_loss, val_loss, time.perf_counter() - started, train_config.patience, train_extra
        )
        extra = state.checkpoint_extra(train_config, vocab, device, context)
        if context.is_main:
            if record["best"]:
                save_checkpoint(best_path, state.model, **extra)
            save_checkpoint(last_path, state.model, **extra)  # after best: resume never skips one
            write_json(out_dir / HISTORY_FILE, state.history)
            plot_loss_curves(state.history, out_dir / LOSS_CURVE_FILE, train_config.smoke)
            log(
                f"epoch {record['epoch']:>3}/{train_config.num_epochs}  train {train_loss:.4f}  "
                f"val {val_loss:.4f}  ppl {record['val_perplexity']:.1f}  lr {record['lr']:.2g}  "
                f"{record['seconds']:.1f}s" + ("  *best*" if record["best"] else "")
            )
            if on_epoch is not None:
                on_epoch(record)
        if state.stopped_early:
            log(f"early stopping: no better validation loss for {state.bad_epochs} epoch(s)")

    context.barrier()  # every process sees rank 0's files before it returns
    if not best_path.is_file():
        raise StorytellerError(f"training finished without a best checkpoint in {out_dir}")
    return TrainResult(
        best_path, state.history, state.best_val, len(state.history), state.stopped_early
    )

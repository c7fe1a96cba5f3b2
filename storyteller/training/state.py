"""Everything a training run resumes from, as one object: the model, its optimiser, schedule,
gradient scaler, data order and random states, and the run's progress (``last.pth``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..data.embeddings import WordVectors
from ..data.vocab import Vocabulary
from ..errors import StorytellerError
from ..models import CaptionDecoder, build_model, resolve_config
from ..models.checkpoint import (
    check_model_config,
    check_training_state,
    read_checkpoint,
    strip_module_prefix,
)
from ..progress import Log
from ..run_folder import LAST_CHECKPOINT, TRAINING_FILES
from .distributed import SINGLE_PROCESS, DistContext
from .finetune import ENCODER_WEIGHTS, EncoderDecoder, FineTunedEncoder, check_encoder_weights


def _cpu_bytes(state) -> torch.Tensor:
    """An RNG state as the CPU ``ByteTensor`` that ``set_rng_state`` demands, wherever the
    checkpoint's tensors were loaded (a state mapped onto a GPU is refused)."""
    return torch.as_tensor(state).to(device="cpu", dtype=torch.uint8)


def save_rng_states(device: torch.device, context: DistContext = SINGLE_PROCESS) -> dict:
    """The random states a checkpoint stores (collective under torchrun). One process: the
    CPU's and every visible GPU's (``nn.DataParallel`` draws dropout on each); several: each
    process's CPU and own-GPU state, by rank."""
    states: dict = {"rng_state": torch.get_rng_state(), "world_size": context.world_size}
    if context.enabled:
        own_gpu = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        states["rank_rng_states"] = context.gather({"cpu": torch.get_rng_state(), "cuda": own_gpu})
        states["cuda_rng_states"] = []
    else:
        states["cuda_rng_states"] = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return states


def restore_rng_states(
    checkpoint: dict, device: torch.device, context: DistContext = SINGLE_PROCESS, log: Log = print
) -> None:
    """Put back the random states :func:`save_rng_states` stored, as far as this machine
    allows: GPU states only onto as many GPUs as wrote them; otherwise a note that dropout
    draws will differ from an uninterrupted run."""
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


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict, log: Log = print) -> None:
    """Resume the mixed-precision gradient scaler; only an enabled one (a GPU with AMP) has a
    state, so a CPU run's checkpoint leaves it fresh."""
    if not scaler.is_enabled():
        return
    if not saved:
        log(
            "note: the checkpoint was trained without mixed precision: the gradient scaler starts afresh"
        )
        return
    scaler.load_state_dict(saved)


@dataclass
class TrainingState:
    """Everything a run resumes from, saved into ``last.pth`` and restored from it as one."""

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
    embeddings: dict | None = None  # WordVectors.provenance() of the first embedding, if any
    encoder: FineTunedEncoder | None = None  # --fine-tune-encoder's, saved in every checkpoint
    trained_on_sample: bool = False  # the embedded drawn sample: every caption then says so

    @classmethod
    def create(
        cls,
        model_config: ModelConfig,
        train_config: TrainConfig,
        device: torch.device,
        encoder: FineTunedEncoder | None = None,
    ) -> TrainingState:
        """A fresh run: the decoder the config names with the optimiser and schedule it asks
        for; a fine-tuned ``encoder``'s blocks join at ``train_config.encoder_lr``."""
        model = build_model(model_config).to(device)
        extra_groups = []
        if encoder is not None:
            encoder.to(device)
            group = {"params": encoder.trainable_parameters(), "lr": train_config.encoder_lr}
            extra_groups.append({**group, "weight_decay": train_config.weight_decay})
        optimizer, scheduler = model.configure_optimizer(train_config, extra_groups)
        scaler = torch.amp.GradScaler("cuda", enabled=train_config.amp and device.type == "cuda")
        generator = torch.Generator().manual_seed(train_config.seed)
        return cls(model, optimizer, scheduler, scaler, generator, encoder=encoder)

    def network(self) -> nn.Module:
        """What a training step runs: the decoder, or the fine-tuned encoder into it."""
        return self.model if self.encoder is None else EncoderDecoder(self.encoder, self.model)

    @property
    def schedule_per_batch(self) -> bool:
        """Whether the schedule follows optimiser steps (warm-up) rather than epochs: only
        ReduceLROnPlateau needs a validation loss."""
        return not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def end_batch(self) -> None:
        """After every optimiser step: a per-batch schedule moves on."""
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
        """Record a finished epoch (schedule, best so far, early stopping); returns its record.
        ``train_extra``: the decoder's extra loss terms, recorded as ``train_<name>``."""
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
            "trained_on_sample": self.trained_on_sample,
            **({"embeddings": self.embeddings} if self.embeddings else {}),
            # best_model.pth too: the decoder is useless without the encoder it learned with
            **(
                {ENCODER_WEIGHTS: self.encoder.backbone.state_dict()}
                if self.encoder is not None
                else {}
            ),
        }

    def restore(
        self,
        checkpoint: dict,
        device: torch.device,
        context: DistContext = SINGLE_PROCESS,
        log: Log = print,
    ) -> None:
        """Continue from ``checkpoint``, read onto the CPU (``load_state_dict`` copies weights
        and optimiser moments to this run's device)."""
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
    """Copy pretrained vectors into the fresh model's word embedding, and record where they
    came from."""
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
    """Refuse, before anything is loaded, to resume a different model or from a file that
    lacks what a resume needs. Both configs are compared with defaults filled in, so a file
    written before a field existed still resumes."""
    saved = check_model_config(checkpoint, path).to_dict()
    current = resolve_config(state.model.config).to_dict()
    if saved != current:
        mismatch = ", ".join(
            f"{k}: {saved.get(k)} -> {current.get(k)}"
            for k in current
            if saved.get(k) != current.get(k)
        )
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


def discard_earlier_run(out_dir: Path, log: Log = print) -> None:
    """Remove an earlier run's checkpoints and curves before a fresh run, so none passes for
    this run's if it fails before writing its own."""
    found = [name for name in TRAINING_FILES if (out_dir / name).is_file()]
    for name in found:
        (out_dir / name).unlink()
    if found:
        log(f"--no-resume: removed the earlier run's {', '.join(found)} from {out_dir}")


def start_run(
    state: TrainingState,
    out_dir: Path,
    resume: bool,
    seed: int,
    vocab: Vocabulary,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    log: Log = print,
) -> None:
    """Continue from ``out_dir``'s ``last.pth`` when resuming, else remove an earlier run's
    files."""
    if context.enabled:  # the same weights everywhere (DDP copies rank 0's), own dropout draws
        torch.manual_seed(seed + context.rank)
    path = out_dir / LAST_CHECKPOINT
    if resume and path.is_file():
        # Onto the CPU: RNG states must stay there; load_state_dict copies the rest over.
        checkpoint = read_checkpoint(path, map_location="cpu")
        _check_resumable(checkpoint, path, state, vocab)
        state.restore(checkpoint, device, context, log)
        log(
            f"resuming from {path}: {state.epoch} epoch(s) done, best val loss {state.best_val:.4f}"
        )
    elif not resume and context.is_main:
        discard_earlier_run(out_dir, log)

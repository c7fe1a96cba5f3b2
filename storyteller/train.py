"""Training the captioner on cached features: Adam, cross-entropy that ignores padding,
gradient clipping, LR on plateau, early stopping, best + last checkpoints, resume.

Runs on the CPU, one GPU (mixed precision) or several (``nn.DataParallel``) with the same code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    read_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from .config import ModelConfig, TrainConfig
from .data import CaptionDataset
from .errors import StorytellerError
from .features import FeatureCache
from .model import CaptionModel
from .plots import plot_loss_curves
from .runtime import autocast, get_device, write_json
from .vocab import Vocabulary

HISTORY_FILE = "history.json"
LOSS_CURVE_FILE = "loss_curve.png"


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


def make_collate(cache: FeatureCache) -> Callable:
    def collate(batch):
        rows = torch.tensor([row for row, _ in batch])
        features = cache.features[rows]  # (B, feature_dim)
        captions = nn.utils.rnn.pad_sequence(
            [ids for _, ids in batch], batch_first=True
        )  # (B, T), 0 = <pad>
        return features, captions

    return collate


@dataclass
class TrainResult:
    best_checkpoint: Path
    history: list[dict]
    best_val_loss: float
    epochs_run: int
    stopped_early: bool


def _describe_mismatch(saved: dict, current: dict) -> str:
    diffs = [
        f"{k}: {saved.get(k)} -> {current.get(k)}"
        for k in current
        if saved.get(k) != current.get(k)
    ]
    return ", ".join(diffs)


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
) -> TrainResult:
    """Train on ``splits["train"]``, select by loss on ``splits["val"]``, write checkpoints.

    ``out_dir/last.pth`` is written after every epoch (everything needed to resume);
    ``out_dir/best_model.pth`` whenever the validation loss improves. With ``resume`` a run
    that was interrupted continues from ``last.pth``; its architecture must match.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_config = train_config or TrainConfig()
    device = device or get_device()
    model_config = model_config or ModelConfig(
        vocab_size=len(vocab), feature_dim=cache.dim, encoder=cache.encoder
    )
    if model_config.vocab_size != len(vocab) or model_config.feature_dim != cache.dim:
        raise StorytellerError(
            f"model config (vocab {model_config.vocab_size}, features {model_config.feature_dim}) "
            f"does not match the data (vocab {len(vocab)}, features {cache.dim})"
        )
    generator = torch.Generator().manual_seed(train_config.seed)
    collate = make_collate(cache)
    train_set = CaptionPairs(cache, dataset, splits["train"], vocab, train_config.max_length)
    val_set = CaptionPairs(cache, dataset, splits["val"], vocab, train_config.max_length)
    if not len(train_set) or not len(val_set):
        raise StorytellerError("the train and validation splits must both hold captioned images")
    train_loader = DataLoader(
        train_set,
        train_config.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
        num_workers=train_config.num_workers,
        pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val_set, train_config.batch_size * 2, collate_fn=collate)

    model = CaptionModel(model_config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=train_config.lr_factor, patience=train_config.lr_patience
    )
    use_amp = train_config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = nn.CrossEntropyLoss(
        ignore_index=vocab.pad_id, label_smoothing=train_config.label_smoothing
    )

    history: list[dict] = []
    start_epoch, best_val, bad_epochs, stopped_early = 0, math.inf, 0, False
    last_path, best_path = out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT
    if resume and last_path.is_file():
        state = read_checkpoint(last_path, map_location=device)
        if state["model_config"] != model_config.to_dict():
            raise StorytellerError(
                f"{last_path} holds a different architecture ({_describe_mismatch(state['model_config'], model_config.to_dict())}); "
                "use another output folder or pass --no-resume"
            )
        if state.get("vocab_fingerprint") != vocab.fingerprint:
            raise StorytellerError(
                f"{last_path} was trained with another vocabulary; use --no-resume"
            )
        model.load_state_dict(strip_module_prefix(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator_state"])
        torch.set_rng_state(state["rng_state"])  # dropout draws continue as if never stopped
        if device.type == "cuda" and state.get("cuda_rng_states"):
            torch.cuda.set_rng_state_all(state["cuda_rng_states"])
        history, best_val = list(state["history"]), state["best_val_loss"]
        start_epoch, bad_epochs, stopped_early = (
            state["epoch"],
            state["bad_epochs"],
            state["stopped_early"],
        )
        log(f"resuming from {last_path}: {start_epoch} epoch(s) done, best val loss {best_val:.4f}")

    if train_config.data_parallel and device.type == "cuda" and torch.cuda.device_count() > 1:
        log(f"using nn.DataParallel over {torch.cuda.device_count()} GPUs")
        model = nn.DataParallel(model)

    def run_batch(features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        features, captions = (
            features.to(device, non_blocking=True),
            captions.to(device, non_blocking=True),
        )
        inputs, targets = captions[:, :-1], captions[:, 1:]  # (B, T-1) each: predict the next word
        with autocast(device, use_amp):
            logits = model(features, inputs)  # (B, T-1, V)
        return loss_fn(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))

    epoch = start_epoch
    for epoch in range(start_epoch, train_config.num_epochs):
        if stopped_early:
            break
        started = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{train_config.num_epochs}",
            leave=False,
            unit="batch",
        )
        for features, captions in bar:
            loss = run_batch(features, captions)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            total, count = total + loss.item() * len(captions), count + len(captions)
            bar.set_postfix(loss=f"{total / count:.3f}")
        train_loss = total / count

        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():  # no graph kept: validation cannot run out of memory
            for features, captions in val_loader:
                total += run_batch(features, captions).item() * len(captions)
                count += len(captions)
        val_loss = total / count
        scheduler.step(val_loss)

        improved = val_loss < best_val - 1e-4
        best_val = min(best_val, val_loss)
        bad_epochs = 0 if improved else bad_epochs + 1
        stopped_early = bad_epochs >= train_config.patience
        record = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 5),
            "val_loss": round(val_loss, 5),
            "val_perplexity": round(math.exp(min(val_loss, 50)), 3),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 2),
            "best": improved,
        }
        history.append(record)
        extra = {
            "train_config": train_config.to_dict(),
            "vocab_fingerprint": vocab.fingerprint,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "generator_state": generator.get_state(),
            "rng_state": torch.get_rng_state(),
            "cuda_rng_states": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "epoch": epoch + 1,
            "history": history,
            "best_val_loss": best_val,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped_early,
        }
        if improved:
            save_checkpoint(best_path, model, **extra)
        save_checkpoint(last_path, model, **extra)  # after best: resume never skips a best save
        write_json(out_dir / HISTORY_FILE, history)
        plot_loss_curves(history, out_dir / LOSS_CURVE_FILE)
        log(
            f"epoch {epoch + 1:>3}/{train_config.num_epochs}  train {train_loss:.4f}  val {val_loss:.4f}  "
            f"ppl {record['val_perplexity']:.1f}  lr {record['lr']:.2g}  {record['seconds']:.1f}s"
            + ("  *best*" if improved else "")
        )
        if on_epoch is not None:
            on_epoch(record)
        if stopped_early:
            log(f"early stopping: no better validation loss for {bad_epochs} epoch(s)")

    if not best_path.is_file():
        raise StorytellerError(f"training finished without a best checkpoint in {out_dir}")
    return TrainResult(best_path, history, best_val, len(history), stopped_early)

"""Checkpoints as plain state_dicts plus the configs needed to rebuild the model.

Never a pickled module: a file written today still loads after the code is refactored, and it
loads with ``torch.load(..., weights_only=True)``, which executes nothing. DataParallel's
``module.`` prefix is never saved (the bare model is unwrapped first) and is stripped if an
older file has it. The model config names the decoder (``ModelConfig.decoder``) and the
registry rebuilds it; files written before there was a choice have no ``decoder`` key and
load as the ``lstm`` they are.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ModelConfig, TrainConfig
from .errors import StorytellerError
from .models import CaptionDecoder, build_model
from .runtime import torch_save_atomic, unwrap
from .vocab import Vocabulary

BEST_CHECKPOINT = "best_model.pth"
LAST_CHECKPOINT = "last.pth"


def strip_module_prefix(state_dict: dict) -> dict:
    """Remove DataParallel's ``module.`` (and torch.compile's ``_orig_mod.``) prefixes."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def save_checkpoint(path: str | Path, model: torch.nn.Module, **extra) -> Path:
    """Write ``{"model": state_dict, "model_config": ..., **extra}`` atomically."""
    bare = unwrap(model)
    payload = {"model": bare.state_dict(), "model_config": bare.config.to_dict(), **extra}
    torch_save_atomic(payload, path)
    return Path(path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict safely (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise StorytellerError(
            f"checkpoint not found: {path} (train one with `python -m storyteller train` "
            "or `python -m storyteller run-all`)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise StorytellerError(
            f"{path} is not a loadable storyteller checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "model" not in checkpoint
        or "model_config" not in checkpoint
    ):
        raise StorytellerError(f"{path} is not a storyteller checkpoint (no model/model_config)")
    return checkpoint


def load_model(
    path: str | Path, vocab: Vocabulary | None = None, device: torch.device | str = "cpu"
) -> tuple[CaptionDecoder, dict]:
    """Rebuild the model from a checkpoint alone, through the registry of decoders; check it
    matches ``vocab`` if given."""
    checkpoint = read_checkpoint(path)
    config = ModelConfig.from_dict(checkpoint["model_config"])  # no "decoder" key: "lstm"
    if vocab is not None:
        expected = checkpoint.get("vocab_fingerprint")
        if expected and expected != vocab.fingerprint:
            raise StorytellerError(
                f"{path} was trained with a different vocabulary (fingerprint {expected}, "
                f"vocab.pkl has {vocab.fingerprint}): use the vocab.pkl from the same run"
            )
        if config.vocab_size != len(vocab):
            raise StorytellerError(
                f"{path} expects {config.vocab_size} words, the vocabulary has {len(vocab)}"
            )
    try:
        model = build_model(config)
    except StorytellerError as exc:
        raise StorytellerError(f"{path} cannot be rebuilt: {exc}") from None
    model.load_state_dict(strip_module_prefix(checkpoint["model"]))
    return model.to(device).eval(), checkpoint


def train_config_of(checkpoint: dict) -> TrainConfig:
    return TrainConfig.from_dict(checkpoint.get("train_config", {}))

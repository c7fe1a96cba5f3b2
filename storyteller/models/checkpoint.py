"""Checkpoints as plain state_dicts plus the configs that rebuild the model, loaded with
``weights_only=True`` (which executes nothing) and trusted only once checked: the config, then
the tensors' names, shapes and dtypes against a model built on the ``meta`` device (no
memory), then that the weights are finite. A crafted 1.5 MB file asking for
``hidden_size=12000`` is a one-line error in milliseconds, not 4 GB allocated.
"""

from __future__ import annotations

import math
import re
import warnings
from itertools import chain
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from ..artefacts import ArtefactError, is_int, is_number
from ..config import ModelConfig, TrainConfig
from ..data.vocab import Vocabulary, is_vocabulary_file
from ..errors import StorytellerError
from ..runtime import torch_save_atomic, unwrap
from . import CaptionDecoder, build_model, resolve_config

#: Most numbers (parameters and buffers) a stored config may describe: 2 GB of float32, 20x
#: the largest captioner here.
MAX_MODEL_ELEMENTS = 500_000_000


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
    """A checkpoint dict, loaded safely and checked in outline: a ``model`` state_dict and a
    ``model_config``; errors are one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise StorytellerError(
            f"checkpoint not found: {path} (train one with `python -m storyteller train` "
            "or `python -m storyteller run-all`)"
        )
    if path.stat().st_size == 0:
        raise ArtefactError(path, "the checkpoint is empty (0 bytes)")
    if is_vocabulary_file(path):
        raise ArtefactError(
            path,
            "this is a vocabulary (vocab.pkl), not a model checkpoint: give it as the "
            "vocabulary (--vocab) and the run's best_model.pth as the checkpoint (--checkpoint)",
        )
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning: the error says all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, not a zip, refused global, ...: all say why
        raise ArtefactError(path, _load_failure(exc)) from None
    if not isinstance(checkpoint, dict):
        raise ArtefactError(
            path, f"not a storyteller checkpoint (a {type(checkpoint).__name__}, not a dict)"
        )
    missing = [key for key in ("model", "model_config") if key not in checkpoint]
    if missing:
        raise ArtefactError(path, f"not a storyteller checkpoint (no {' or '.join(missing)})")
    weights = checkpoint["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) for k in weights):
        raise ArtefactError(path, "'model' is not a state_dict (names -> tensors)")
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ArtefactError(path, f"'model' holds a non-tensor under {bad[0]!r}")
    return checkpoint


def _load_failure(exc: Exception) -> str:
    """``torch.load``'s failure in one line: its own message for a refused pickle is a page
    advising ``weights_only=False``, exactly what must not be done with such a file."""
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (
            f"not a loadable storyteller checkpoint: it refers to {refused.group(1)}, code that "
            "no storyteller checkpoint holds (it may have been crafted to run code on load)"
        )
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
    detail = reason.group(1) if reason else (text.splitlines() or [""])[0]
    return f"not a loadable storyteller checkpoint ({type(exc).__name__}: {detail[:160]})"


def check_model_config(checkpoint: dict, path: str | Path) -> ModelConfig:
    """The checkpoint's model config, checked field by field and resolved through its
    decoder (known decoder, known options of the right types, known encoder)."""
    from ..features.encoders import get_encoder_spec  # torchvision: only when a file is read

    try:
        config = ModelConfig.from_dict(checkpoint["model_config"])
    except StorytellerError as exc:
        raise ArtefactError(path, str(exc)) from None
    try:
        config = resolve_config(config)
        get_encoder_spec(config.encoder)
    except StorytellerError as exc:
        raise ArtefactError(path, f"cannot be rebuilt: {exc}") from None
    return config


class _ShapesOnly(TorchFunctionMode):
    """Skip in-place fills (``normal_``, ``zero_``...) of meta tensors: a model built for its
    shapes needs no values, and on the meta device they cost 1-3 s (measured), not ~10 ms."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("_") and name != "requires_grad_":
            for value in (*args, *kwargs.values()):
                if isinstance(value, torch.Tensor) and value.is_meta:
                    return value
        return func(*args, **kwargs)


def check_weights(state_dict: dict, config: ModelConfig, path: str | Path) -> dict:
    """``state_dict`` (prefixes stripped) if its tensors are exactly those of the model of
    ``config`` (names, shapes, dtypes, built on the ``meta`` device) and finite."""
    try:
        with torch.device("meta"), _ShapesOnly():
            shapes = build_model(config)
    except StorytellerError as exc:
        raise ArtefactError(path, f"cannot be rebuilt: {exc}") from None
    elements = sum(t.numel() for t in chain(shapes.parameters(), shapes.buffers()))
    if elements > MAX_MODEL_ELEMENTS:
        sizes = ", ".join(
            f"{name}={getattr(config, name)}"
            for name in ("vocab_size", "feature_dim", "embed_size", "hidden_size", "num_layers")
        )
        options = "".join(f", {k}={v}" for k, v in config.decoder_options.items() if is_int(v))
        raise ArtefactError(
            path,
            f"its model_config ({sizes}{options}) describes a model of {elements:,} numbers, "
            f"more than the {MAX_MODEL_ELEMENTS:,} a storyteller model may hold",
        )
    expected = shapes.state_dict()
    state = strip_module_prefix(state_dict)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"not in the model: {', '.join(unexpected[:3])}"] if unexpected else []
        )
        raise ArtefactError(
            path, f"its weights do not match its {config.decoder} model_config ({'; '.join(parts)})"
        )
    for name, want in expected.items():
        have = state[name]
        if have.shape != want.shape or have.dtype != want.dtype:
            field = _config_field_for(name)
            raise ArtefactError(
                path,
                f"weight {name} is {tuple(have.shape)} {have.dtype}, but its model_config "
                f"({field}) implies {tuple(want.shape)} {want.dtype}",
            )
        if have.is_floating_point() and not bool(torch.isfinite(have).all()):
            raise ArtefactError(path, f"weight {name} holds NaN or infinite values")
    return state


def _config_field_for(weight: str) -> str:
    """Which config fields a mismatched weight most likely comes from, for the message."""
    if weight.startswith("embed"):
        return "vocab_size, embed_size"
    if weight.startswith("head"):
        return "hidden_size, vocab_size"
    return "feature_dim, embed_size, hidden_size, num_layers, decoder_options"


def check_vocab_matches(
    checkpoint: dict,
    config: ModelConfig,
    vocab: Vocabulary,
    path: str | Path,
    trust_vocab: bool = False,
) -> None:
    """Refuse a vocabulary the checkpoint was not trained with: the fingerprints must match.
    A checkpoint without one cannot show it (any list of the same length would give wrong
    words), so it is refused unless ``trust_vocab=True``."""
    fingerprint = checkpoint.get("vocab_fingerprint")
    if fingerprint is None and not trust_vocab:
        raise ArtefactError(
            path,
            "has no vocab_fingerprint, so nothing shows the vocabulary is the one it was "
            "trained with (every checkpoint storyteller writes has one); if you know it is, "
            "load it with storyteller.models.checkpoint.load_model(..., trust_vocab=True)",
        )
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ArtefactError(
            path, f"vocab_fingerprint must be text, got {type(fingerprint).__name__}"
        )
    if fingerprint is not None and fingerprint != vocab.fingerprint:
        raise ArtefactError(
            path,
            f"was trained with a different vocabulary (fingerprint {fingerprint[:16]}, "
            f"vocab.pkl has {vocab.fingerprint}): use the vocab.pkl from the same run",
        )
    if config.vocab_size != len(vocab):
        raise ArtefactError(
            path, f"expects {config.vocab_size} words, the vocabulary has {len(vocab)}"
        )


def load_model(
    path: str | Path,
    vocab: Vocabulary | None = None,
    device: torch.device | str = "cpu",
    trust_vocab: bool = False,
) -> tuple[CaptionDecoder, dict]:
    """The model of a checkpoint, rebuilt from the checkpoint alone after checking its config,
    its weights and, if given, that ``vocab`` is the one it was trained with (see
    :func:`check_vocab_matches` for ``trust_vocab``)."""
    checkpoint = read_checkpoint(path)
    config = check_model_config(checkpoint, path)  # no "decoder" key: "lstm"
    if vocab is not None:
        check_vocab_matches(checkpoint, config, vocab, path, trust_vocab)
    return build_checked_model(checkpoint["model"], config, path, device), checkpoint


def build_checked_model(
    weights: dict, config: ModelConfig, path: str | Path, device: torch.device | str = "cpu"
) -> CaptionDecoder:
    """The model of ``config`` (already checked) holding ``weights`` after
    :func:`check_weights`: a checkpoint's, or the Hub layout's own weights file."""
    state = check_weights(weights, config, path)
    model = build_model(config)
    model.load_state_dict(state)
    return model.to(device).eval()


def train_config_of(checkpoint: dict, path: str | Path = "checkpoint") -> TrainConfig:
    """The checkpoint's training config (defaults for a file without one), checked."""
    try:
        return TrainConfig.from_dict(checkpoint.get("train_config", {}))
    except StorytellerError as exc:
        raise ArtefactError(path, str(exc)) from None


def _rng_state_problem(value: object) -> str | None:
    """Why ``value`` cannot be a CPU random state, or ``None`` if it can."""
    reference = torch.get_rng_state()
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
        return f"is a {type(value).__name__}, not a uint8 tensor"
    if value.shape != reference.shape:
        return f"has shape {tuple(value.shape)}, a random state has {tuple(reference.shape)}"
    return None


def check_progress(checkpoint: dict, path: str | Path) -> None:
    """The run's progress in ``last.pth`` has the right types."""
    epoch, history = checkpoint.get("epoch"), checkpoint.get("history")
    if not is_int(epoch) or epoch < 0:
        raise ArtefactError(path, f"epoch must be a count of epochs, got {epoch!r:.60}")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ArtefactError(path, "history must be a list of one record per epoch")
    if len(history) != epoch:
        raise ArtefactError(path, f"history has {len(history)} epoch(s), epoch says {epoch}")
    best = checkpoint.get("best_val_loss")
    if not (is_number(best) or best == math.inf):  # inf: no epoch has improved yet
        raise ArtefactError(path, f"best_val_loss must be a number, got {best!r:.60}")
    bad_epochs = checkpoint.get("bad_epochs")
    if not is_int(bad_epochs) or not 0 <= bad_epochs <= epoch:
        raise ArtefactError(path, f"bad_epochs must be 0..{epoch}, got {bad_epochs!r:.60}")
    if not isinstance(checkpoint.get("stopped_early"), bool):
        raise ArtefactError(path, "stopped_early must be true or false")


def check_training_state(
    checkpoint: dict,
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: object,
) -> None:
    """Check everything ``last.pth`` holds against the run about to resume from it (model,
    optimiser, schedule, random states, progress) before any of it is loaded, so a resume
    cannot fail half-way."""
    check_weights(checkpoint["model"], resolve_config(unwrap(model).config), path)
    train_config_of(checkpoint, path)
    check_progress(checkpoint, path)
    _check_optimizer_state(checkpoint.get("optimizer"), optimizer, path)
    saved = checkpoint.get("scheduler")
    current = scheduler.state_dict()  # type: ignore[attr-defined]
    unknown = sorted(set(saved) - set(current)) if isinstance(saved, dict) else None
    if unknown is None or unknown:
        raise ArtefactError(
            path,
            f"scheduler state is not a {type(scheduler).__name__}'s"
            + (f" (unknown field {unknown[0]!r:.40})" if unknown else ""),
        )
    for key, value in saved.items():
        if not _same_kind(value, current[key]):
            raise ArtefactError(path, f"scheduler state {key} is {value!r:.60}")
    if not isinstance(checkpoint.get("scaler", {}), dict):
        raise ArtefactError(path, "scaler state must be a mapping")
    for key in ("generator_state", "rng_state"):
        problem = _rng_state_problem(checkpoint.get(key))
        if problem:
            raise ArtefactError(path, f"{key} {problem}")
    world_size = checkpoint.get("world_size", 1)
    if not is_int(world_size) or world_size < 1:
        raise ArtefactError(
            path, f"world_size must be a count of processes, got {world_size!r:.60}"
        )
    for key in ("cuda_rng_states", "rank_rng_states"):
        if not isinstance(checkpoint.get(key, []), list):
            raise ArtefactError(path, f"{key} must be a list")


def _same_kind(value: object, reference: object) -> bool:
    """Whether a saved value may replace ``reference`` (a scheduler field): numbers for
    numbers (finite or the infinity a fresh best starts at), else the same type."""
    if is_number(reference) or isinstance(reference, float):
        return is_number(value) or (isinstance(value, float) and math.isinf(value))
    if isinstance(reference, (list, tuple)) and isinstance(value, (list, tuple)):
        return len(value) == len(reference) and all(map(_same_kind, value, reference))
    return reference is None or value is None or type(value) is type(reference)


def _check_optimizer_state(
    saved: object, optimizer: torch.optim.Optimizer, path: str | Path
) -> None:
    """The saved optimiser state fits ``optimizer``: the same groups and parameters, each
    tensor a scalar (a step count) or the parameter's shape, and finite."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ArtefactError(path, "optimizer state is not an optimizer's state_dict")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise ArtefactError(
            path, f"optimizer state has other parameter groups than this {type(optimizer).__name__}"
        )
    params: dict[object, torch.nn.Parameter] = {}
    for held, group in zip(groups, optimizer.param_groups, strict=True):
        ids = held.get("params") if isinstance(held, dict) else None
        if not isinstance(ids, list) or len(ids) != len(group["params"]):
            raise ArtefactError(path, "optimizer state covers other parameters than the model")
        params.update(zip(ids, group["params"], strict=True))
    for key, entry in saved["state"].items():
        if key not in params or not isinstance(entry, dict):
            raise ArtefactError(path, f"optimizer state has an entry {key!r:.40} for no parameter")
        for name, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue  # e.g. a plain step count
            if value.dim() and value.shape != params[key].shape:
                raise ArtefactError(
                    path,
                    f"optimizer {name} of parameter {key} is {tuple(value.shape)}, the "
                    f"parameter is {tuple(params[key].shape)}",
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ArtefactError(path, f"optimizer {name} of parameter {key} holds NaN")

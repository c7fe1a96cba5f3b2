"""The one exception type the command line turns into a one-line message, and the one line a
full disk becomes."""

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

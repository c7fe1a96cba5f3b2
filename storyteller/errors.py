"""The one exception type the command line turns into a clear one-line message, and the
one line a full disk becomes."""

from __future__ import annotations

import errno
import os

#: The ``OSError`` numbers that mean the disk, or the user's share of it, is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StorytellerError(Exception):
    """A user-facing error: bad input, missing files, incompatible artefacts.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback,
    so the message must say what went wrong *and* what to do about it.
    """


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The full-disk ``OSError`` behind ``exc``, if any: ``exc`` itself or one it was raised
    from or while handling (``torch.save`` raises its own bare ``RuntimeError`` over it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(exc: OSError, what: str | os.PathLike) -> StorytellerError:
    """The one line for a write that failed on a full disk (``exc`` from
    :func:`disk_full_cause`): what could not be written, where, and that a re-run continues."""
    reason = os.strerror(exc.errno).lower()
    return StorytellerError(
        f"could not write {what}: {reason}; free some space there and run the same command "
        "again (finished files are kept)"
    )

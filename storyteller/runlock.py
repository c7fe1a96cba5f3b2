"""One writer per run folder: a step that writes a run folder first checks that it can, takes
the folder's lock and removes the temporary files an interrupted write left there (else two
``train`` runs on one ``--out`` overwrite each other's checkpoints silently).

The lock is ``fcntl.flock`` on ``OUT/.storyteller.lock``: the kernel drops it when its process
ends, however it ends, so a lock is never stale. The file says who holds it, so a refusal
names the other process; it stays in the folder, emptied on release (deleting it while another
process opens it would let two processes lock two files). Re-entrant within one thread
(``run-all`` holds the folder while its steps enter it again); another thread is refused like
another process. Without ``fcntl`` (Windows) or on a file system that cannot lock, nothing is
locked: the step says so and leaves temporary files alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import StorytellerError
from .progress import Log
from .run_folder import LOCK_FILE
from .runtime import ATOMIC_TEMP_NAME

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: How much of the holder's command line a refusal shows.
COMMAND_CHARS = 120


@dataclass
class _Hold:
    """This process's hold on one run folder."""

    fd: int | None  # the locked lock file; None where nothing could be locked
    thread: int  # the thread that holds it (the only one that may re-enter)


_holds: dict[Path, _Hold] = {}
_holds_lock = threading.Lock()


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and a file in it, or raise: a probe, not ``os.access``, also
    catches read-only mounts, immutable folders and root, whose bits ``os.access`` waves
    through."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".storyteller-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorytellerError(
            f"cannot write to the run folder {folder}: {exc.strerror or exc}; "
            "fix its permissions or use another --out"
        ) from None


def remove_stale_temp_files(folders: Iterable[str | Path]) -> tuple[int, int]:
    """Delete the temporary files ``atomic_path`` left in each of ``folders``; return how many
    and their bytes. Only safe under the lock: no write is under way then."""
    count = size = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if not ATOMIC_TEMP_NAME.fullmatch(entry.name):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                nbytes = entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
                count, size = count + 1, size + nbytes
    return count, size


def _command_line() -> str:
    """This process's command line as a person typed it (``python -m storyteller train ...``)."""
    argv = list(sys.argv) or [""]
    first = Path(argv[0])
    if first.name == "__main__.py" and first.parent.name == "storyteller":
        argv[0] = "python -m storyteller"
    elif argv[0] in ("", "-c", "-m"):
        argv[0] = f"python {argv[0]}".strip()
    else:
        argv[0] = first.name
    line = " ".join(argv)
    return line if len(line) <= COMMAND_CHARS else line[: COMMAND_CHARS - 3] + "..."


def _holder_record() -> bytes:
    """What the lock file says about the process holding it."""
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command_line(),
        "started": time.time(),
    }
    return (json.dumps(record) + "\n").encode()


def _shown(folder: Path) -> str:
    """The folder as the user gave it, with a trailing separator (``outputs/``)."""
    text = str(folder)
    return text if text.endswith(os.sep) else text + os.sep


def _refusal(folder: Path) -> str:
    try:
        holder = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
        pid, host, command = int(holder["pid"]), str(holder["host"]), str(holder["command"])
        started = time.localtime(float(holder["started"]))
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        who = "another process (which has not written its name into the lock file yet)"
    else:
        same_day = started[:3] == time.localtime()[:3]
        when = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", started)
        mine = " (another thread of this process)" if pid == os.getpid() else ""
        who = f"pid {pid}{mine} ({command}, started {when} on {host})"
    return f"{_shown(folder)} is in use by {who}: wait for it or use another --out"


def _not_locked(folder: Path, why: str, log: Log) -> _Hold:
    log(
        f"warning: {_shown(folder)} is not locked ({why}): never run two steps on it at once; "
        "stale temporary files are left in place"
    )
    return _Hold(None, threading.get_ident())


def _acquire(folder: Path, log: Log) -> _Hold:
    if fcntl is None:
        return _not_locked(folder, "this system has no fcntl", log)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: flock works on a read-only one too
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorytellerError(_refusal(folder)) from None
    except OSError as exc:  # a file system without locks (some network or FUSE mounts)
        os.close(fd)
        return _not_locked(folder, f"its file system cannot lock: {exc.strerror or exc}", log)
    with contextlib.suppress(OSError):  # a read-only descriptor cannot say who holds it
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _holder_record())
    return _Hold(fd, threading.get_ident())


def _release(hold: _Hold) -> None:
    if hold.fd is None:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(hold.fd, 0)  # nobody holds it: nothing to name
    fcntl.flock(hold.fd, fcntl.LOCK_UN)
    os.close(hold.fd)


@contextlib.contextmanager
def run_folder(out: str | Path, subfolders: Iterable[str] = (), log: Log = print) -> Iterator[Path]:
    """Hold the run folder ``out`` (created if missing) for writing while the block runs.

    A folder that cannot be written, or that another process holds, is a one-line refusal;
    then the temporary files an interrupted write left in ``out`` and its ``subfolders`` are
    removed, and ``log`` says how many. The same thread nested on the same folder re-enters."""
    folder = Path(out)
    key = folder.resolve()
    with _holds_lock:
        hold = _holds.get(key)
    if hold is not None and hold.thread == threading.get_ident():
        yield folder  # this thread holds it already (run-all's steps)
        return

    check_writable(folder)
    hold = _acquire(folder, log)
    with _holds_lock:
        _holds[key] = hold
    try:
        if hold.fd is not None:
            folders = [folder, *(folder / name for name in subfolders)]
            count, size = remove_stale_temp_files(folders)
            if count:
                log(
                    f"removed {count} temporary file(s) ({size / 1e6:.1f} MB) that an "
                    f"interrupted write left in {_shown(folder)}"
                )
        yield folder
    finally:
        with _holds_lock:
            if _holds.get(key) is hold:
                del _holds[key]
        _release(hold)

"""Start ``app.py`` as its own process on loopback, as the Space does, and stop it afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storyteller.serving.deploy import build_space_folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def space_folder(run_dir: Path, dest: Path) -> Path:
    """The dry-run Space folder for ``run_dir`` (what ``deploy --dry-run`` writes)."""
    return build_space_folder(run_dir, dest, log=lambda _: None)


@contextlib.contextmanager
def running_app(
    folder: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> Iterator[RunningApp]:
    """``python app.py`` with ``cwd=folder`` on a free loopback port; yields once it answers."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("STORYTELLER_RUN_DIR", "HF_TOKEN")}
    full_env = {
        **base,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "STORYTELLER_PRELOAD_STORY": "0",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log = folder.parent / f"{folder.name}-app-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=folder, env=full_env, stdout=out, stderr=out
        )
    app = RunningApp(f"http://127.0.0.1:{port}/", process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if not app.alive():
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{app.log_tail()}")
            try:
                with urllib.request.urlopen(app.url + "config", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer in {timeout}s:\n{app.log_tail()}")
            time.sleep(0.5)
        yield app
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

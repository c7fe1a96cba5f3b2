"""Offline story backend: Gemma 3 270M (a *base* model) from PyPI, no internet needed, from
the converted cache (:mod:`.gemma_cache`), driven by the few-shot completion prompt.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ...progress import Log
from ..errors import StoryError
from .gemma_cache import DISPLAY_NAME, ensure_offline_model, log_to_stderr
from .local import TransformersBackend


class OfflineBackend(TransformersBackend):
    """The converted Gemma 3 270M, converting it into the cache ``root`` first when it is
    missing or broken (progress lines go to ``log``)."""

    name = "offline"

    def __init__(
        self,
        device: str | None = None,
        root: str | Path | None = None,
        log: Log = log_to_stderr,
        timeout: float | None = None,
    ):
        self.cache = folder = ensure_offline_model(root, log)
        try:
            super().__init__(folder, device=device, chat=False, timeout=timeout)
        except StoryError as exc:
            if "too large" in str(exc):
                raise
            # the cache passed its checks but does not load (a corrupted file): rebuild once
            log(f"offline story model: the cache in {folder} does not load; rebuilding it")
            shutil.rmtree(folder, ignore_errors=True)
            super().__init__(
                ensure_offline_model(root, log), device=device, chat=False, timeout=timeout
            )

    def describe(self) -> str:
        return f"offline: {DISPLAY_NAME} on {self.device.type}"

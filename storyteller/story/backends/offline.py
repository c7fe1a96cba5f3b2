"""Offline story backend: Gemma 3 270M (a *base* model) from PyPI, no internet needed.

The model comes from the converted cache (:mod:`.gemma_cache`: GGUF -> safetensors once,
seconds to load afterwards) and is driven by the few-shot completion prompt with the caption
as the story's first sentence, sampling with a repetition penalty (greedy decoding loops).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ...progress import Log
from ..errors import StoryError
from .gemma_cache import DISPLAY_NAME, ensure_offline_model, log_to_stderr
from .local import TransformersBackend


class OfflineBackend(TransformersBackend):
    """The converted Gemma 3 270M, converting it first when the cache is missing or broken.

    Parameters:
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        root: the cache root (default ``$STORYTELLER_CACHE`` or ``~/.cache/storyteller``).
        log: where progress lines go (default: stderr).
        timeout: seconds one turn may generate (see :class:`TransformersBackend`).
    """

    name = "offline"

    def __init__(
        self,
        device: str | None = None,
        root: str | Path | None = None,
        log: Log = log_to_stderr,
        timeout: float | None = None,
    ):
        folder = ensure_offline_model(root, log)
        self.cache = folder
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

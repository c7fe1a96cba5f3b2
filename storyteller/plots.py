"""Figures people would rather look at than read: loss curves and captioned image grids."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; notebooks display the saved PNGs
import matplotlib.pyplot as plt  # noqa: E402

from .features import load_rgb  # noqa: E402


def plot_loss_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Train and validation loss per epoch (with the best validation epoch marked)."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    if history:
        best = min(history, key=lambda h: h["val_loss"])
        ax.axvline(
            best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Caption model loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_caption_grid(
    image_paths: Sequence[str | Path],
    references: Sequence[Sequence[str]],
    generated: dict[str, Sequence[str]],
    path: str | Path,
    columns: int = 3,
    title: str | None = None,
) -> Path:
    """A grid of images, each with one reference and every decoding's caption beneath it."""
    rows = (len(image_paths) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 5.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, image_path in enumerate(image_paths):
        ax = axes.flat[i]
        ax.imshow(load_rgb(image_path))
        lines = [f"ref: {references[i][0]}"] + [
            f"{name}: {caps[i]}" for name, caps in generated.items()
        ]
        wrapped = "\n".join(textwrap.fill(line, 48) for line in lines)
        ax.set_title(wrapped, fontsize=9, loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)

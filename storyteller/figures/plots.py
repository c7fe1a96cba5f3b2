"""Loss curves, captioned image grids and attention maps, as PNGs."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; notebooks display the saved PNGs
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..config import SMOKE_LABEL  # noqa: E402  (every figure of a smoke run says it)
from ..features.images import open_image  # noqa: E402
from ..runtime import atomic_path  # noqa: E402

SMOKE_COLOR = "#c00000"


def _save(fig, path: str | Path, dpi: int, smoke: bool) -> Path:
    """Write ``fig`` as a PNG and close it; a smoke run's gets a diagonal "SMOKE RUN"
    watermark (it survives cropping the heading off) and :data:`SMOKE_LABEL` as its
    ``Description``."""
    if smoke:
        width, height = fig.get_size_inches()
        fig.text(
            0.5, 0.5, "SMOKE RUN", ha="center", va="center", rotation=30, color=SMOKE_COLOR,
            alpha=0.25, fontsize=10 * min(width, height), weight="bold", zorder=100,
        )  # fmt: skip
    try:  # atomic: a kill or a full disk leaves the previous figure, never half of one
        with atomic_path(path) as tmp:
            metadata = {"Description": SMOKE_LABEL} if smoke else None
            fig.savefig(tmp, format="png", dpi=dpi, metadata=metadata)
    finally:
        plt.close(fig)
    return Path(path)


def plot_loss_curves(history: Sequence[dict], path: str | Path, smoke: bool = False) -> Path:
    """Train and validation loss per epoch, the best validation epoch marked."""
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
    # Epochs are whole numbers: a tick at 2.5 names an epoch that never ran.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Caption model loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if smoke:
        fig.suptitle(SMOKE_LABEL, color=SMOKE_COLOR, fontsize=10, weight="bold")
    fig.tight_layout()
    return _save(fig, path, 110, smoke)


def plot_caption_grid(
    image_paths: Sequence[str | Path],
    references: Sequence[Sequence[str]],
    generated: dict[str, Sequence[str]],
    path: str | Path,
    columns: int = 3,
    title: str | None = None,
    smoke: bool = False,
) -> Path:
    """A grid of images, each under one reference and every decoding's caption. The layout
    is measured in inches, each row given room for its longest caption block: a bad model's
    50-word caption would otherwise grow into the title."""
    line, image, width, margin = 0.16, 4.4, 5.0, 0.1  # inches; a 9-point line is 0.15 in
    heading = 0.3  # inches per heading line: the smoke label, the title
    headings = int(smoke) + int(bool(title))
    top = 0.1 + (heading * headings + 0.1 if headings else 0.0)  # room for the headings
    blocks = [
        "\n".join(
            textwrap.fill(text, 48)
            for text in [f"ref: {references[i][0]}"]
            + [f"{name}: {caps[i]}" for name, caps in generated.items()]
        )
        for i in range(len(image_paths))
    ]
    rows = [blocks[r : r + columns] for r in range(0, len(blocks), columns)]
    texts = [line * max(block.count("\n") + 1 for block in row) + 0.15 for row in rows]
    fig_w, fig_h = width * columns, top + sum(texts) + image * len(rows) + margin
    fig = plt.figure(figsize=(fig_w, fig_h))
    y = fig_h - top  # inches from the bottom: the top of the next row's caption space
    for r, text in enumerate(texts):
        y -= text + image
        for c in range(len(rows[r])):
            i = r * columns + c
            rect = [(c * width + margin) / fig_w, y / fig_h, (width - 2 * margin) / fig_w]
            ax = fig.add_axes([*rect, image / fig_h], anchor="N")  # images flush under text
            ax.axis("off")
            ax.imshow(open_image(image_paths[i]))
            ax.set_title(blocks[i], fontsize=9, loc="left")
    if smoke:
        fig.text(
            0.5, 1 - margin / fig_h, SMOKE_LABEL, ha="center", va="top", color=SMOKE_COLOR,
            fontsize=13, weight="bold",
        )  # fmt: skip
    if title:
        fig.suptitle(title, y=1 - (margin + heading * smoke) / fig_h)
    return _save(fig, path, 90, smoke)


def attention_figure(view, result, columns: int = 5):
    """Show, Attend and Tell's figure for one photo (``view``: what the encoder saw) and its
    :class:`~storyteller.figures.attention_maps.AttentionCaption`: the captioned photo, then per
    word the photo lit where its weights were high (scaled to its own peak), titled with the
    peak weight. Built without pyplot's global figure list, so app requests may draw at once."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = result.grid
    size = view.size[::-1]  # (H, W) of the encoder's input
    weights = result.weights.float().reshape(-1, 1, h, w)  # (T, 1, h, w)
    peaks = weights.amax(dim=(1, 2, 3))  # (T,)
    maps = F.interpolate(weights, size=size, mode="bilinear", align_corners=False)  # (T, 1, H, W)
    maps = maps[:, 0]  # (T, H, W)
    maps = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    photo = np.asarray(view.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    panels = 1 + len(result.words)
    rows = (panels + columns - 1) // columns
    fig = Figure(figsize=(2.3 * columns, 2.5 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself: savefig and figure_pixels draw with Agg
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(photo)
    axes.flat[0].set_title("\n".join(textwrap.wrap(result.caption, 26)) or "(no words)", fontsize=8)
    for t, word in enumerate(result.words):
        light = 0.15 + 0.85 * maps[t].clamp(0, 1).numpy()[..., None]  # (H, W, 1)
        ax = axes.flat[t + 1]
        ax.imshow(photo * light)
        ax.set_title(f"{word}  ({peaks[t]:.0%})", fontsize=9)
    fig.suptitle(
        "Where the model looked for each word (lit: high attention; % = peak weight, "
        f"uniform = {1 / (h * w):.0%})",
        fontsize=9,
    )
    return fig


def plot_attention_map(view, result, path: str | Path, smoke: bool = False) -> Path:
    """:func:`attention_figure` saved as a PNG at ``path``."""
    fig = attention_figure(view, result)
    if smoke:
        fig.suptitle(f"{SMOKE_LABEL}\n{fig.get_suptitle()}", fontsize=9, color=SMOKE_COLOR)
    return _save(fig, path, 90, smoke)


def figure_pixels(fig):
    """An Agg-backed figure as an (H, W, 3) uint8 array, for an app's image output."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)

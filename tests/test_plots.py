"""Figures a reader sees: the loss curve names only epochs that exist; captions stay clear."""

from unittest import mock

import pytest

from storyteller.figures import plots


@pytest.mark.parametrize("epochs", [3, 20])
def test_loss_curve_epoch_ticks_are_integers(tmp_path, epochs):
    # 3 and 20 epochs gave ticks 0.75, 1.25, ... and 2.5, 7.5, ... before the integer locator.
    history = [
        {"epoch": e, "train_loss": 5 - 0.1 * e, "val_loss": 5 - 0.05 * e}
        for e in range(1, epochs + 1)
    ]
    figures = []
    with mock.patch.object(plots.plt, "close", figures.append):
        out = plots.plot_loss_curves(history, tmp_path / "loss.png")
    assert out.exists()
    ticks = figures[0].axes[0].get_xticks()
    assert len(ticks) >= 2
    assert all(float(t).is_integer() for t in ticks), list(ticks)


@pytest.mark.parametrize("count", [2, 3, 5])
def test_caption_grid_titles_never_overlap(tmp_path, count):
    """Issue 12.11: in worst_examples.png a 50-word caption grew upward into the figure's
    title (square smoke images). Every caption must sit inside the figure, clear of the
    figure's title and of every other panel's image."""
    from PIL import Image

    images = []
    for i in range(count):  # square like the smoke sample's; the fourth a landscape photo
        path = tmp_path / f"image{i}.jpg"
        Image.new("RGB", (500, 333) if i == 3 else (224, 224), (40 * i, 90, 160)).save(path)
        images.append(path)
    long = "a a a a a background a a a " + " ".join(["background a a a"] * 10)
    references = [["There is one orange circle on a patch of grass."]] * count
    captions = [long if i != 2 else "a dog" for i in range(count)]
    figures = []
    with mock.patch.object(plots.plt, "close", figures.append):
        plots.plot_caption_grid(
            images,
            references,
            {"beam5 (CIDEr-D)": captions},
            tmp_path / "worst.png",
            title="Worst test captions",
        )
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    suptitle = fig.get_suptitle() and fig._suptitle.get_window_extent(renderer)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == count
    for ax in panels:
        caption = ax._left_title.get_window_extent(renderer)  # set_title(..., loc="left")
        assert caption.height > 0
        assert page.x0 <= caption.x0 and caption.x1 <= page.x1, (caption, page)
        assert page.y0 <= caption.y0 and caption.y1 <= page.y1, (caption, page)
        assert not caption.overlaps(suptitle), (caption, suptitle)
        for other in panels:
            image = other.images[0].get_window_extent(renderer)
            assert not caption.overlaps(image), (caption, image)


def _png_description(path) -> str | None:
    from PIL import Image

    with Image.open(path) as image:
        return image.info.get("Description")


def _red_pixels(path) -> int:
    """Pixels in the smoke label's red (a saturated, dark red none of these figures has)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)  # (H, W, 3)
    return int(((rgb[..., 0] > 150) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_smoke_caption_grid_is_labelled_above_its_title_and_clear_of_captions(tmp_path):
    """Issue 12.11: a smoke run's 49-word "a a pair sky sky ..." captions were shown as if
    a real model had written them."""
    from PIL import Image

    images = []
    for i in range(3):
        images.append(tmp_path / f"image{i}.jpg")
        Image.new("RGB", (224, 224), (40 * i, 90, 160)).save(images[-1])
    long = " ".join(["a pair sky sky"] * 12)
    arguments = (images, [["One circle."]] * 3, {"greedy": [long, "a dog", long]})
    figures = []
    with mock.patch.object(plots.plt, "close", figures.append):
        smoke = plots.plot_caption_grid(
            *arguments, tmp_path / "smoke.png", title="Worst test captions", smoke=True
        )
    real = plots.plot_caption_grid(*arguments, tmp_path / "real.png", title="Worst test captions")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    label = next(t for t in fig.texts if t.get_text() == plots.SMOKE_LABEL)
    label_box = label.get_window_extent(renderer)
    title_box = fig._suptitle.get_window_extent(renderer)
    assert fig.bbox.y0 <= title_box.y1 <= label_box.y0 and label_box.y1 <= fig.bbox.y1
    for ax in (ax for ax in fig.axes if ax.images):
        assert not ax._left_title.get_window_extent(renderer).overlaps(label_box)
    assert any(t.get_text() == "SMOKE RUN" and t.get_rotation() == 30 for t in fig.texts)
    assert _png_description(smoke) == plots.SMOKE_LABEL and _png_description(real) is None
    assert _red_pixels(smoke) > 1000 and _red_pixels(real) == 0


def test_smoke_loss_curve_is_labelled(tmp_path):
    history = [{"epoch": e, "train_loss": 5 - e, "val_loss": 5.5 - e} for e in (1, 2)]
    figures = []
    with mock.patch.object(plots.plt, "close", figures.append):
        smoke = plots.plot_loss_curves(history, tmp_path / "smoke.png", smoke=True)
    real = plots.plot_loss_curves(history, tmp_path / "real.png")
    assert figures[0].get_suptitle() == plots.SMOKE_LABEL
    assert _png_description(smoke) == plots.SMOKE_LABEL and _png_description(real) is None
    assert _red_pixels(smoke) > 200 and _red_pixels(real) == 0

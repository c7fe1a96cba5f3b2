"""Figures a reader sees: the loss curve names only epochs that exist; captions stay clear."""

from unittest import mock

import pytest

from storyteller import plots


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

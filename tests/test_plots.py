"""Figures a reader sees: the loss curve's epoch axis names only epochs that exist."""

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

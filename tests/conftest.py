"""Shared fixtures: a tiny generated dataset, its features and a briefly trained model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FLICKR8K_1K = SHARED_DATA / "flickr8k-1k"


@pytest.fixture(autouse=True)
def _isolated_sample_dir(tmp_path_factory, monkeypatch):
    """Never write the default sample into the user's real cache from a test."""
    if "STORYTELLER_SAMPLE_DIR" not in os.environ:
        monkeypatch.setenv(
            "STORYTELLER_SAMPLE_DIR", str(tmp_path_factory.getbasetemp() / "default-sample")
        )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """40 generated images (200 captions) in the Kaggle layout."""
    from storyteller.sample import generate_sample_dataset

    return generate_sample_dataset(tmp_path_factory.mktemp("tiny-data"), num_images=40, seed=1)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A run folder with features, vocab and a 2-epoch model for ``tiny_data``."""
    from storyteller import pipeline
    from storyteller.config import TrainConfig

    out = tmp_path_factory.mktemp("tiny-run")
    pipeline.features_step(
        tiny_data, out, "efficientnet_lite0", batch_size=16, num_workers=0, log=lambda _: None
    )
    pipeline.vocab_step(tiny_data, out, threshold=2, log=lambda _: None)
    pipeline.train_step(
        tiny_data,
        out,
        TrainConfig(num_epochs=2, batch_size=32),
        {"hidden_size": 64, "embed_size": 32},
        log=lambda _: None,
    )
    return out


def cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run ``python -m storyteller ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "storyteller", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """`python -m storyteller run-all` with no arguments, in an empty working folder."""
    cwd = tmp_path_factory.mktemp("fresh-machine")
    env = {
        "STORYTELLER_SAMPLE_DIR": str(cwd / "sample-cache"),
        "TORCH_HOME": str(cwd / "torch-home"),
    }
    result = cli("run-all", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "outputs", result

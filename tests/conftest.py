"""Shared fixtures: a tiny generated dataset, its features and a briefly trained model.

The device lane: ``pytest --device cuda`` (or ``cpu``; default ``auto``: CUDA when a GPU is
visible) sets ``$STORYTELLER_DEVICE`` for the whole session, so every test that trains,
decodes, extracts or serves runs on that device without being edited, and so do the CLI
subprocesses the tests start. The header of the run names the device. Tests that only make
sense on a GPU carry ``@pytest.mark.cuda`` and are skipped, with the reason shown by ``-ra``,
when none is visible.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FLICKR8K_1K = SHARED_DATA / "flickr8k-1k"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="device for the tests that train, decode, extract or serve (auto: CUDA when visible)",
    )


def _lane(config) -> str:
    choice = config.getoption("--device")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped, and reported, without)")
    lane = _lane(config)
    if lane == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: no CUDA GPU is visible")
    os.environ["STORYTELLER_DEVICE"] = lane  # the package's default device, subprocesses too


def pytest_report_header(config):
    lane = _lane(config)
    name = f" ({torch.cuda.get_device_name(0)})" if lane == "cuda" else ""
    return f"storyteller test device: {lane}{name}, torch {torch.__version__}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and _lane(config) == "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with --device cuda on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device of this test run's lane (see the module docstring)."""
    return torch.device(_lane(pytestconfig))


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
    from storyteller.data.sample import generate_sample_dataset

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
        {"decoder": "lstm", "hidden_size": 64, "embed_size": 32},
        log=lambda _: None,
    )
    return out


@pytest.fixture(scope="session")
def unmarked_run(tiny_run, tiny_data, tmp_path_factory) -> Path:
    """``tiny_run`` retrained (1 epoch) on a copy of ``tiny_data`` without its ``sample.json``:
    a model of data that is not the embedded sample, so nothing labels it as the sample's."""
    import shutil

    from storyteller import pipeline
    from storyteller.config import TrainConfig
    from storyteller.data.sample import MANIFEST_FILENAME

    data = shutil.copytree(tiny_data, tmp_path_factory.mktemp("unmarked-data") / "photos")
    (data / MANIFEST_FILENAME).unlink()
    out = shutil.copytree(tiny_run, tmp_path_factory.mktemp("unmarked-run") / "run")
    config = TrainConfig(num_epochs=1, batch_size=32)
    sizes = {"decoder": "lstm", "hidden_size": 64, "embed_size": 32}
    pipeline.train_step(data, out, config, sizes, resume=False, log=lambda _: None)
    return out


@pytest.fixture
def full_disk(request, monkeypatch) -> None:
    """Every ``torch.save`` of the package writes to a disk with ``request.param`` bytes left
    (1 KB unless a test says), then fails with ENOSPC, as a real full disk does: with room
    left torch raises its bare ``RuntimeError`` over the ``OSError``, with none the reverse."""
    from storyteller import runtime

    class AlmostFull(io.RawIOBase):
        room = getattr(request, "param", 1024)

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            if self.room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = min(len(data), self.room)
            self.room -= written
            return written

    disk = lambda _, mode: io.BufferedWriter(AlmostFull())  # noqa: E731
    monkeypatch.setattr(runtime, "open", disk, raising=False)


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


def add_huge_integer(path: Path) -> None:
    """Add a 5,001-digit integer to the JSON object in ``path`` (Python's own parser refuses
    integers over 4,300 digits with a ValueError that names no file)."""
    text = path.read_text()
    path.write_text(text[: text.rindex("}")] + ', "huge": ' + "9" * 5001 + "}")


#: `run-all`'s training flags for the end-to-end CLI tests: the default attention captioner,
#: small and 3 epochs, the least training measured to learn the sample as
#: tests/test_cli.py::test_sample_dataset_is_learned_well asks (the default's 15 epochs of a
#: 512-wide one are 12 minutes on 2 busy cores; these about one).
SAMPLE_RUN_FLAGS = (
    *("--epochs", "3", "--hidden-size", "128", "--embed-size", "64"),
    *("--decoder-option", "attention_dim=64", "--batch-size", "32", "--lr", "3e-3"),
)


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """`python -m storyteller run-all` with :data:`SAMPLE_RUN_FLAGS` and no ``--data``, in an
    empty working folder with no cached sample or encoder weights."""
    cwd = tmp_path_factory.mktemp("fresh-machine")
    env = {
        "STORYTELLER_SAMPLE_DIR": str(cwd / "sample-cache"),
        "TORCH_HOME": str(cwd / "torch-home"),
    }
    result = cli("run-all", *SAMPLE_RUN_FLAGS, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "outputs", result


#: Environment that chooses a story backend or carries a credential.
STORY_ENV_VARS = (
    "HF_TOKEN",
    "STORYTELLER_STORY_API_KEY",
    "STORYTELLER_STORY_BASE_URL",
    "STORYTELLER_STORY_MODEL",
    "STORYTELLER_STORY_TIME_LIMIT",
)


@pytest.fixture
def no_story_credentials(monkeypatch, tmp_path):
    """Never pick up a developer's real token, saved login, story server or time limit, and
    start from no loaded backend (story tests use it for every test: ``pytestmark``)."""
    from storyteller.story.backends import clear_cache

    for name in STORY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login
    clear_cache()

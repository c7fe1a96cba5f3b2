"""The app's examples fit the model it serves, and a Space ships them only
when allowed: drawn scenes for a sample-trained model, a few of its run's test photos for a
Flickr-like run whose data is here, none otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from storyteller.errors import StorytellerError
from storyteller.serving.deploy import build_space_folder
from storyteller.serving.examples import (
    EXAMPLES_DIR,
    NUM_PHOTOS,
    PHOTOS_ENV,
    choose_examples,
    example_pictures,
    photos_allowed,
    split_is_drawn,
)

TEST = [f"{n}_test.jpg" for n in range(1000, 1006)]
TRAIN = [f"{n}_train.jpg" for n in range(2000, 2008)]


@pytest.fixture
def flickr_run(tiny_run, tmp_path) -> tuple[Path, Path]:
    """A run folder like a Flickr one: photo names that are not the sample's, a split, and a
    feature index naming the image folder (the tiny run's model stands in for its model)."""
    images = tmp_path / "flickr" / "Images"
    images.mkdir(parents=True)
    for i, name in enumerate(TEST + TRAIN):
        Image.new("RGB", (40, 30), (10 * i, 80, 160)).save(images / name)
    run = tmp_path / "run"
    (run / "features").mkdir(parents=True)
    for name in ("best_model.pth", "vocab.pkl"):
        shutil.copy2(tiny_run / name, run / name)
    splits = {"seed": 0, "train": TRAIN, "val": [], "test": TEST}
    (run / "splits.json").write_text(json.dumps(splits))
    index = {"encoder": "efficientnet_lite0", "image_dir": str(images)}
    (run / "features" / "features.json").write_text(json.dumps(index))
    return run, images


def names(paths) -> list[str]:
    return [Path(p).name for p in paths]


def test_a_sample_trained_model_gets_the_drawn_scenes(tiny_run, tmp_path):
    assert split_is_drawn(tiny_run)
    found = example_pictures(tiny_run, tmp_path / "shown", allow_photos=True)
    assert found.kind == "sample" and len(found.paths) == 4 and "drawn" in found.label
    assert all(p.parent == tmp_path / "shown" and p.suffix == ".png" for p in found.paths)


def test_a_flickr_run_with_its_data_gets_its_own_test_photos(flickr_run, tmp_path):
    run, images = flickr_run
    assert not split_is_drawn(run)
    found = example_pictures(run, tmp_path / "shown", allow_photos=True)
    assert found.kind == "test" and "test photos" in found.label
    assert names(found.paths) == TEST[:NUM_PHOTOS]  # the split's order, never a training one
    for copy in found.paths:  # copied where the server may serve them, byte for byte
        assert copy.parent == tmp_path / "shown"
        assert copy.read_bytes() == (images / copy.name).read_bytes()


def test_missing_test_photos_are_skipped(flickr_run):
    run, images = flickr_run
    (images / TEST[0]).unlink()
    assert names(choose_examples(run, allow_photos=True).paths) == TEST[1 : NUM_PHOTOS + 1]


def test_no_data_no_split_or_not_allowed_means_no_examples(flickr_run, tmp_path):
    run, images = flickr_run
    refused = choose_examples(run, allow_photos=False)
    assert refused.kind == "none" and not refused.paths and PHOTOS_ENV in refused.why
    shutil.rmtree(images)  # the run moved to a machine without its dataset
    gone = example_pictures(run, tmp_path / "shown", allow_photos=True)
    assert gone.kind == "none" and not gone.paths and "dataset folder" in gone.why
    assert not (tmp_path / "shown").exists()
    (run / "splits.json").unlink()
    assert choose_examples(run, allow_photos=True).why.endswith("has no splits.json test split")


def test_a_spaces_own_examples_come_first(flickr_run):
    run, _ = flickr_run
    (run / EXAMPLES_DIR).mkdir()
    Image.new("RGB", (8, 8)).save(run / EXAMPLES_DIR / "b.png")
    Image.new("RGB", (8, 8)).save(run / EXAMPLES_DIR / "a.jpg")
    (run / EXAMPLES_DIR / "notes.txt").write_text("not a picture")
    found = choose_examples(run, allow_photos=False)
    assert found.kind == "bundled" and names(found.paths) == ["a.jpg", "b.png"]


def test_photos_allowed_reads_the_environment():
    assert photos_allowed(True, {}) is True and photos_allowed(False, {}) is False
    assert photos_allowed(True, {PHOTOS_ENV: "0"}) is False
    assert photos_allowed(False, {PHOTOS_ENV: "1"}) is True
    with pytest.raises(StorytellerError, match=f"{PHOTOS_ENV} must be 1"):
        photos_allowed(True, {PHOTOS_ENV: "yes"})


def space(run: Path, dest: Path, **kwargs) -> tuple[Path, list[str]]:
    lines: list[str] = []
    return build_space_folder(run, dest, log=lines.append, **kwargs), lines


def test_deploy_ships_the_drawn_scenes_of_a_sample_run(tiny_run, tmp_path):
    folder, lines = space(tiny_run, tmp_path / "space")
    assert len(list((folder / EXAMPLES_DIR).glob("*.png"))) == 4
    assert "examples: 4 (sample)" in lines
    assert "drawn scenes" in (folder / "README.md").read_text()


def test_deploy_ships_test_photos_only_when_allowed(flickr_run, tmp_path, monkeypatch):
    run, _ = flickr_run
    monkeypatch.delenv(PHOTOS_ENV, raising=False)
    folder, lines = space(run, tmp_path / "default")  # a public Space: not by default
    assert not (folder / EXAMPLES_DIR).exists() and lines[0].startswith("examples: 0 (none)")
    folder, _ = space(run, tmp_path / "allowed", example_photos=True)
    assert names(sorted((folder / EXAMPLES_DIR).iterdir())) == sorted(TEST[:NUM_PHOTOS])
    assert "their authors' licences" in (folder / "README.md").read_text()
    monkeypatch.setenv(PHOTOS_ENV, "1")
    folder, _ = space(run, tmp_path / "by-env")
    assert len(list((folder / EXAMPLES_DIR).iterdir())) == NUM_PHOTOS

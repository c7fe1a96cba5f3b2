"""Serving helpers without a server: finding the model, decoding untrusted uploads."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from bad_images import exif_rotated, make_bad_images, upright_picture
from PIL import Image

from storyteller.errors import StorytellerError
from storyteller.features.cache import FeatureExtractor
from storyteller.features.images import UnreadableImage
from storyteller.serving.examples import render_examples
from storyteller.serving.server import (
    MAKE_MODEL_COMMAND,
    find_model_files,
    open_upload,
)


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    return make_bad_images(tmp_path_factory.mktemp("bad-images"))


def test_every_unusual_image_is_decoded_or_refused_clearly(bad_images):
    for kind, (path, expected) in bad_images.items():
        if expected is None:
            image = open_upload(path)
            assert image.mode == "RGB" and image.size == (224, 224), kind
        else:
            with pytest.raises(UnreadableImage, match=expected):
                open_upload(path)


def test_unusual_modes_keep_their_content(bad_images):
    reference = np.asarray(upright_picture().convert("L"), dtype=float)
    sixteen = np.asarray(open_upload(bad_images["sixteen_bit"][0]).convert("L"), dtype=float)
    # Scaled into 8 bits (by its peak), not clipped to white: the same picture, stretched.
    assert sixteen.max() == 255 and np.corrcoef(sixteen.ravel(), reference.ravel())[0, 1] > 0.99
    rgba = open_upload(bad_images["rgba"][0])
    assert rgba.getpixel((0, 0)) == (255, 255, 255)  # fully transparent corner -> white


def test_exif_rotation_is_applied_before_encoding(tmp_path):
    picture = upright_picture()
    sideways, exif = exif_rotated(picture)
    path = tmp_path / "rotated.png"  # lossless: the upright pixels must come back exactly
    sideways.save(path, exif=exif)
    assert np.array_equal(np.asarray(open_upload(path)), np.asarray(picture))

    extractor = FeatureExtractor("efficientnet_lite0", torch.device("cpu"))
    upright, rotated, raw = extractor([picture, open_upload(path), sideways])  # (3, 1280)
    assert torch.allclose(upright, rotated)
    assert not torch.allclose(upright, raw, atol=1e-2)  # ignoring EXIF would change the caption


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    buffer = io.BytesIO()
    upright_picture().resize((2400, 1800)).save(buffer, "JPEG")
    (tmp_path / "big.jpg").write_bytes(buffer.getvalue())
    image = open_upload(tmp_path / "big.jpg")
    assert min(image.size) >= 512 and image.size[0] < 2400  # DCT-scaled, still >= 2x the crop


def test_missing_upload(tmp_path):
    with pytest.raises(UnreadableImage, match="upload it again"):
        open_upload(tmp_path / "gone.jpg")


def make_run(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "best_model.pth").write_bytes(b"x")
    (folder / "vocab.pkl").write_bytes(b"x")
    return folder


def test_model_search_order(tmp_path):
    app_dir, cwd = tmp_path / "space", tmp_path / "cwd"
    app_dir.mkdir()
    cwd.mkdir()
    with pytest.raises(StorytellerError, match=MAKE_MODEL_COMMAND):
        find_model_files(app_dir, env={}, cwd=cwd)
    make_run(cwd / "outputs")
    assert find_model_files(app_dir, env={}, cwd=cwd).source == "./outputs"
    make_run(app_dir)
    found = find_model_files(app_dir, env={}, cwd=cwd)
    assert found.source == "beside app.py" and found.checkpoint == app_dir / "best_model.pth"
    run = make_run(tmp_path / "run")
    found = find_model_files(app_dir, env={"STORYTELLER_RUN_DIR": str(run)}, cwd=cwd)
    assert found.source == "STORYTELLER_RUN_DIR" and found.vocab == run / "vocab.pkl"
    # An explicit folder is the only place looked at: a typo is reported, not papered over.
    with pytest.raises(StorytellerError, match="STORYTELLER_RUN_DIR=.*typo.*run-all --out"):
        find_model_files(app_dir, env={"STORYTELLER_RUN_DIR": str(tmp_path / "typo")}, cwd=cwd)


def test_examples_are_drawn_once_and_reused(tmp_path):
    first = render_examples(tmp_path, indices=(0, 1))
    stamps = [p.stat().st_mtime_ns for p in first]
    again = render_examples(tmp_path, indices=(0, 1))
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps
    assert all(Image.open(p).size == (320, 320) for p in first)


def test_torch_threads_from_the_environment():
    from storyteller.serving.server import configured_threads

    assert configured_threads(env={}) is None  # torch's default
    assert configured_threads(env={"STORYTELLER_TORCH_THREADS": "3"}) == 3
    for bad in ("many", "0"):
        with pytest.raises(StorytellerError, match="STORYTELLER_TORCH_THREADS"):
            configured_threads(env={"STORYTELLER_TORCH_THREADS": bad})

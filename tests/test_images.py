"""Opening photos nobody vouches for (storyteller.features.images): only regular files, and a
size bound that holds after the encoder's resize, not just in the file."""

import contextlib
import socket

import pytest
import torch
from bad_images import make_fifo, returns_within
from PIL import Image

from storyteller.features.cache import FeatureExtractor
from storyteller.features.encoder_specs import ENCODERS
from storyteller.features.encoders import build_encoder
from storyteller.features.images import (
    MAX_ASPECT_RATIO,
    UnreadableImage,
    load_rgb,
    open_image,
)
from storyteller.figures.attention_maps import encoder_view
from storyteller.serving.server import open_upload


@pytest.mark.parametrize("size", [(16000, 1), (1, 4000), (MAX_ASPECT_RATIO * 10 + 1, 10)])
def test_a_long_thin_image_is_refused_before_it_is_resized(tmp_path, size):
    """Resizing the short side of 16000 x 1 to 256 makes 256 x 4,096,000 pixels (3 GB)."""
    path = tmp_path / "strip.png"
    Image.new("RGB", size).save(path)
    pattern = f"too long and thin .*{size[0]} x {size[1]} pixels"
    for opener in (open_image, open_upload):
        with pytest.raises(UnreadableImage, match=pattern):
            returns_within(10, opener, path)
    extractor = FeatureExtractor(
        "efficientnet_lite0", torch.device("cpu"), build_encoder("efficientnet_lite0", False)
    )
    in_memory = Image.new("RGB", size)  # given as a picture: the encoder refuses it too
    for refuse in (load_rgb, extractor, lambda im: encoder_view(im, extractor.spec.preprocessing)):
        with pytest.raises(UnreadableImage, match=pattern):
            returns_within(10, refuse, [in_memory] if refuse is extractor else in_memory)
    with pytest.raises(UnreadableImage, match=pattern):  # given as a file, as notebooks do
        returns_within(10, extractor, [path])


def test_the_extractor_takes_files_and_pictures_alike(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (320, 240), (200, 40, 90)).save(path)
    extractor = FeatureExtractor(
        "efficientnet_lite0", torch.device("cpu"), build_encoder("efficientnet_lite0", False)
    )
    with Image.open(path) as picture:
        assert torch.equal(extractor([path, str(path)]), extractor([picture, picture]))


@pytest.mark.parametrize("size", [(1024, 256), (MAX_ASPECT_RATIO * 10, 10), (90, 1800)])
def test_panoramas_up_to_the_ratio_are_opened(tmp_path, size):
    path = tmp_path / "panorama.jpg"
    Image.new("RGB", size, (90, 120, 200)).save(path)
    assert open_image(path).size == size
    preprocessing = ENCODERS["efficientnet_lite0"].preprocessing
    assert encoder_view(open_image(path), preprocessing).size == (224, 224)


def test_only_regular_files_are_opened(tmp_path):
    """A FIFO named x.jpg blocked `features` and `caption` until they were killed."""
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    cases = {make_fifo(tmp_path): "a FIFO", folder: "a folder", "/dev/zero": "a device"}
    with socket.socket(socket.AF_UNIX) as listening:
        with contextlib.suppress(OSError):  # a temp path too long for a socket's name (macOS)
            listening.bind(str(tmp_path / "socket.jpg"))
            cases[tmp_path / "socket.jpg"] = "a socket"
        for path, kind in cases.items():
            for opener in (open_image, open_upload):
                with pytest.raises(UnreadableImage, match=f"this is {kind}.*, not a regular file"):
                    returns_within(10, opener, path)


def test_a_missing_file_is_one_line():
    with pytest.raises(UnreadableImage, match="does not exist: check its name, or upload it"):
        open_image("/nonexistent/photo.jpg")

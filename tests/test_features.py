import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from storyteller.data import load_dataset
from storyteller.encoders import ENCODERS, build_encoder, resolve_encoder
from storyteller.errors import StorytellerError
from storyteller.features import FeatureExtractor, extract_features, load_feature_cache, load_rgb


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_outputs_its_registered_dim(name):
    encoder = build_encoder(name, pretrained=False)
    with torch.inference_mode():
        assert encoder(torch.randn(2, 3, 224, 224)).shape == (2, ENCODERS[name].dim)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_unknown_encoder_lists_choices():
    with pytest.raises(StorytellerError, match="choose one of: resnet50"):
        build_encoder("vgg99")


def test_missing_weights_name_the_offline_choice(monkeypatch):
    from urllib.error import URLError

    import torchvision.models

    def offline(**_):
        raise URLError("no internet")

    monkeypatch.setattr(torchvision.models, "resnet50", offline)
    with pytest.raises(StorytellerError, match="--encoder efficientnet_lite0"):
        build_encoder("resnet50")
    messages = []
    name, encoder = resolve_encoder(None, log=messages.append)  # the default falls back, loudly
    assert name == "efficientnet_lite0" and "falling back" in messages[0]


def test_cache_layout_dtype_and_index(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)
    extract_features(
        dataset.image_dir,
        dataset.images,
        tmp_path,
        "efficientnet_lite0",
        batch_size=16,
        num_workers=0,
    )
    array = np.load(tmp_path / "features.npy")
    meta = json.loads((tmp_path / "features.json").read_text())
    assert array.dtype == np.float16 and array.shape == (40, 1280)
    assert meta["encoder"] == "efficientnet_lite0" and meta["dim"] == 1280 and meta["done"] == 40
    assert meta["images"] == sorted(dataset.images) and meta["preprocessing"]["crop"] == 224
    cache = load_feature_cache(tmp_path)
    assert cache.features.dtype == torch.float32 and cache.features.shape == (40, 1280)
    # The cached vector equals encoding that image on its own.
    extractor = FeatureExtractor("efficientnet_lite0")
    name = cache.names[7]
    single = extractor([Image.open(dataset.image_dir / name)])[0]
    assert torch.allclose(single, cache.features[cache.index[name]], atol=2e-2, rtol=1e-2)


def test_interrupted_extraction_resumes_where_it_stopped(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)

    def extract(out, **kwargs):
        extract_features(
            dataset.image_dir,
            dataset.images,
            out,
            "efficientnet_lite0",
            batch_size=8,
            num_workers=0,
            **kwargs,
        )

    def stop_after_two_batches(rows_done):
        if rows_done >= 16:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        extract(tmp_path, on_batch=stop_after_two_batches)
    assert json.loads((tmp_path / "features.json").read_text())["done"] == 16
    with pytest.raises(StorytellerError, match="incomplete"):
        load_feature_cache(tmp_path)
    seen = []
    extract(tmp_path, on_batch=seen.append)
    assert seen == [24, 32, 40]  # only the missing rows were encoded
    extract(tmp_path / "fresh")
    resumed, fresh = load_feature_cache(tmp_path), load_feature_cache(tmp_path / "fresh")
    assert torch.allclose(resumed.features, fresh.features)


def test_cache_from_another_encoder_is_refused(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)
    names = dataset.images[:4]
    extract_features(dataset.image_dir, names, tmp_path, "efficientnet_lite0", num_workers=0)
    with pytest.raises(StorytellerError, match="'efficientnet_lite0' features, not 'resnet18'"):
        extract_features(
            dataset.image_dir,
            names,
            tmp_path,
            "resnet18",
            num_workers=0,
            encoder=build_encoder("resnet18", pretrained=False),
        )
    with pytest.raises(StorytellerError, match="different list of images"):
        extract_features(
            dataset.image_dir, dataset.images[:5], tmp_path, "efficientnet_lite0", num_workers=0
        )


def test_unreadable_images_are_skipped_and_reported(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)
    images = tmp_path / "Images"
    images.mkdir()
    good = dataset.images[:3]
    for name in good:
        (images / name).write_bytes((dataset.image_dir / name).read_bytes())
    (images / "broken.jpg").write_bytes(b"this is not a jpeg")
    truncated = (dataset.image_dir / good[0]).read_bytes()
    (images / "truncated.jpg").write_bytes(truncated[: len(truncated) // 3])
    with pytest.warns(UserWarning, match="2 unreadable image"):
        extract_features(
            images,
            [*good, "broken.jpg", "truncated.jpg"],
            tmp_path / "f",
            "efficientnet_lite0",
            num_workers=0,
        )
    cache = load_feature_cache(tmp_path / "f")
    assert cache.names == sorted(good)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_load_rgb_converts_every_mode(mode):
    image = (
        Image.new("RGB", (32, 16), (200, 30, 40)).convert(mode)
        if mode != "I;16"
        else Image.new("I;16", (32, 16), 40000)
    )
    rgb = load_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (32, 16)


def test_load_rgb_applies_exif_rotation(tmp_path):
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_rgb(Image.open(path)).size == (20, 40)

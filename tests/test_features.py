import errno
import io
import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch
from bad_images import make_bad_images, make_fifo, returns_within
from conftest import FLICKR8K_1K, cli
from PIL import Image

from storyteller.data.captions import load_dataset
from storyteller.errors import StorytellerError
from storyteller.features import cache as cache_module
from storyteller.features.cache import FeatureExtractor, extract_features
from storyteller.features.cache_format import load_feature_cache
from storyteller.features.encoder_specs import ENCODERS
from storyteller.features.encoders import build_encoder, resolve_encoder
from storyteller.features.extraction_sizes import (
    CPU_BATCH_SIZE,
    CPU_NUM_WORKERS,
    GPU_BATCH_SIZE,
    GPU_NUM_WORKERS,
    extraction_sizes,
)
from storyteller.features.images import load_rgb, open_image


class _Interrupt(Exception):
    pass


def test_unknown_layout_lists_choices():
    with pytest.raises(StorytellerError, match="choose one of: pooled, grid"):
        ENCODERS["resnet18"].shape("patches")


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


@pytest.mark.parametrize("layout", ["pooled", "grid"])
def test_interrupted_extraction_resumes_where_it_stopped(tiny_data, tmp_path, device, layout):
    dataset = load_dataset(tiny_data)

    def extract(out, **kwargs):
        extract_features(
            dataset.image_dir,
            dataset.images,
            out,
            "efficientnet_lite0",
            batch_size=8,
            num_workers=0,
            device=device,
            layout=layout,
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
    rows = list(range(40))
    assert torch.allclose(resumed.batch(rows, layout), fresh.batch(rows, layout))


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


def test_fifos_and_long_thin_images_are_skipped_and_counted_on_both_paths(
    tiny_data, tmp_path, device
):
    """A FIFO named x.jpg stalled `features` until it was killed, and one 4000 x 1 image took
    1.5 GB: the encoder's resize makes its short side 256 and its long side 256,000."""
    dataset = load_dataset(tiny_data)
    folder = tmp_path / "Images"
    folder.mkdir()
    good = sorted(dataset.images)[:3]
    for name in good:
        (folder / name).write_bytes((dataset.image_dir / name).read_bytes())
    Image.new("RGB", (16000, 8)).save(folder / "wide.jpg")  # a JPEG: the device path's own check
    Image.new("RGB", (1, 4000)).save(folder / "strip.png")
    Image.new("RGB", (1024, 256), (90, 120, 200)).save(folder / "panorama.jpg")
    make_fifo(folder, "x.jpg")
    names = [*good, "panorama.jpg", "strip.png", "wide.jpg", "x.jpg"]
    refused = {"strip.png", "wide.jpg", "x.jpg"}
    with pytest.warns(UserWarning, match=f"{len(refused)} unreadable image"):
        pil, on_device = returns_within(
            60, _extract_both_ways, folder, names, tmp_path, device, num_workers=0
        )
    assert set(pil.meta["unreadable"]) == set(on_device.meta["unreadable"]) == refused
    assert pil.names == on_device.names == sorted(set(names) - refused)


def _disk_full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_folder(tiny_data, tmp_path, monkeypatch):
    """`features` on a full 10 MB file system died of SIGBUS (exit 135) without a word: the
    cache was written through a memory map of a sparse file. Its space is now allocated
    first, and a full disk, then or in the middle, is one line naming the folder."""
    dataset = load_dataset(tiny_data)
    names = sorted(dataset.images)[:8]
    out = tmp_path / "f"

    def extract(folder=out):
        extract_features(
            dataset.image_dir, names, folder, "efficientnet_lite0", batch_size=4, num_workers=0
        )

    monkeypatch.setattr(os, "posix_fallocate", _disk_full, raising=False)
    with pytest.raises(
        StorytellerError,
        match=f"could not write the feature cache .*features.npy.* in {out}: no space",
    ):
        extract()
    monkeypatch.undo()
    write_json = cache_module.write_json

    def full_after_one_batch(path, meta):
        if meta["done"] > 4:
            _disk_full()
        write_json(path, meta)

    monkeypatch.setattr(cache_module, "write_json", full_after_one_batch)
    with pytest.raises(
        StorytellerError,
        match=f"could not write the feature cache .*features.json.* in {out}: no space",
    ):
        extract()
    monkeypatch.undo()
    assert json.loads((out / "features.json").read_text())["done"] == 4
    extract()  # space freed: it resumes
    extract(tmp_path / "fresh")
    resumed, fresh = load_feature_cache(out), load_feature_cache(tmp_path / "fresh")
    assert resumed.names == names and torch.equal(resumed.features, fresh.features)


def test_features_on_a_full_file_system_is_one_line(tiny_data, tmp_path):
    """The issue's case itself, on a real 1 MB tmpfs (root only): exit 2 and one line, not
    SIGBUS."""
    if getattr(os, "geteuid", lambda: 1)() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        run = small / "run"
        flags = ["--encoder", "efficientnet_lite0", "--layout", "grid", "--workers", "0"]
        result = cli("features", "--data", str(tiny_data), "--out", str(run), *flags)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    assert result.returncode == 2, result.stderr  # 40 grid rows: 5 MB
    assert result.stderr.strip().splitlines() == [
        f"error: could not write the feature cache (features.npy, features.json) in "
        f"{run / 'features'}: no space left on device; free some space there and run the same "
        "command again (finished files are kept)"
    ]


class _OutOfRange(torch.nn.Module):
    """A fake encoder, batches of 4: the first image of every batch has one feature of 1e6
    (beyond float16's 65504) and the second image of the second batch a NaN."""

    def __init__(self, layout: str):
        super().__init__()
        self.layout, self.batches = layout, 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W)
        shape = (len(pixels), 1280) if self.layout == "pooled" else (len(pixels), 49, 1280)
        out = torch.full(shape, 0.5)  # (B, dim) or (B, 49, dim)
        out[0].view(-1)[7] = 1e6
        if self.batches == 1:
            out[1].view(-1)[3] = float("nan")
        self.batches += 1
        return out


@pytest.mark.parametrize("layout", ["pooled", "grid"])
def test_features_float16_cannot_hold_are_skipped_counted_and_reported(tiny_data, tmp_path, layout):
    dataset = load_dataset(tiny_data)
    names = sorted(dataset.images)[:10]
    encoder, out = _OutOfRange(layout), tmp_path / "f"

    def stop_after_one_batch(rows_done):
        if rows_done == 4:
            raise _Interrupt

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy "overflow in cast": the count says it
        with pytest.raises(_Interrupt):  # resumed below: the count carries over
            extract_features(
                dataset.image_dir, names, out, "efficientnet_lite0", 4, 0, encoder=encoder,
                layout=layout, on_batch=stop_after_one_batch,
            )  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        extract_features(
            dataset.image_dir, names, out, "efficientnet_lite0", 4, 0, encoder=encoder,
            layout=layout,
        )  # fmt: skip
    bad = [names[0], names[4], names[5], names[8]]
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("4 image(s) skipped whose efficientnet_lite0 features float16")
    assert "max |value| 1e+06, beyond float16's 65504" in message
    assert "use trained weights or another encoder" in message
    meta = json.loads((out / "features.json").read_text())
    assert meta["non_finite"] == bad and meta["non_finite_peak"] == 1e6
    on_disk = np.load(out / "features.npy")
    assert np.isfinite(on_disk).all()  # the skipped rows are zeros, never inf or NaN
    cache = load_feature_cache(out)
    assert cache.names == [n for n in names if n not in bad]
    assert bool(torch.isfinite(cache.features).all())


# --------------------------------------------------------------------------------------------
# The grid layout: (N, h*w, dim) per cache, memory-mapped, and pooled vectors from its means
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def both_layouts(tiny_data, tmp_path_factory, device):
    """The tiny sample extracted twice on the lane's device -> (pooled folder, grid folder)."""
    dataset = load_dataset(tiny_data)
    out = tmp_path_factory.mktemp("layouts")
    for layout in ("pooled", "grid"):
        extract_features(
            dataset.image_dir,
            dataset.images,
            out / layout,
            "efficientnet_lite0",
            batch_size=16,
            num_workers=0,
            device=device,
            layout=layout,
        )
    return out / "pooled", out / "grid"


def test_grid_cache_layout_and_index(both_layouts, tiny_data, device):
    _, folder = both_layouts
    array = np.load(folder / "features.npy", mmap_mode="r")
    meta = json.loads((folder / "features.json").read_text())
    assert array.dtype == np.float16 and array.shape == (40, 49, 1280)
    assert meta["layout"] == "grid" and meta["grid"] == [7, 7] and meta["dim"] == 1280
    assert meta["version"] == 2 and meta["done"] == 40
    cache = load_feature_cache(folder)
    assert (cache.layout, cache.grid, cache.dim, len(cache)) == ("grid", (7, 7), 1280, 40)
    rows = [3, 0, 17]
    grid = cache.batch(rows, "grid")  # (3, 49, 1280)
    assert grid.dtype == torch.float32 and grid.shape == (3, 49, 1280)
    assert torch.equal(grid, torch.from_numpy(array[rows].astype(np.float32)))
    as_stored = cache.batch(rows, "grid", dtype=torch.float16)  # no conversion on the CPU
    assert as_stored.dtype == torch.float16 and torch.equal(
        as_stored, torch.from_numpy(array[rows])
    )
    # The cached grid equals encoding that image on its own.
    extractor = FeatureExtractor("efficientnet_lite0", device, layout="grid")
    name = cache.names[7]
    single = extractor([Image.open(load_dataset(tiny_data).image_dir / name)])[0]  # (49, 1280)
    assert torch.allclose(single, cache.batch([cache.index[name]], "grid")[0], atol=2e-2, rtol=1e-2)


def test_grid_cache_is_memory_mapped_not_loaded(both_layouts):
    import pickle

    _, folder = both_layouts
    cache = load_feature_cache(folder)
    assert isinstance(cache.array, np.memmap) and cache.array.mode == "r"
    assert cache._pooled is None  # nothing read until pooled vectors are asked for
    # Sent to a worker process without the file's contents; mapped again there.
    sent = pickle.dumps(cache)
    assert len(sent) < cache.array.nbytes / 10
    received = pickle.loads(sent)
    assert isinstance(received.array, np.memmap)
    assert torch.equal(received.batch([5, 6], "grid"), cache.batch([5, 6], "grid"))


def test_pooled_vectors_from_a_grid_cache_match_a_pooled_cache(both_layouts):
    pooled, grid = (load_feature_cache(folder) for folder in both_layouts)
    assert pooled.names == grid.names and pooled.layout == "pooled"
    rows = torch.tensor([4, 9, 0])
    from_grid = grid.batch(rows)  # (3, 1280): the default layout is pooled
    assert from_grid.shape == (3, 1280)
    assert torch.allclose(from_grid, grid.batch(rows, "grid").mean(dim=1))
    # Within float16 rounding of the features (about 3 decimal digits).
    assert torch.allclose(grid.features, pooled.features, rtol=2e-3, atol=2e-3)
    assert torch.equal(pooled.batch(rows), pooled.features[rows])


def test_a_grid_from_a_pooled_cache_is_a_clear_error(both_layouts):
    pooled = load_feature_cache(both_layouts[0])
    with pytest.raises(StorytellerError, match="holds pooled vectors, not the grid.*--layout grid"):
        pooled.batch([0, 1], "grid")
    with pytest.raises(StorytellerError, match="choose one of: pooled, grid"):
        pooled.batch([0, 1], "patches")


def test_an_old_cache_without_a_layout_loads_as_pooled(both_layouts, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(both_layouts[0], old)
    meta = json.loads((old / "features.json").read_text())
    del meta["layout"]
    meta["version"] = 1
    (old / "features.json").write_text(json.dumps(meta))
    cache = load_feature_cache(old)
    assert cache.layout == "pooled" and cache.grid is None
    assert torch.equal(cache.features, load_feature_cache(both_layouts[0]).features)
    with pytest.raises(StorytellerError, match="holds pooled features, not grid"):
        extract_features(
            meta["image_dir"], meta["images"], old, "efficientnet_lite0", layout="grid"
        )
    # Asking for what it holds accepts it (complete: nothing is encoded again).
    extract_features(meta["image_dir"], meta["images"], old, "efficientnet_lite0")


def test_features_command_keeps_the_layout_it_finds_and_refuses_another(
    both_layouts, tiny_data, tmp_path, capsys
):
    from storyteller import pipeline
    from storyteller.cli import main

    shutil.copytree(both_layouts[1], tmp_path / "features")
    # No --encoder, no --layout: the cache's own (complete, so nothing is encoded again).
    pipeline.features_step(tiny_data, tmp_path, log=lambda _: None)
    assert load_feature_cache(tmp_path / "features").layout == "grid"
    args = ["features", "--data", str(tiny_data), "--out", str(tmp_path)]
    assert main([*args, "--layout", "grid"]) == 0
    assert main([*args, "--layout", "pooled"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "holds grid features, not pooled" in error


def test_cache_in_another_layout_is_refused_until_overwritten(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)
    names = dataset.images[:4]

    def extract(layout, **kwargs):
        extract_features(
            dataset.image_dir,
            names,
            tmp_path,
            "efficientnet_lite0",
            num_workers=0,
            layout=layout,
            **kwargs,
        )

    extract("grid")
    with pytest.raises(StorytellerError, match="holds grid features, not pooled.*--overwrite"):
        extract("pooled")
    extract("pooled", overwrite=True)
    assert load_feature_cache(tmp_path).layout == "pooled"
    with pytest.raises(StorytellerError, match="holds pooled features, not grid.*--overwrite"):
        extract("grid")


def test_unreadable_images_are_left_out_of_a_grid_cache(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)
    images = tmp_path / "Images"
    images.mkdir()
    good = sorted(dataset.images)[:3]
    for name in good:
        (images / name).write_bytes((dataset.image_dir / name).read_bytes())
    (images / "0_broken.jpg").write_bytes(b"this is not a jpeg")  # sorts first: row 0 on disk
    with pytest.warns(UserWarning, match="1 unreadable image"):
        extract_features(
            images, [*good, "0_broken.jpg"], tmp_path / "f", "efficientnet_lite0", layout="grid"
        )
    cache = load_feature_cache(tmp_path / "f")
    assert cache.names == good
    on_disk = torch.from_numpy(np.load(tmp_path / "f" / "features.npy")[1:].astype(np.float32))
    assert torch.equal(cache.batch([0, 1, 2], "grid"), on_disk)  # rows skip the broken one
    assert torch.allclose(cache.features, on_disk.mean(dim=1))


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


# --------------------------------------------------------------------------------------------
# Decoding on the device (decode_on="device"): tested on the lane's device, CPU included
# --------------------------------------------------------------------------------------------


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (N, dim) feature matrices -> (N,)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def _extract_both_ways(image_dir, names, out, device, **kwargs):
    """The same images through the PIL path and the device path -> the two caches."""
    for decode_on in ("cpu", "device"):
        extract_features(
            image_dir,
            names,
            out / decode_on,
            "efficientnet_lite0",
            device=device,
            decode_on=decode_on,
            **kwargs,
        )
    return load_feature_cache(out / "cpu"), load_feature_cache(out / "device")


def test_tensor_preprocessing_matches_pil_within_one_grey_level(tiny_data, device):
    dataset = load_dataset(tiny_data)
    preprocessing = ENCODERS["efficientnet_lite0"].preprocessing
    paths = [dataset.image_dir / name for name in sorted(dataset.images)[:6]]
    pil = torch.stack([preprocessing.transform()(open_image(path)) for path in paths])
    decoded = [
        torch.from_numpy(np.array(open_image(path))).permute(2, 0, 1).to(device)  # (3, H, W)
        for path in paths
    ]
    pixels = preprocessing.tensor_transform(decoded).cpu()  # (6, 3, 224, 224)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    grey_levels = ((pixels - pil) * std * 255).abs()
    assert pixels.shape == pil.shape and grey_levels.max() <= 1.01  # measured: 1.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_tensors_matches_pil(orientation, device):
    from PIL import ImageOps

    from storyteller.features.batch_decoding import apply_exif_orientation

    array = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(buffer)))  # (H', W', 3)
    tensor = torch.from_numpy(array).permute(2, 0, 1).to(device)  # (3, 5, 7)
    upright = apply_exif_orientation(tensor, orientation).permute(1, 2, 0).cpu().numpy()
    assert upright.shape == expected.shape and (upright == expected).all()


def test_device_decoding_matches_the_pil_path(tiny_data, tmp_path, device):
    dataset = load_dataset(tiny_data)
    pil, on_device = _extract_both_ways(
        dataset.image_dir, dataset.images, tmp_path, device, batch_size=16, num_workers=0
    )
    assert pil.names == on_device.names
    assert _cosines(pil.features, on_device.features).min() > 0.99  # measured on CPU: 0.9999
    assert pil.meta["decode"] == ["pil"] and "pil_fallbacks" not in pil.meta
    assert on_device.meta["decode"] == [f"torchvision:{device.type}"]
    assert on_device.meta["pil_fallbacks"] == 0  # every sample image is a plain JPEG


@pytest.mark.skipif(not FLICKR8K_1K.is_dir(), reason="needs ../shared/data/flickr8k-1k")
def test_device_decoding_matches_the_pil_path_on_real_photos(tmp_path, device):
    dataset = load_dataset(FLICKR8K_1K)
    names = sorted(dataset.images)[:32]
    pil, on_device = _extract_both_ways(dataset.image_dir, names, tmp_path, device)
    cosines = _cosines(pil.features, on_device.features)
    assert pil.names == on_device.names == names
    assert cosines.min() > 0.99  # measured on CPU: min 0.9986, mean 0.9996 (64 photos)


def _odd_files(tiny_data, folder) -> tuple[list[str], set[str]]:
    """Good JPEGs plus every kind of awkward file -> (names, the ones nobody can read)."""
    dataset = load_dataset(tiny_data)
    bad = make_bad_images(folder)
    del bad["huge"]  # a valid 9000 x 9000 PNG: slow, and it adds nothing here
    good = sorted(dataset.images)[:5]
    for name in good:
        (folder / name).write_bytes((dataset.image_dir / name).read_bytes())
    unreadable = {bad[kind][0].name for kind in ("corrupted", "truncated", "not_an_image")}
    unreadable |= {bad["empty"][0].name, bad["bomb"][0].name, bad["wide"][0].name}
    return good + sorted(path.name for path, _ in bad.values()), unreadable


def test_device_decoding_falls_back_to_pil_and_reports_unreadable_files(
    tiny_data, tmp_path, device, monkeypatch
):
    import torchvision.io

    folder = tmp_path / "Images"
    names, unreadable = _odd_files(tiny_data, folder)
    # One valid JPEG that the device decoder rejects: PIL must decode it instead.
    rejected = (folder / names[0]).read_bytes()
    decode_jpeg = torchvision.io.decode_jpeg

    def picky_decode(data, *args, **kwargs):
        for item in data if isinstance(data, list) else [data]:
            if item.numel() == len(rejected):
                raise RuntimeError("the device decoder rejects this one")
        return decode_jpeg(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky_decode)
    with pytest.warns(UserWarning, match=f"{len(unreadable)} unreadable image"):
        pil, on_device = _extract_both_ways(
            folder, names, tmp_path, device, batch_size=8, num_workers=2
        )
    assert set(on_device.meta["unreadable"]) == set(pil.meta["unreadable"]) == unreadable
    assert on_device.names == pil.names == sorted(set(names) - unreadable)
    assert _cosines(pil.features, on_device.features).min() > 0.99
    # PIL decoded: the rejected JPEG, the CMYK JPEG, and the PNGs and GIF that are readable.
    fallbacks = {names[0], "cmyk.jpg", "rgba.png", "sixteen_bit.png", "palette.gif"}
    assert on_device.meta["pil_fallbacks"] == len(fallbacks)


def test_device_decoding_one_image_at_a_time_on_older_torchvision(
    tiny_data, tmp_path, device, monkeypatch
):
    """torchvision < 0.19 decodes no lists: the same features, image by image."""
    import storyteller.features.batch_decoding as features

    dataset = load_dataset(tiny_data)
    names = sorted(dataset.images)[:8]
    extract_features(
        dataset.image_dir,
        names,
        tmp_path / "batched",
        "efficientnet_lite0",
        device=device,
        decode_on="device",
        num_workers=0,
    )
    monkeypatch.setattr(features, "_decode_jpeg_accepts_list", lambda: False)
    extract_features(
        dataset.image_dir,
        names,
        tmp_path / "single",
        "efficientnet_lite0",
        device=device,
        decode_on="device",
        num_workers=0,
    )
    batched, single = (
        load_feature_cache(tmp_path / "batched"),
        load_feature_cache(tmp_path / "single"),
    )
    assert torch.allclose(batched.features, single.features)


def test_device_decoding_resumes_and_records_both_decoders(tiny_data, tmp_path, device):
    dataset = load_dataset(tiny_data)

    def extract(out, decode_on, **kwargs):
        extract_features(
            dataset.image_dir,
            dataset.images,
            out,
            "efficientnet_lite0",
            batch_size=8,
            num_workers=0,
            device=device,
            decode_on=decode_on,
            **kwargs,
        )

    def stop_after_two_batches(rows_done):
        if rows_done >= 16:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        extract(tmp_path / "a", "device", on_batch=stop_after_two_batches)
    assert json.loads((tmp_path / "a" / "features.json").read_text())["done"] == 16
    seen = []
    extract(tmp_path / "a", "device", on_batch=seen.append)
    assert seen == [24, 32, 40]  # only the missing rows were decoded and encoded
    extract(tmp_path / "fresh", "device")
    resumed, fresh = load_feature_cache(tmp_path / "a"), load_feature_cache(tmp_path / "fresh")
    assert torch.allclose(resumed.features, fresh.features)
    assert resumed.meta["decode"] == [f"torchvision:{device.type}"]

    # A cache begun by PIL (before decoders were recorded) finishes on the device: compatible.
    with pytest.raises(_Interrupt):
        extract(tmp_path / "b", "cpu", on_batch=stop_after_two_batches)
    index = tmp_path / "b" / "features.json"
    meta = json.loads(index.read_text())
    del meta["decode"]
    index.write_text(json.dumps(meta))
    extract(tmp_path / "b", "device")
    mixed = load_feature_cache(tmp_path / "b")
    assert mixed.meta["decode"] == ["pil", f"torchvision:{device.type}"]
    assert _cosines(mixed.features, fresh.features).min() > 0.99


def test_decode_on_choices():
    from storyteller.features.batch_decoding import resolve_decode_on

    assert resolve_decode_on("auto", torch.device("cpu")) == "cpu"
    assert resolve_decode_on("auto", torch.device("cuda")) == "device"
    assert resolve_decode_on("device", torch.device("cpu")) == "device"
    with pytest.raises(StorytellerError, match="choose one of: auto, cpu, device"):
        resolve_decode_on("gpu", torch.device("cpu"))


def test_extraction_logs_a_few_plain_lines_without_a_terminal(tiny_data, tmp_path, capsys):
    """Redirected, extraction shows its progress in ten lines (one per 10%), not bar redraws
    and not nothing."""
    dataset = load_dataset(tiny_data)
    capsys.readouterr()
    extract_features(
        dataset.image_dir,
        dataset.images,
        tmp_path,
        "efficientnet_lite0",
        batch_size=4,
        num_workers=0,
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("features (")]
    assert "\r" not in err
    assert [line.split()[3] for line in lines] == [f"{n}/40" for n in range(4, 41, 4)]


@pytest.mark.parametrize(
    ("on_gpu", "cpus", "expected"),
    [
        (False, 2, (CPU_BATCH_SIZE, CPU_NUM_WORKERS)),
        (False, 32, (CPU_BATCH_SIZE, CPU_NUM_WORKERS)),  # the network, not decoding, is slow
        (True, 2, (GPU_BATCH_SIZE, 2)),  # never more workers than cores
        (True, 32, (GPU_BATCH_SIZE, GPU_NUM_WORKERS)),  # byte readers: a few are enough
    ],
)
def test_extraction_sizes_are_one_choice_for_cli_and_notebooks(on_gpu, cpus, expected):
    sizes = extraction_sizes(on_gpu, cpus)
    assert (sizes.batch_size, sizes.num_workers) == expected
    from storyteller.notebook.hardware import adapted_sizes

    notebook = adapted_sizes(gpu_count=2 if on_gpu else 0, cpu_count=cpus)
    assert (notebook.feature_batch_size, notebook.num_workers) == expected


def test_extraction_uses_those_sizes_when_none_are_given(tiny_data, tmp_path, monkeypatch):
    seen = {}
    real_loader = cache_module.DataLoader

    def spy(*args, **kwargs):
        seen.update(batch_size=kwargs["batch_size"], num_workers=kwargs["num_workers"])
        return real_loader(*args, **{**kwargs, "num_workers": 0})

    monkeypatch.setattr(cache_module, "DataLoader", spy)
    dataset = load_dataset(tiny_data)
    extract_features(dataset.image_dir, dataset.images[:3], tmp_path, "efficientnet_lite0")
    chosen = extraction_sizes(on_gpu=False)
    assert seen == {"batch_size": chosen.batch_size, "num_workers": chosen.num_workers}

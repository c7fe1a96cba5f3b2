"""Extract one feature vector per image with a frozen CNN, once, into a resumable cache.

The cache is two files in the output folder:

* ``features.npy``  - float16 array of shape (num_images, dim), memory-mapped while written;
* ``features.json`` - the index: image names (row order), the encoder, its dimension and
  preprocessing, how many rows are done, and which images could not be read.

An interrupted extraction continues from the last finished batch. A cache made by another
encoder, or for another list of images, is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .encoders import build_encoder, get_encoder_spec
from .errors import StorytellerError
from .runtime import autocast, get_device, write_json

FEATURES_FILE = "features.npy"
INDEX_FILE = "features.json"
CACHE_VERSION = 1
# On a CPU the network, not JPEG decoding, is the bottleneck: small batches, one worker
# measured fastest (bench/extraction_throughput.py).
CPU_BATCH_SIZE = 4
CPU_NUM_WORKERS = 1


def load_rgb(source) -> Image.Image:
    """Open an image as upright 8-bit RGB: EXIF rotation applied; grey, RGBA, CMYK, 16-bit
    and palette images converted. Raises ``OSError``/``ValueError`` for unreadable files."""
    image = source if isinstance(source, Image.Image) else Image.open(source)
    image.load()
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clipping to white.
        array = np.asarray(image, dtype=np.float32)
        peak = float(array.max()) or 1.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


class FeatureExtractor:
    """A frozen encoder plus its preprocessing, on one device: PIL images -> (B, dim)."""

    def __init__(self, encoder_name: str, device: torch.device | None = None, encoder=None):
        self.spec = get_encoder_spec(encoder_name)
        self.device = device or get_device()
        self.transform = self.spec.preprocessing.transform()
        encoder = encoder if encoder is not None else build_encoder(encoder_name)
        self.encoder = encoder.to(self.device, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def encode_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3, H, W) preprocessed -> features (B, dim) float32 on the CPU."""
        pixels = pixels.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        with autocast(self.device):
            features = self.encoder(pixels)  # (B, dim)
        return features.float().cpu()

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Encode PIL images (any mode; converted with :func:`load_rgb`) -> (B, dim)."""
        pixels = torch.stack([self.transform(load_rgb(im)) for im in images])  # (B, 3, H, W)
        return self.encode_batch(pixels)


class _ImageFolder(Dataset):
    """Images by name; an unreadable file yields zeros and ``ok=False`` instead of crashing."""

    def __init__(self, image_dir: Path, names: Sequence[str], transform: Callable, crop: int):
        self.image_dir, self.names, self.transform, self.crop = image_dir, names, transform, crop

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = self.transform(load_rgb(self.image_dir / self.names[i]))
            return pixels, True
        except Exception:  # truncated, not an image, decompression bomb, ...
            return torch.zeros(3, self.crop, self.crop), False


@dataclass
class FeatureCache:
    """A finished cache loaded into memory: ``features[index[name]]`` is that image's vector."""

    names: list[str]
    features: torch.Tensor  # (num_images, dim) float32
    meta: dict

    def __post_init__(self):
        self.index = {name: row for row, name in enumerate(self.names)}

    @property
    def encoder(self) -> str:
        return self.meta["encoder"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __contains__(self, name: str) -> bool:
        return name in self.index


def _check_compatible(meta: dict, encoder_name: str, names: list[str], folder: Path) -> None:
    if meta.get("encoder") != encoder_name:
        raise StorytellerError(
            f"{folder / INDEX_FILE} holds '{meta.get('encoder')}' features, not "
            f"'{encoder_name}': use another output folder or pass --overwrite"
        )
    if meta.get("images") != names:
        raise StorytellerError(
            f"{folder / INDEX_FILE} was made for a different list of images: "
            "use another output folder or pass --overwrite"
        )


def extract_features(
    image_dir: str | Path,
    names: Sequence[str],
    out_dir: str | Path,
    encoder_name: str,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: torch.device | None = None,
    overwrite: bool = False,
    encoder: torch.nn.Module | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """Encode every image in ``names`` into ``out_dir/features.npy`` (+ ``features.json``).

    Resumes an interrupted run; returns immediately if the cache is already complete.
    ``on_batch(rows_done)`` is called after each saved batch (progress hooks, tests).
    ``batch_size``/``num_workers`` default to what measured fastest (``bench/``): big
    batches and several decoding workers on a GPU; on a CPU, small batches that stay in
    cache and one worker decoding JPEGs while the main process runs the network.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(set(names))
    if not names:
        raise StorytellerError("no images to extract features from")
    spec = get_encoder_spec(encoder_name)
    array_path, index_path = out_dir / FEATURES_FILE, out_dir / INDEX_FILE

    meta = None
    if index_path.is_file() and array_path.is_file() and not overwrite:
        meta = json.loads(index_path.read_text())
        _check_compatible(meta, encoder_name, names, out_dir)
        if meta["done"] >= len(names):
            return array_path
        array = np.load(array_path, mmap_mode="r+")
    if meta is None:
        meta = {
            "version": CACHE_VERSION,
            "encoder": encoder_name,
            "dim": spec.dim,
            "dtype": "float16",
            "preprocessing": spec.preprocessing.to_dict(),
            "image_dir": str(image_dir),
            "images": names,
            "done": 0,
            "unreadable": [],
        }
        array = np.lib.format.open_memmap(
            array_path, mode="w+", dtype=np.float16, shape=(len(names), spec.dim)
        )
        write_json(index_path, meta)

    device = device or get_device()
    extractor = FeatureExtractor(encoder_name, device, encoder)
    start = meta["done"]
    on_gpu = device.type == "cuda"
    if batch_size is None:
        batch_size = 64 if on_gpu else CPU_BATCH_SIZE
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if on_gpu else CPU_NUM_WORKERS
    loader = DataLoader(
        _ImageFolder(Path(image_dir), names[start:], extractor.transform, spec.preprocessing.crop),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    row = start
    with tqdm(
        total=len(names), initial=start, desc=f"features ({encoder_name})", unit="img"
    ) as bar:
        for pixels, ok in loader:
            features = extractor.encode_batch(pixels)  # (B, dim)
            array[row : row + len(features)] = features.numpy().astype(np.float16)
            meta["unreadable"] += [names[row + i] for i in torch.nonzero(~ok).flatten().tolist()]
            row += len(features)
            array.flush()
            meta["done"] = row  # written after the rows it counts: a kill loses one batch at most
            write_json(index_path, meta)
            bar.update(len(features))
            if on_batch is not None:
                on_batch(row)
    if meta["unreadable"]:
        warnings.warn(
            f"{len(meta['unreadable'])} unreadable image(s) skipped "
            f"(e.g. {meta['unreadable'][:3]}); their captions are left out of training",
            stacklevel=2,
        )
    return array_path


def load_feature_cache(out_dir: str | Path) -> FeatureCache:
    """Load a complete cache as float32 (unreadable images left out)."""
    out_dir = Path(out_dir)
    index_path = out_dir / INDEX_FILE
    if not index_path.is_file():
        raise StorytellerError(
            f"no feature cache in {out_dir}: run `python -m storyteller features` first"
        )
    meta = json.loads(index_path.read_text())
    if meta["done"] < len(meta["images"]):
        raise StorytellerError(
            f"the feature cache in {out_dir} is incomplete ({meta['done']}/{len(meta['images'])}); "
            "run `python -m storyteller features` again to finish it"
        )
    array = np.load(out_dir / FEATURES_FILE, mmap_mode="r")
    bad = set(meta["unreadable"])
    keep = [i for i, name in enumerate(meta["images"]) if name not in bad]
    features = torch.from_numpy(np.asarray(array[keep], dtype=np.float32))
    return FeatureCache([meta["images"][i] for i in keep], features, meta)

"""Extract each image's features with a frozen CNN, once, into a resumable cache.

The cache is two files in the output folder:

* ``features.npy``  - float16 array, memory-mapped while written (its disk space allocated
  first, so a full disk is an error, not a crash), of shape (num_images, dim)
  for the ``"pooled"`` layout (one vector per image) or (num_images, h*w, dim) for ``"grid"``
  (one vector per feature-map position, what attention captioners read; see
  :mod:`storyteller.features.encoders`);
* ``features.json`` - the index: image names (row order), the encoder, its dimension and
  preprocessing, the ``layout`` and for a grid its ``grid`` [h, w], how many rows are done,
  which images could not be read or were refused (:mod:`storyteller.features.images`: not a
  regular file, too many pixels, too long and thin to resize) and which gave features float16
  cannot hold (``non_finite``: NaN, or beyond +-65504; the largest such |value| in
  ``non_finite_peak``), both skipped and reported rather than trained on; for information
  only, which decoders made it (``decode``: ``"pil"``, ``"torchvision:cuda"``, ...) and how
  many images the device path handed to PIL (``pil_fallbacks``). Caches written before
  layouts existed (version 1) have no ``layout`` key and are pooled.

An interrupted extraction continues from the last finished batch. A cache made by another
encoder, for another list of images or in another layout is refused rather than mixed. One
grid cache serves every captioner: its pooled vectors are the grid's means (see
:class:`FeatureCache`).

Two ways to turn files into pixels (``decode_on``):

* ``"cpu"``: DataLoader workers open each image with PIL and preprocess it (what a CPU-only
  machine does: there the network, not decoding, is the bottleneck);
* ``"device"``: workers only read the file bytes; the main process decodes a batch of JPEGs
  on the encoder's device (``torchvision.io.decode_jpeg``: nvJPEG on a GPU) and resizes them
  there. On a GPU the PIL path ran at 4 % of the encoder's speed (457 img/s with 4 workers
  against 11,040 img/s for ResNet50 alone). Anything the device decoder should not take (PNG,
  GIF, CMYK JPEGs, truncated files) or fails on goes through the PIL path, image by image.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..artefacts import ArtefactError, check_npy, describe, is_int, read_json, type_name
from ..config import MAX_WIDTH
from ..errors import StorytellerError
from ..progress import progress
from ..run_folder import FEATURES_FILE, INDEX_FILE
from ..runtime import autocast, disk_full_is_an_error, get_device, write_json
from .encoder_specs import DECODE_CHOICES
from .encoders import LAYOUTS, build_encoder, check_layout, get_encoder_spec, with_layout
from .extraction_sizes import extraction_sizes
from .images import check_size, load_rgb, open_image, open_regular

# 2: the index records its ``layout`` (version 1 had none and was always pooled).
CACHE_VERSION = 2
EXIF_ORIENTATION = 0x0112


class FeatureExtractor:
    """A frozen encoder plus its preprocessing, on one device: PIL images -> (B, dim), or
    (B, h*w, dim) with ``layout="grid"``. A given ``encoder`` of the other layout is given the
    right head on its own trunk (:func:`~storyteller.features.encoders.with_layout`)."""

    def __init__(
        self,
        encoder_name: str,
        device: torch.device | None = None,
        encoder=None,
        layout: str = "pooled",
    ):
        self.spec = get_encoder_spec(encoder_name)
        self.layout = check_layout(layout)
        self.device = device or get_device()
        self.transform = self.spec.preprocessing.transform()
        if encoder is None:
            encoder = build_encoder(encoder_name, grid=layout == "grid")
        encoder = with_layout(encoder, encoder_name, layout)
        self.encoder = encoder.to(self.device, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def encode_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3, H, W) preprocessed -> features (B, dim) or (B, h*w, dim) float32 on
        the CPU."""
        pixels = pixels.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        with autocast(self.device):
            features = self.encoder(pixels)  # (B, dim) or (B, h*w, dim)
        return features.float().cpu()

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Encode PIL images (any mode; converted with :func:`load_rgb`) -> (B, dim) or
        (B, h*w, dim)."""
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
                pixels = self.transform(open_image(self.image_dir / self.names[i]))
            return pixels, True
        except Exception:  # truncated, not an image, too large, a FIFO, ...
            return torch.zeros(3, self.crop, self.crop), False


def _jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation (1-8) of a JPEG the device decoder can take, else ``None``.

    Only the header is parsed (PIL reads no pixels here), so this is cheap enough for the
    workers. ``None`` sends the file down the PIL path: not a JPEG, CMYK (nvJPEG has no CMYK
    output), or no end-of-image marker at the end: a truncated file, which PIL refuses and a
    GPU decoder might turn into a half-grey picture instead of an unreadable one. A size
    :func:`~storyteller.features.images.check_size` refuses raises its error.
    """
    if data[:2] != b"\xff\xd8" or b"\xff\xd9" not in data[-32:]:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: PIL's path warns, not here
        with Image.open(io.BytesIO(data)) as image:
            check_size(*image.size)
            if image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
                return None
            return int(image.getexif().get(EXIF_ORIENTATION, 1))


def apply_exif_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a decoded image upright as PIL's ``ImageOps.exif_transpose`` does (which
    :func:`load_rgb` applies), on any device: ``decode_jpeg`` applies EXIF only on the CPU.

    image: (C, H, W) -> (C, H, W), or (C, W, H) for orientations 5-8. Other values: unchanged.
    """
    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # upside down
        return image.flip(-2, -1)
    if orientation == 4:  # mirrored upside down
        return image.flip(-2)
    if orientation == 5:  # PIL's TRANSPOSE
        return image.transpose(-2, -1)  # (C, W, H)
    if orientation == 6:  # rotated: turn 90 degrees clockwise
        return torch.rot90(image, -1, dims=(-2, -1))  # (C, W, H)
    if orientation == 7:  # PIL's TRANSVERSE
        return image.transpose(-2, -1).flip(-2, -1)  # (C, W, H)
    if orientation == 8:  # rotated: turn 90 degrees anticlockwise
        return torch.rot90(image, 1, dims=(-2, -1))  # (C, W, H)
    return image


class _ImageBytes(_ImageFolder):
    """Worker half of ``decode_on="device"``: a JPEG's bytes and EXIF orientation, nothing
    decoded; any other file is preprocessed here by the PIL path, as :class:`_ImageFolder`
    does. Items: ``("jpeg", bytes, orientation)`` or ``("pixels", (3, crop, crop), ok)``."""

    def __getitem__(self, i: int):
        try:
            with open_regular(self.image_dir / self.names[i]) as file:
                data = file.read()
            orientation = _jpeg_orientation(data)
        except Exception:  # not a regular file, broken header, too large: the PIL path reports it
            orientation = None
        if orientation is None:
            pixels, ok = super().__getitem__(i)
            return "pixels", pixels, ok
        return "jpeg", data, orientation


def _pack_batch(items: list) -> tuple[torch.Tensor, list]:
    """Collate for :class:`_ImageBytes` (runs in the worker): the batch's JPEG bytes packed
    into one tensor, since a worker hands each tensor over as its own shared-memory block
    (64 separate ones cost the main process 14 ms a batch, one 1.6 ms, on a 2-core machine).

    -> blob (total,) uint8, and per image ``("jpeg", start, end, orientation)`` (its bytes are
    ``blob[start:end]``) or the worker's ``("pixels", (3, crop, crop), ok)``.
    """
    sizes = [len(item[1]) if item[0] == "jpeg" else 0 for item in items]
    blob = torch.empty(sum(sizes), dtype=torch.uint8)  # (total,)
    view, start, entries = blob.numpy(), 0, []
    for item, size in zip(items, sizes, strict=True):
        if item[0] != "jpeg":
            entries.append(item)
            continue
        view[start : start + size] = np.frombuffer(item[1], dtype=np.uint8)
        entries.append(("jpeg", start, start + size, item[2]))
        start += size
    return blob, entries


def _decode_jpeg_accepts_list() -> bool:
    """``decode_jpeg`` takes a list (one batched nvJPEG call) from torchvision 0.19 on."""
    import torchvision

    major, minor = (int(part) for part in torchvision.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (0, 19)


def device_decode_available() -> bool:
    """Whether this torchvision can decode JPEGs into tensors (it deprecated its decoders in
    0.29 in favour of TorchCodec; when they are gone, extraction decodes with PIL)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_decode_on(decode_on: str, device: torch.device) -> str:
    """``"auto"`` -> ``"device"`` on CUDA (when torchvision can), ``"cpu"`` elsewhere."""
    if decode_on not in DECODE_CHOICES:
        raise StorytellerError(
            f"unknown decode_on '{decode_on}'; choose one of: {', '.join(DECODE_CHOICES)}"
        )
    if decode_on == "auto":
        return "device" if device.type == "cuda" and device_decode_available() else "cpu"
    if decode_on == "device" and not device_decode_available():
        raise StorytellerError(
            "decode_on='device' needs torchvision.io.decode_jpeg; use decode_on='cpu'"
        )
    return decode_on


class _DeviceDecoder:
    """Main-process half of ``decode_on="device"``: a batch of :class:`_ImageBytes` items
    (packed by :func:`_pack_batch`) -> pixels on the device. JPEGs are decoded in one call (nvJPEG batches them on a GPU); a
    JPEG the decoder rejects is decoded again by PIL, and is unreadable only if PIL fails too.
    """

    def __init__(self, preprocessing, transform: Callable, device: torch.device):
        self.preprocessing, self.transform, self.device = preprocessing, transform, device
        self.batched = _decode_jpeg_accepts_list()
        self.pil_fallbacks = 0  # images PIL decoded instead (unreadable ones not counted)

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Bytes (n,) uint8 on the CPU -> (3, H, W) uint8 on the device, ``None`` if rejected."""
        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(data):
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: TorchCodec
            if self.batched and len(datas) > 1:
                try:
                    return list(decode(datas))
                except Exception:  # one bad file fails the whole call: find it, one by one
                    pass
            images: list[torch.Tensor | None] = []
            for data in datas:
                try:
                    images.append(decode(data))
                except Exception:
                    images.append(None)
            return images

    def _pil(self, data: torch.Tensor) -> torch.Tensor | None:
        """Today's CPU path for one file's bytes -> (3, crop, crop), ``None`` if unreadable."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.transform(open_image(io.BytesIO(data.numpy().tobytes())))
        except Exception:
            return None

    def __call__(self, batch: tuple[torch.Tensor, list]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`_pack_batch`'s output -> pixels (B, 3, crop, crop) float32 on the device,
        ok (B,) bool."""
        blob, entries = batch
        crop = self.preprocessing.crop
        pixels = torch.zeros(len(entries), 3, crop, crop, device=self.device)  # (B, 3, crop, crop)
        ok = torch.ones(len(entries), dtype=torch.bool)
        rows = [row for row, entry in enumerate(entries) if entry[0] == "jpeg"]
        datas = [blob[entries[row][1] : entries[row][2]] for row in rows]  # (n_i,) uint8 each
        decoded = self._decode(datas) if rows else []
        upright, upright_rows = [], []
        for row, data, image in zip(rows, datas, decoded, strict=True):
            if image is not None and image.dim() == 3 and image.shape[0] == 3:
                upright.append(apply_exif_orientation(image, entries[row][3]))  # (3, H, W)
                upright_rows.append(row)
                continue
            fallback = self._pil(data)
            if fallback is None:
                ok[row] = False
            else:
                pixels[row] = fallback.to(self.device)
                self.pil_fallbacks += 1
        if upright:
            pixels[upright_rows] = self.preprocessing.tensor_transform(upright)
        for row, entry in enumerate(entries):
            if entry[0] == "pixels":  # preprocessed by PIL in the worker
                pixels[row] = entry[1].to(self.device)
                ok[row] = bool(entry[2])
                self.pil_fallbacks += bool(entry[2])
        return pixels, ok


class FeatureCache:
    """A finished cache that hands out features by row: ``index[name]`` is that image's row.

    Pooled caches (N x dim: 260 MB as float32 for Flickr30k with ResNet50) are held in memory
    as float32, since training reads every row every epoch. Grid caches are h*w = 49 times
    bigger (6.4 GB as float16 for Flickr30k), so they stay on disk, memory-mapped
    (``array``): :meth:`batch` reads only the rows asked for, and the OS keeps what fits in
    its page cache, shared by every process (DataLoader workers, DDP ranks).

    ``features`` (N, dim) float32 are the pooled vectors for either layout; a grid cache
    computes them on first use as the mean over positions (what global average pooling is),
    in one pass over the file, and keeps only that (N, dim) matrix.

    ``FeatureCache(names, features, meta)`` wraps pooled vectors already in memory (tests,
    benchmarks); :func:`load_feature_cache` opens a cache folder.
    """

    def __init__(
        self,
        names: list[str],
        features: torch.Tensor | None,
        meta: dict,
        *,
        array: np.ndarray | None = None,
        rows: Sequence[int] | None = None,
        folder: Path | None = None,
    ):
        """features: (N, dim) float32 pooled vectors of ``names``, or None for a grid cache
        given as ``array`` (num_images, h*w, dim) float16, of which ``rows`` are ``names``."""
        if features is None and array is None:
            raise StorytellerError("a FeatureCache needs pooled features or a grid array")
        self.names, self.meta, self.folder = list(names), meta, folder
        self.array = array
        self._rows = np.arange(len(self.names)) if rows is None else np.asarray(rows)
        self._pooled = features
        self.index = {name: row for row, name in enumerate(self.names)}

    @property
    def encoder(self) -> str:
        return self.meta["encoder"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def layout(self) -> str:
        """What the file holds: ``"pooled"`` (also every cache without the key) or ``"grid"``."""
        return self.meta.get("layout", "pooled")

    @property
    def grid(self) -> tuple[int, int] | None:
        """(h, w) of a grid cache, ``None`` for a pooled one."""
        return tuple(self.meta["grid"]) if self.layout == "grid" else None

    @property
    def features(self) -> torch.Tensor:
        """(N, dim) float32 pooled vectors; for a grid cache, its means, computed once."""
        if self._pooled is None:
            self._pooled = self._mean_over_positions()
        return self._pooled

    def _mean_over_positions(self, chunk: int = 256) -> torch.Tensor:
        """One sequential pass over the grid file, ``chunk`` images at a time -> (N, dim)."""
        pooled = torch.empty(len(self.names), self.dim)  # (N, dim)
        for start in range(0, len(self.names), chunk):
            rows = self._rows[start : start + chunk]
            block = np.asarray(self.array[rows], dtype=np.float32)  # (n, h*w, dim)
            pooled[start : start + len(rows)] = torch.from_numpy(block.mean(axis=1))  # (n, dim)
        return pooled

    def batch(
        self, rows, layout: str = "pooled", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The features of cache rows ``rows`` (a sequence or 1-d tensor of ints): (B, dim)
        for ``"pooled"``, (B, h*w, dim) for ``"grid"``, read from disk.

        ``dtype=torch.float16`` hands a grid over as stored: half the bytes to copy to a GPU
        and no conversion on the CPU, which is most of a grid batch's cost there (measured in
        ``bench/cache_read.py``); convert on the device instead.
        """
        check_layout(layout)
        if layout == "pooled":
            return self.features[torch.as_tensor(rows, dtype=torch.long)].to(dtype)  # (B, dim)
        if self.layout != "grid":
            where = f"in {self.folder}" if self.folder is not None else "here"
            raise StorytellerError(
                f"the feature cache {where} holds pooled vectors, not the grid: extract it "
                "again with --layout grid (into another folder, or with --overwrite)"
            )
        disk_rows = self._rows[np.asarray(rows, dtype=np.int64)]  # (B,)
        block = np.asarray(self.array[disk_rows])  # (B, h*w, dim) float16, a copy
        return torch.from_numpy(block).to(dtype)  # (B, h*w, dim)

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:
        """Pickled (DataLoader workers under spawn) without the mapped file, which NumPy
        would copy whole: the receiving process maps it again."""
        state = self.__dict__.copy()
        if isinstance(self.array, np.memmap) and self.folder is not None:
            state["array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.array is None and self.layout == "grid" and self.folder is not None:
            self.array = np.load(self.folder / FEATURES_FILE, mmap_mode="r")


def read_cache_index(out_dir: str | Path) -> dict:
    """``features.json`` of the cache in ``out_dir``, checked before it is trusted: the keys
    every reader uses, of the right types and consistent with each other (``done`` within
    the image count, ``unreadable`` a subset of ``images``, a ``grid`` for the grid layout).
    Any problem is a one-line :class:`~storyteller.artefacts.ArtefactError` naming the file.
    """
    path = Path(out_dir) / INDEX_FILE
    meta = read_json(path, "feature cache index")

    def fail(problem: str) -> ArtefactError:
        return ArtefactError(path, f"{problem}: extract the features again with --overwrite")

    if not isinstance(meta, dict):
        raise fail(f"the index must be a JSON object, got {type_name(meta)}")
    version = meta.get("version", 1)
    if not is_int(version) or version < 1:
        raise fail(f"version must be a positive integer, got {describe(version)}")
    if version > CACHE_VERSION:
        raise ArtefactError(
            path,
            f"the cache is version {version}, newer than this storyteller reads "
            f"({CACHE_VERSION}): upgrade storyteller or extract it again",
        )
    for key, kind in (("encoder", str), ("dim", int), ("images", list), ("done", int)):
        if key not in meta:
            raise fail(f"no {key!r}")
        if not (is_int(meta[key]) if kind is int else isinstance(meta[key], kind)):
            raise fail(f"{key!r} must be {kind.__name__}, got {describe(meta[key])}")
    images, unreadable = meta["images"], meta.setdefault("unreadable", [])
    if not 1 <= meta["dim"] <= MAX_WIDTH:
        raise fail(f"dim must be 1..{MAX_WIDTH}, got {meta['dim']}")
    if not all(isinstance(name, str) and name for name in images):
        raise fail("images must be a list of file names")
    if len(set(images)) != len(images):
        raise fail("images lists a file twice")
    if not 0 <= meta["done"] <= len(images):
        raise fail(f"done must be 0..{len(images)}, got {meta['done']}")
    if not isinstance(unreadable, list) or not set(unreadable) <= set(images):
        raise fail("unreadable must list some of the images")
    non_finite = meta.setdefault("non_finite", [])  # absent from caches made before the check
    if not isinstance(non_finite, list) or not set(non_finite) <= set(images):
        raise fail("non_finite must list some of the images")
    layout = meta.get("layout", "pooled")
    if layout not in LAYOUTS:
        raise fail(f"unknown layout {describe(layout)} (known: {', '.join(LAYOUTS)})")
    if layout == "grid":
        grid = meta.get("grid")
        if (
            not isinstance(grid, list)
            or len(grid) != 2
            or not all(is_int(n) and 1 <= n <= 1024 for n in grid)
        ):
            raise fail(f"a grid cache needs grid [h, w], got {describe(grid)}")
    if meta.get("dtype", "float16") != "float16":
        raise fail(f"dtype must be float16, got {describe(meta.get('dtype'))}")
    return meta


def cache_shape(meta: dict) -> tuple[int, ...]:
    """The shape of ``features.npy`` that a checked index describes: (N, dim) pooled or
    (N, h*w, dim) grid."""
    rows = len(meta["images"])
    if meta.get("layout", "pooled") == "grid":
        return (rows, int(np.prod(meta["grid"])), int(meta["dim"]))
    return (rows, int(meta["dim"]))


def _check_compatible(
    meta: dict, encoder_name: str, names: list[str], layout: str, folder: Path
) -> None:
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
    held = meta.get("layout", "pooled")
    if held != layout:
        raise StorytellerError(
            f"{folder / INDEX_FILE} holds {held} features, not {layout}: use another output "
            f"folder or pass --overwrite (or --layout {held} to keep this cache)"
        )


CACHE_FILES = f"the feature cache ({FEATURES_FILE}, {INDEX_FILE})"


def _open_cache(
    image_dir: str | Path,
    names: list[str],
    out_dir: Path,
    encoder_name: str,
    layout: str,
    overwrite: bool,
) -> tuple[dict, np.memmap] | None:
    """The index and the mapped array to fill: the unfinished cache in ``out_dir`` if it is
    compatible, else a new one. Either way the array's disk space is allocated now
    (:func:`_allocate`). ``None`` when the cache is already complete."""
    array_path, index_path = out_dir / FEATURES_FILE, out_dir / INDEX_FILE
    if index_path.is_file() and array_path.is_file() and not overwrite:
        meta = read_cache_index(out_dir)
        _check_compatible(meta, encoder_name, names, layout, out_dir)
        meta.setdefault("layout", "pooled")  # a version-1 cache: pooled, now said explicitly
        if meta["done"] >= len(names):
            return None
        check_npy(array_path, np.float16, cache_shape(meta))  # before mapping it
        _allocate(array_path)
        return meta, np.load(array_path, mmap_mode="r+")
    spec = get_encoder_spec(encoder_name)
    meta = {
        "version": CACHE_VERSION,
        "encoder": encoder_name,
        "dim": spec.dim,
        "layout": layout,
        **({"grid": list(spec.grid)} if layout == "grid" else {}),
        "dtype": "float16",
        "preprocessing": spec.preprocessing.to_dict(),
        "image_dir": str(image_dir),
        "images": names,
        "done": 0,
        "unreadable": [],
        "non_finite": [],
    }
    array = np.lib.format.open_memmap(
        array_path, mode="w+", dtype=np.float16, shape=(len(names), *spec.shape(layout))
    )  # (N, dim) or (N, h*w, dim)
    _allocate(array_path)
    write_json(index_path, meta)
    return meta, array


def _allocate(path: Path) -> None:
    """Give ``path`` all its disk blocks now. A file written through a memory map gets them
    page by page, and on a full disk a page that finds none kills the process with SIGBUS,
    without a word; here a full disk is an ``OSError`` (ENOSPC), before any work is done.
    Without ``posix_fallocate`` (macOS, Windows) or where the file system cannot allocate,
    the file stays sparse."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise


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
    decode_on: str = "auto",
    layout: str = "pooled",
) -> Path:
    """Encode every image in ``names`` into ``out_dir/features.npy`` (+ ``features.json``).

    Resumes an interrupted run; returns immediately if the cache is already complete.
    ``on_batch(rows_done)`` is called after each saved batch (progress hooks, tests).
    ``batch_size``/``num_workers`` default to what measured fastest (``bench/``): big
    batches and a few byte-reading workers on a GPU; on a CPU, small batches that stay in
    cache and one worker decoding JPEGs while the main process runs the network.
    ``decode_on``: ``"auto"`` decodes JPEGs on the device when it is a GPU (``"device"``),
    with PIL in the workers otherwise (``"cpu"``); see the module docstring.
    ``layout``: ``"pooled"`` (N, dim) or ``"grid"`` (N, h*w, dim); ``encoder``, if given, may
    be either kind (the right head is put on its trunk).
    """
    check_layout(layout)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(set(names))
    if not names:
        raise StorytellerError("no images to extract features from")
    spec = get_encoder_spec(encoder_name)
    array_path, index_path = out_dir / FEATURES_FILE, out_dir / INDEX_FILE
    with disk_full_is_an_error(out_dir, CACHE_FILES):
        opened = _open_cache(image_dir, names, out_dir, encoder_name, layout, overwrite)
    if opened is None:  # complete
        return array_path
    meta, array = opened

    device = device or get_device()
    decode_on = resolve_decode_on(decode_on, device)
    extractor = FeatureExtractor(encoder_name, device, encoder, layout)
    start = meta["done"]
    on_gpu = device.type == "cuda"
    sizes = extraction_sizes(on_gpu)
    batch_size = sizes.batch_size if batch_size is None else batch_size
    num_workers = sizes.num_workers if num_workers is None else num_workers
    # A cache begun before the decoders were recorded was made by PIL.
    decoders = meta.setdefault("decode", ["pil"] if meta["done"] else [])
    decoder_name = "pil" if decode_on == "cpu" else f"torchvision:{device.type}"
    if decoder_name not in decoders:
        decoders.append(decoder_name)
    folder = (_ImageFolder if decode_on == "cpu" else _ImageBytes)(
        Path(image_dir), names[start:], extractor.transform, spec.preprocessing.crop
    )
    decoder = (
        None
        if decode_on == "cpu"
        else _DeviceDecoder(spec.preprocessing, extractor.transform, device)
    )
    loader = DataLoader(
        folder,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=None if decoder is None else _pack_batch,
        pin_memory=on_gpu and decoder is None,  # file bytes gain nothing from pinning
    )
    row = start
    with progress(
        total=len(names), initial=start, desc=f"features ({encoder_name})", unit="img"
    ) as bar:
        for batch in loader:
            pixels, ok = batch if decoder is None else decoder(batch)  # (B, 3, crop, crop), (B,)
            features = extractor.encode_batch(pixels)  # (B, dim) or (B, h*w, dim)
            if features.shape[1:] != array.shape[1:]:
                raise StorytellerError(
                    f"'{encoder_name}' gave {layout} features of shape {tuple(features.shape[1:])}"
                    f" per image, the cache holds {array.shape[1:]}: was the encoder or its "
                    "preprocessing changed? Pass --overwrite to start again"
                )
            rows = slice(row, row + len(features))
            block = _to_float16(features, names[rows], meta)  # (B, dim) or (B, h*w, dim)
            meta["unreadable"] += [names[row + i] for i in torch.nonzero(~ok).flatten().tolist()]
            row += len(features)
            if decoder is not None:
                meta["pil_fallbacks"] = meta.get("pil_fallbacks", 0) + decoder.pil_fallbacks
                decoder.pil_fallbacks = 0
            meta["done"] = row  # written after the rows it counts: a kill loses one batch at most
            with disk_full_is_an_error(out_dir, CACHE_FILES):
                array[rows] = block
                array.flush()
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
    if meta["non_finite"]:
        warnings.warn(non_finite_report(meta), stacklevel=2)
    return array_path


#: The largest magnitude a float16 cache holds; beyond it a value is stored as inf.
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def _to_float16(features: torch.Tensor, names: Sequence[str], meta: dict) -> np.ndarray:
    """features: (B, ...) float32 -> the float16 rows to store. An image whose features hold
    NaN or a value beyond +-65504 (stored as inf) is recorded in ``meta["non_finite"]`` and
    stored as zeros, and left out like an unreadable image: a NaN or inf feature would make
    every loss it touches NaN, and nothing in the float16 file could say which encoder did it.
    ``meta["non_finite_peak"]`` keeps the largest |value| such a row held (beyond float16)."""
    with np.errstate(over="ignore"):  # the overflow is counted and reported below instead
        block = features.numpy().astype(np.float16)  # (B, dim) or (B, h*w, dim)
    bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)  # (B,)
    if bad.any():
        magnitude = features[torch.from_numpy(bad)].abs().nan_to_num(nan=0.0)  # (k, ...)
        peak = float(magnitude.max().clamp(max=torch.finfo(torch.float32).max))
        meta["non_finite_peak"] = max(meta.get("non_finite_peak", 0.0), peak)
        meta["non_finite"] += [names[i] for i in np.flatnonzero(bad).tolist()]
        block[bad] = 0
    return block


def non_finite_report(meta: dict) -> str:
    """One line for the images whose features float16 could not hold: how many, the largest
    |value|, and what it means (the encoder, not the images, is at fault)."""
    bad, peak = meta["non_finite"], meta.get("non_finite_peak", 0.0)
    size = (
        f"max |value| {peak:.3g}, beyond float16's {FLOAT16_MAX:.0f}"
        if peak > FLOAT16_MAX
        else "NaN values"
    )
    return (
        f"{len(bad)} image(s) skipped whose {meta['encoder']} features float16 cannot hold "
        f"({size}; e.g. {bad[:3]}); their captions are left out of training. The encoder is "
        "broken (NaN) or its activations are out of the float16 cache's range (e.g. random "
        "weights without batch-norm statistics): use trained weights or another encoder"
    )


def load_feature_cache(out_dir: str | Path) -> FeatureCache:
    """Open a complete cache (unreadable images left out): a pooled one loaded as float32, a
    grid one memory-mapped, never read whole (see :class:`FeatureCache`)."""
    out_dir = Path(out_dir)
    index_path = out_dir / INDEX_FILE
    if not index_path.is_file():
        raise StorytellerError(
            f"no feature cache in {out_dir}: run `python -m storyteller features` first"
        )
    meta = read_cache_index(out_dir)
    if meta["done"] < len(meta["images"]):
        raise StorytellerError(
            f"the feature cache in {out_dir} is incomplete ({meta['done']}/{len(meta['images'])}); "
            "run `python -m storyteller features` again to finish it"
        )
    layout = meta.get("layout", "pooled")
    array_path = out_dir / FEATURES_FILE
    if not array_path.is_file():
        raise ArtefactError(array_path, f"missing, though {index_path.name} describes it")
    check_npy(array_path, np.float16, cache_shape(meta))  # header only: nothing mapped yet
    array = np.load(array_path, mmap_mode="r")  # (N, dim) or (N, h*w, dim)
    bad = set(meta["unreadable"]) | set(meta["non_finite"])  # both reported at extraction
    keep = [i for i, name in enumerate(meta["images"]) if name not in bad]
    names = [meta["images"][i] for i in keep]
    if layout == "grid":
        return FeatureCache(names, None, meta, array=array, rows=keep, folder=out_dir)
    features = torch.from_numpy(np.asarray(array[keep], dtype=np.float32))  # (N, dim)
    if not bool(torch.isfinite(features).all()):  # read whole anyway: the check is one pass
        row = int((~torch.isfinite(features)).any(dim=1).nonzero()[0])
        raise ArtefactError(
            array_path,
            f"the features of {names[row]} hold NaN or infinite values: extract the features "
            "again with --overwrite",
        )
    return FeatureCache(names, features, meta, folder=out_dir)

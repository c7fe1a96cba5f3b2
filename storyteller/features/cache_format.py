"""The feature cache on disk: two files in one folder, written, checked and read here.

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

:mod:`storyteller.features.cache` fills it. A cache made by another encoder, for another list
of images or in another layout is refused rather than mixed. One grid cache serves every
captioner: its pooled vectors are the grid's means (see :class:`FeatureCache`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..artefacts import ArtefactError, check_npy, describe, is_int, read_json, type_name
from ..config import MAX_WIDTH
from ..errors import StorytellerError
from ..run_folder import FEATURES_FILE, INDEX_FILE
from ..runtime import write_json
from .encoders import LAYOUTS, check_layout, get_encoder_spec

# 2: the index records its ``layout`` (version 1 had none and was always pooled).
CACHE_VERSION = 2


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


def open_cache(
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


#: The largest magnitude a float16 cache holds; beyond it a value is stored as inf.
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def to_float16(features: torch.Tensor, names: Sequence[str], meta: dict) -> np.ndarray:
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

"""The feature cache on disk: two files in one folder, written, checked and read here.

* ``features.npy``: float16, (num_images, dim) ``"pooled"`` or (num_images, h*w, dim)
  ``"grid"``; its disk space is allocated first, so a full disk is an error, not a crash;
* ``features.json``: the index: image names in row order, the encoder, its dimension and
  preprocessing, the layout (absent in version 1: pooled) and a grid's [h, w], the rows done,
  the images that could not be read (``unreadable``) or gave features float16 cannot hold
  (``non_finite``, the largest |value| in ``non_finite_peak``), both left out of training; for
  information, the decoders used (``decode``) and the images the device path gave PIL.

A cache of another encoder, image list or layout is refused rather than mixed.
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
from .encoder_specs import LAYOUTS, check_layout, get_encoder_spec

CACHE_VERSION = 2


class FeatureCache:
    """A finished cache that hands out features by row (``index[name]``). Pooled vectors are
    held in memory as float32 (260 MB for Flickr30k with ResNet50); a grid, 49 times bigger,
    stays memory-mapped (``array``), so :meth:`batch` reads only the rows asked for and the
    page cache is shared by every process. ``features``: the pooled vectors, for a grid its
    means over positions, computed on first use.
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
        """features: (N, dim) float32 of ``names``, or None for a grid ``array``
        (num_images, h*w, dim) float16, of which ``rows`` are ``names``."""
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
        return self.meta.get("layout", "pooled")

    @property
    def grid(self) -> tuple[int, int] | None:
        """(h, w) of a grid cache, ``None`` for a pooled one."""
        return tuple(self.meta["grid"]) if self.layout == "grid" else None

    @property
    def features(self) -> torch.Tensor:
        if self._pooled is None:
            self._pooled = self._mean_over_positions()
        return self._pooled

    def _mean_over_positions(self, chunk: int = 256) -> torch.Tensor:
        pooled = torch.empty(len(self.names), self.dim)  # (N, dim)
        for start in range(0, len(self.names), chunk):
            rows = self._rows[start : start + chunk]
            block = np.asarray(self.array[rows], dtype=np.float32)  # (n, h*w, dim)
            pooled[start : start + len(rows)] = torch.from_numpy(block.mean(axis=1))  # (n, dim)
        return pooled

    def batch(
        self, rows, layout: str = "pooled", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The features of ``rows``: (B, dim) pooled or (B, h*w, dim) grid, read from disk.
        ``dtype=torch.float16`` hands a grid over as stored: half the bytes to copy to a GPU,
        and no conversion on the CPU, most of a grid batch's cost (``bench/cache_read.py``).
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
        """Pickled without the mapped file, which NumPy would copy whole: it is mapped again."""
        state = self.__dict__.copy()
        if isinstance(self.array, np.memmap) and self.folder is not None:
            state["array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.array is None and self.layout == "grid" and self.folder is not None:
            self.array = np.load(self.folder / FEATURES_FILE, mmap_mode="r")


def read_cache_index(out_dir: str | Path) -> dict:
    """``features.json`` in ``out_dir``, its keys checked for type and consistency before it
    is trusted; a problem is a one-line :class:`~storyteller.artefacts.ArtefactError`."""
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
    images = meta["images"]
    if not 1 <= meta["dim"] <= MAX_WIDTH:
        raise fail(f"dim must be 1..{MAX_WIDTH}, got {meta['dim']}")
    if not all(isinstance(name, str) and name for name in images):
        raise fail("images must be a list of file names")
    if len(set(images)) != len(images):
        raise fail("images lists a file twice")
    if not 0 <= meta["done"] <= len(images):
        raise fail(f"done must be 0..{len(images)}, got {meta['done']}")
    for key in ("unreadable", "non_finite"):
        listed = meta.setdefault(key, [])
        if not isinstance(listed, list) or not set(listed) <= set(images):
            raise fail(f"{key} must list some of the images")
    layout = meta.setdefault("layout", "pooled")  # version 1 had none: always pooled
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
    """The shape of ``features.npy`` a checked index describes."""
    rows = len(meta["images"])
    if meta["layout"] == "grid":
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
    held = meta["layout"]
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
    """The index and the mapped array to fill (a compatible unfinished cache, else a new one,
    its disk space allocated either way), or ``None`` when the cache is complete."""
    array_path, index_path = out_dir / FEATURES_FILE, out_dir / INDEX_FILE
    if index_path.is_file() and array_path.is_file() and not overwrite:
        meta = read_cache_index(out_dir)
        _check_compatible(meta, encoder_name, names, layout, out_dir)
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
    """Give ``path`` all its disk blocks now: through a memory map a full disk kills the
    process with SIGBUS, without a word; here it is an ``OSError`` before any work is done.
    Without ``posix_fallocate`` or its support, the file stays sparse."""
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
    """features: (B, ...) float32 -> the float16 rows to store. A row with NaN or a value
    beyond float16 is stored as zeros and recorded in ``meta["non_finite"]`` (with the largest
    |value| in ``non_finite_peak``), left out like an unreadable image: it would make every
    loss it touches NaN."""
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
    """One line for the images whose features float16 could not hold (the encoder's fault)."""
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
    """Open a complete cache, unreadable images left out (see :class:`FeatureCache`)."""
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
    array_path = out_dir / FEATURES_FILE
    if not array_path.is_file():
        raise ArtefactError(array_path, f"missing, though {index_path.name} describes it")
    check_npy(array_path, np.float16, cache_shape(meta))  # header only: nothing mapped yet
    array = np.load(array_path, mmap_mode="r")  # (N, dim) or (N, h*w, dim)
    bad = set(meta["unreadable"]) | set(meta["non_finite"])  # both reported at extraction
    keep = [i for i, name in enumerate(meta["images"]) if name not in bad]
    names = [meta["images"][i] for i in keep]
    if meta["layout"] == "grid":
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

"""Read speed of random training batches from a feature cache: pooled vectors (in memory)
against the grid (memory-mapped from disk), side by side, through ``FeatureCache.batch``.

    python bench/cache_read.py --out outputs/grid          # a run folder with a grid cache
    python bench/cache_read.py --synthetic 31783 --encoder resnet50   # Flickr30k-sized

``--synthetic N`` writes a grid cache of N images with random values (read speed does not
depend on the values) into a temporary folder, deleted afterwards. "Cold" reads (one pass)
are timed after the file is dropped from this machine's page cache
(``posix_fadvise(DONTNEED)``: no root needed; a virtual machine's host may still cache it),
"warm" ones (best of ``--repeat``) once it is all there. The pooled vectors of a grid cache
are its means, computed in one sequential pass on first use (timed on its own); after it,
pooled batches are rows of an in-memory float32 matrix, exactly what a pooled cache gives.

Measured on the 2-core development machine (shared with other jobs; noisy), batches of 64,
``--synthetic 31783 --encoder resnet50`` (6.38 GB, Flickr30k-sized): pooled 0.10 ms/batch;
grid float32 7.3 ms warm, 41 ms cold (315 MB/s from disk); grid as float16 0.67 ms warm
(the float16 -> float32 conversion is most of the float32 read); the one-off pooled pass
25 s cold. ``--out`` on 1,000 Flickr8k photos with efficientnet_lite0 (0.13 GB): pooled
0.08 ms, grid float32 8.0 ms, float16 0.41 ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from storyteller.features.cache_format import CACHE_VERSION, FeatureCache, load_feature_cache
from storyteller.features.encoder_specs import ENCODERS
from storyteller.features.encoders import get_encoder_spec
from storyteller.run_folder import FEATURES_FILE, INDEX_FILE, RunPaths


def write_synthetic_grid_cache(folder: Path, num_images: int, encoder: str) -> Path:
    """A complete grid cache of random float16 values, written in chunks (never whole)."""
    spec = get_encoder_spec(encoder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(num_images)]
    shape = (num_images, *spec.shape("grid"))  # (N, h*w, dim)
    array = np.lib.format.open_memmap(folder / FEATURES_FILE, "w+", np.float16, shape)
    rng = np.random.default_rng(0)
    for start in range(0, num_images, 512):
        end = min(start + 512, num_images)
        array[start:end] = rng.random((end - start, *shape[1:]), dtype=np.float32)
    array.flush()
    del array
    meta = {
        "version": CACHE_VERSION,
        "encoder": encoder,
        "dim": spec.dim,
        "layout": "grid",
        "grid": list(spec.grid),
        "dtype": "float16",
        "images": names,
        "done": num_images,
        "unreadable": [],
    }
    (folder / INDEX_FILE).write_text(json.dumps(meta))
    return folder


def drop_from_page_cache(path: Path) -> None:
    """Evict ``path``'s pages (only those no process has mapped) so the next read hits disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def batches_per_second(read, batches: list[np.ndarray], repeat: int = 1) -> float:
    """The best of ``repeat`` passes over ``batches`` (the machine may be shared)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for rows in batches:
            read(rows)
        best = min(best, time.perf_counter() - started)
    return len(batches) / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--out", help="a run folder (or features folder) with a grid cache")
    source.add_argument("--synthetic", type=int, metavar="N", help="N images, random values")
    parser.add_argument("--encoder", default="resnet50", choices=list(ENCODERS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200, help="random batches per timing")
    parser.add_argument("--repeat", type=int, default=3, help="warm timings: best of this many")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            folder = write_synthetic_grid_cache(Path(tmp), args.synthetic, args.encoder)
        else:
            out = Path(args.out)
            folder = out if (out / INDEX_FILE).is_file() else RunPaths(out).features
        path = folder / FEATURES_FILE

        def open_cold() -> FeatureCache:
            gc.collect()  # unmap any earlier cache's pages, or they cannot be evicted
            drop_from_page_cache(path)
            cache = load_feature_cache(folder)
            if cache.layout != "grid":
                raise SystemExit(f"{folder} holds a {cache.layout} cache: extract --layout grid")
            return cache

        cache = open_cold()
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, len(cache), args.batch_size) for _ in range(args.batches)]
        per_image = cache.array[0].nbytes  # float16 bytes of one image's grid
        h, w = cache.grid
        print(
            f"{len(cache)} images x {h * w} x {cache.dim} float16 ({cache.encoder}): "
            f"{path.stat().st_size / 1e9:.2f} GB; {args.batches} random batches of "
            f"{args.batch_size}"
        )
        rows = {}
        rows["grid (B, h*w, D), memmap, cold"] = batches_per_second(
            lambda r: cache.batch(r, "grid"), batches
        )
        del cache
        cache = open_cold()
        started = time.perf_counter()
        cache.features  # noqa: B018  (the one-off pass, which also brings the file into memory)
        mean_pass = time.perf_counter() - started
        rows["grid (B, h*w, D), memmap, warm"] = batches_per_second(
            lambda r: cache.batch(r, "grid"), batches, args.repeat
        )
        rows["grid as float16 (no conversion), warm"] = batches_per_second(
            lambda r: cache.batch(r, "grid", dtype=torch.float16), batches, args.repeat
        )
        rows["grid then mean per batch, warm"] = batches_per_second(
            lambda r: cache.batch(r, "grid").mean(dim=1), batches, args.repeat
        )
        rows["pooled (B, D), in memory"] = batches_per_second(
            lambda r: cache.batch(r), batches, args.repeat
        )

        print(f"{'read':38s} {'batches/s':>10s} {'ms/batch':>9s} {'MB/s read':>10s}")
        for name, rate in rows.items():
            # bytes read from the cache: float16 grids, or float32 rows of the pooled matrix
            mb = rate * args.batch_size * (per_image if name.startswith("grid") else cache.dim * 4)
            mb /= 1e6
            print(f"{name:38s} {rate:10.1f} {1000 / rate:9.2f} {mb:10.0f}")
        print(
            f"one-off pooled pass over the grid (cold): {mean_pass:.1f} s "
            f"({path.stat().st_size / 1e6 / mean_pass:.0f} MB/s); pooled memory afterwards: "
            f"{cache.features.nbytes / 1e6:.0f} MB"
        )


if __name__ == "__main__":
    main()

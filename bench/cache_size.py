"""Feature cache size on disk vs. the theoretical minimum of 2 bytes x dim x images (float16),
and vs. the pickled float32 dict of the predecessor project.

    python bench/cache_size.py [--out outputs]
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
from pathlib import Path

import numpy as np

from storyteller.run_folder import RunPaths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="outputs", help="a run folder written by run-all or features"
    )
    args = parser.parse_args()

    folder = RunPaths(Path(args.out)).features
    meta = json.loads((folder / "features.json").read_text())
    array_bytes = (folder / "features.npy").stat().st_size
    index_bytes = (folder / "features.json").stat().st_size
    n, dim = len(meta["images"]), meta["dim"]
    theoretical = 2 * dim * n
    # What the predecessor stored: {image name: float32 numpy vector} pickled.
    array = np.load(folder / "features.npy", mmap_mode="r")
    buffer = io.BytesIO()
    pickle.dump(
        {name: np.asarray(array[i], dtype=np.float32) for i, name in enumerate(meta["images"])},
        buffer,
    )

    print(f"{n} images x {dim} dims ({meta['encoder']})")
    print(f"theoretical 2*D*N        : {theoretical / 1e6:8.2f} MB")
    print(
        f"features.npy             : {array_bytes / 1e6:8.2f} MB  ratio {array_bytes / theoretical:.4f}"
    )
    print(
        f"features.npy + index     : {(array_bytes + index_bytes) / 1e6:8.2f} MB  "
        f"ratio {(array_bytes + index_bytes) / theoretical:.4f}"
    )
    print(
        f"pickled float32 dict     : {buffer.tell() / 1e6:8.2f} MB  ratio {buffer.tell() / theoretical:.4f}"
    )


if __name__ == "__main__":
    main()

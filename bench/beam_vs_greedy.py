"""Decoding cost: beam search (width 5, batched over images and beams) vs. greedy decoding,
on the same test images' features, side by side in one run.

    python bench/beam_vs_greedy.py [--out outputs] [--repeats 3]

Uses the trained model and features of a run folder (``run-all`` output).
"""

from __future__ import annotations

import argparse
import time

import torch

from storyteller.data.vocab import Vocabulary
from storyteller.decoding import beam_search, greedy_decode
from storyteller.features.cache_format import load_feature_cache
from storyteller.models.checkpoint import load_model
from storyteller.pipeline import load_splits
from storyteller.run_folder import RunPaths


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="outputs", help="a run folder written by run-all")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    paths = RunPaths(__import__("pathlib").Path(args.out))
    vocab = Vocabulary.load(paths.vocab)
    model, _ = load_model(paths.checkpoint, vocab)
    cache = load_feature_cache(paths.features)
    test = [n for n in load_splits(args.out)["test"] if n in cache]
    features = cache.batch([cache.index[n] for n in test])  # (N, feature_dim)
    print(
        f"{len(test)} test images, vocabulary {len(vocab)}, torch threads {torch.get_num_threads()}"
    )

    greedy_s = best_of(args.repeats, lambda: greedy_decode(model, features))
    beam_s = best_of(args.repeats, lambda: beam_search(model, features, beam_size=args.beam))
    one_by_one_s = best_of(
        1,
        lambda: [
            beam_search(model, features[i : i + 1], beam_size=args.beam) for i in range(len(test))
        ],
    )
    print(f"greedy, batched         : {greedy_s * 1000 / len(test):7.2f} ms/image")
    print(f"beam {args.beam}, batched         : {beam_s * 1000 / len(test):7.2f} ms/image")
    print(f"beam {args.beam}, image by image  : {one_by_one_s * 1000 / len(test):7.2f} ms/image")
    print(f"beam{args.beam} / greedy time: {beam_s / greedy_s:.2f}x")
    print(f"beam{args.beam} image-by-image / batched: {one_by_one_s / beam_s:.2f}x")


if __name__ == "__main__":
    main()

"""Decoding time for a batch of images, greedy and beam search, per decoder, at default sizes.

    python bench/decode_speed.py --images 100 --length 20 50 --decoders lstm attention transformer

Untrained decoders (random weights, seeded) on random features of the shape each decoder reads
(pooled 1280, or a 7 x 7 x 1280 grid, EfficientNet-Lite0's), with ``min_length`` equal to
``max_length`` so every caption runs the full ``length`` steps: the worst case, and the same
work for every decoder whatever words its weights happen to pick. The transformer recomputes
its decoder over the whole prefix at every step, so its cost grows with the square of the
length where the LSTMs' grows linearly: the two lengths show by how much. A decoder with an
``incremental`` switch (the transformer) is timed both ways: ``cached`` (one new position per
step, earlier ones read from the state) and ``rerun`` (the whole prefix every step). Each timing is the
best of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import time

import torch

from storyteller.config import ModelConfig
from storyteller.decoding import beam_search, greedy_decode
from storyteller.models import build_model

FEATURE_DIM, GRID_CELLS = 1280, 49  # EfficientNet-Lite0


def best_seconds(repeats: int, fn, *args, **kwargs) -> float:
    """The fastest of ``repeats`` calls of ``fn(*args, **kwargs)``, after one warm-up call."""
    fn(*args, **kwargs)  # warm-up: first-call allocations and kernel choices
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--length", type=int, nargs="+", default=[20])
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=2500)  # Flickr8k at threshold 5: ~2.5k
    parser.add_argument("--decoders", nargs="+", default=["lstm", "attention", "transformer"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.images} images, vocab {args.vocab_size}, {args.threads} threads, torch {torch.__version__}"
    )
    for name in args.decoders:
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(vocab_size=args.vocab_size, feature_dim=FEATURE_DIM, decoder=name)
        ).eval()
        shape = (GRID_CELLS, FEATURE_DIM) if model.feature_layout == "grid" else (FEATURE_DIM,)
        features = torch.randn(args.images, *shape)  # (B, D) or (B, P, D)
        modes = [True, False] if hasattr(model, "incremental") else [None]
        for mode, length in [(mode, length) for mode in modes for length in args.length]:
            label = model.describe() + {True: " cached", False: " rerun", None: ""}[mode]
            if mode is not None:
                model.incremental = mode
            greedy = best_seconds(
                args.repeats, greedy_decode, model, features, length, min_length=length
            )
            beam = best_seconds(
                args.repeats, beam_search, model, features, args.beam, length, min_length=length
            )
            print(
                f"{label:36s} {length:3d} words  greedy {greedy:6.2f} s"
                f"  beam {args.beam} {beam:6.2f} s"
            )


if __name__ == "__main__":
    main()

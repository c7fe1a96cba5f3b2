"""Reading a GloVe-sized text file for a captioning vocabulary (`train --embeddings FILE`).

    python bench/glove_read.py                       # 400,000 lines of 300 values, 3,000 words
    python bench/glove_read.py --lines 100000 --dim 50 --vocab 1000

Writes a synthetic file the shape of ``glove.6B.300d.txt`` (random words and values, six
decimals as GloVe writes them; about 1 GB at the defaults) into a temporary folder, deleted
afterwards, then times :func:`storyteller.data.embeddings.read_word_vectors` with a vocabulary of
``--vocab`` words drawn from the file's own words (plus 5% that are not in it), best of
``--repeat`` reads. The file is streamed and only the vocabulary's lines are parsed, so the
time is mostly reading and splitting lines; no assertion, the number is printed.

Measured on the 2-core development machine (shared with other jobs; noisy), defaults
(400,000 lines x 300, 1.15 GB, 3,000 words, 95% found): best 2.97 s of 2 (135k lines/s,
0.39 GB/s, page cache warm). The synthetic words are plain lower-case ASCII, the common case
:func:`storyteller.data.embeddings._normalised` answers without the full normaliser; a real
file's punctuation and accented words go through ``tokenize`` and cost a little more.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from storyteller.data.embeddings import read_word_vectors
from storyteller.data.vocab import Vocabulary


def write_synthetic(path: Path, lines: int, dim: int, seed: int) -> list[str]:
    """A GloVe-format file of ``lines`` random lower-case words; returns the words."""
    rng = random.Random(seed)
    words = [f"w{i}{rng.choice('abcdefghij')}" for i in range(lines)]
    row = " ".join(f"{rng.uniform(-1, 1):.6f}" for _ in range(dim))  # values do not matter
    with path.open("w", encoding="utf-8") as handle:
        for word in words:
            handle.write(f"{word} {row}\n")
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--vocab", type=int, default=3_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"glove.synthetic.{args.dim}d.txt"
        started = time.perf_counter()
        words = write_synthetic(path, args.lines, args.dim, args.seed)
        size = path.stat().st_size / 1e9
        print(
            f"wrote {args.lines:,} lines x {args.dim} ({size:.2f} GB) in "
            f"{time.perf_counter() - started:.1f}s"
        )
        rng = random.Random(args.seed)
        kept = rng.sample(words, int(args.vocab * 0.95))
        vocab = Vocabulary(kept + [f"absent{i}" for i in range(args.vocab - len(kept))])
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            vectors = read_word_vectors(path, vocab)
            best = min(best, time.perf_counter() - started)
        print(vectors.summary())
        print(
            f"read {args.lines:,} lines for a {args.vocab:,}-word vocabulary: best {best:.2f}s "
            f"of {args.repeat} ({args.lines / best / 1e3:.0f}k lines/s, {size / best:.2f} GB/s)"
        )


if __name__ == "__main__":
    main()

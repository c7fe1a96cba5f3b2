"""Pretrained word vectors (GloVe text files) as the decoder's first word embedding.

The file (``glove.6B.300d.txt``: 400,000 lines, ~1 GB) is streamed line by line; each word goes
through the vocabulary's normaliser (``tokenize``: "Dog" meets "dog") and only the vocabulary's
words have their floats parsed. A malformed line is counted, never fatal. The checkpoint then
holds the learned embedding, so the file is never needed again; the run records its name,
never its path.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import StorytellerError
from .text import SPECIAL_TOKENS, tokenize
from .vocab import PAD_ID, Vocabulary

#: Lines read ahead to find the file's dimension (the most common number of values).
DIMENSION_SAMPLE = 1000


@dataclass
class WordVectors:
    """The rows a GloVe file gives a vocabulary, and what reading it found."""

    matrix: torch.Tensor  # (vocab_size, dim): found rows from the file, the rest random
    found: torch.Tensor  # (vocab_size,) bool: the row came from the file
    source: str  # the file's name (never its path: runs move between machines)
    dim: int
    lines: int  # lines read (a word2vec header not counted)
    malformed: int  # lines skipped as malformed
    words: int  # vocabulary words looked for (special tokens excluded)

    @property
    def coverage(self) -> float:
        return int(self.found.sum()) / self.words if self.words else 0.0

    def summary(self) -> str:
        text = (
            f"embeddings {self.source}: {self.dim}-d, {int(self.found.sum()):,} of "
            f"{self.words:,} vocabulary words found ({self.coverage:.1%}), the rest and the "
            f"{len(SPECIAL_TOKENS)} special tokens initialised randomly"
        )
        if self.malformed:
            text += f"; {self.malformed:,} malformed line(s) of {self.lines:,} skipped"
        return text

    def provenance(self) -> dict:
        """What the run records about the file (plain values: a checkpoint key)."""
        return {
            "file": self.source,
            "dim": self.dim,
            "found": int(self.found.sum()),
            "words": self.words,
            "coverage": round(self.coverage, 4),
            "malformed_lines": self.malformed,
        }


def _normalised(word: str, index: dict[str, int]) -> str | None:
    """The vocabulary entry a file's word stands for, or None; the common cases skip the
    full normaliser."""
    if word in index:
        return word
    if word.isascii() and word.isalnum() and word.islower():
        return None  # tokenize() would give it back unchanged: not in the vocabulary
    tokens = tokenize(word)
    return tokens[0] if len(tokens) == 1 and tokens[0] in index else None


def _numbers(values: bytes) -> list[float] | None:
    """Space-separated finite numbers, or None (not a number, NaN, infinity)."""
    try:
        numbers = [float(v) for v in values.split(b" ")]
    except ValueError:
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def _common_width(lines: list[bytes]) -> int:
    """The number of values most of ``lines`` carry after their word (0 if none does): the
    file's dimension, which one malformed line near the top cannot change."""
    widths = Counter(len(line.split()) - 1 for line in lines)
    widths.pop(0, None)
    widths.pop(-1, None)
    return widths.most_common(1)[0][0] if widths else 0


def read_word_vectors(path: str | Path, vocab: Vocabulary, seed: int = 0) -> WordVectors:
    """The vectors of ``vocab``'s words in the GloVe text file ``path``. Of file words that
    normalise alike the first (most frequent) wins; rows not found are drawn from ``seed`` at
    the found vectors' scale; the ``<pad>`` row is zero."""
    path = Path(path)
    if not path.is_file():
        raise StorytellerError(f"embeddings file not found: {path}")
    # Word -> id, special tokens left out: ``<start>`` is not GloVe's "start".
    index = {word: i for i, word in enumerate(vocab.itos) if word not in SPECIAL_TOKENS}
    if not index:
        raise StorytellerError("the vocabulary holds no words to look up in the embeddings")
    found: dict[int, list[float]] = {}
    lines = malformed = 0
    with path.open("rb") as handle:
        head = list(itertools.islice(handle, DIMENSION_SAMPLE))
        first = head[0].split() if head else []
        if len(first) == 2 and first[0].isdigit() and first[1].isdigit():  # word2vec's header
            head = head[1:]
        dim = _common_width(head)
        for line in itertools.chain(head, handle):
            lines += 1
            word_bytes, _, rest = line.strip().partition(b" ")
            rest = rest.strip()
            if not word_bytes or not rest or rest.count(b" ") + 1 != dim:
                malformed += 1
                continue
            try:
                word = word_bytes.decode("utf-8")
            except UnicodeDecodeError:
                malformed += 1
                continue
            entry = _normalised(word, index)
            if entry is None or index[entry] in found:
                continue
            values = _numbers(rest)
            if values is None:
                malformed += 1
                continue
            found[index[entry]] = values
    if not lines or not dim:
        raise StorytellerError(f"{path} holds no word vectors (empty, or no values on a line)")
    if not found:
        raise StorytellerError(
            f"{path}: none of the vocabulary's {len(index):,} words is in the file "
            f"({lines:,} lines, {malformed:,} malformed): is it a GloVe text file "
            "(`word v1 ... vD` per line)?"
        )
    rows = torch.tensor(list(found.keys()))
    vectors = torch.tensor(list(found.values()), dtype=torch.float32)  # (found, dim)
    scale = float(vectors.std()) if vectors.numel() > 1 else 1.0
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), dim, generator=generator) * (scale or 1.0)  # (V, dim)
    matrix[rows] = vectors
    matrix[PAD_ID] = 0.0
    mask = torch.zeros(len(vocab), dtype=torch.bool)
    mask[rows] = True
    return WordVectors(matrix, mask, path.name, dim, lines, malformed, len(index))

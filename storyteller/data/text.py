"""The one caption normaliser, used for training, the vocabulary and every metric (so BLEU
compares references and generated captions as the same kind of token lists)."""

from __future__ import annotations

import re
import unicodedata

_TOKEN_RE = re.compile(r"[a-z0-9]+")

# Special tokens, in id order: their ids (``PAD_ID`` ...) are defined from this order in
# ``storyteller.data.vocab``.
PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)


def tokenize(caption: str) -> list[str]:
    """Lower-case, strip accents and punctuation, and split a caption into word tokens.

    >>> tokenize("A dog, running -- through the GRASS!")
    ['a', 'dog', 'running', 'through', 'the', 'grass']
    """
    text = unicodedata.normalize("NFKD", caption).encode("ascii", "ignore").decode("ascii")
    return _TOKEN_RE.findall(text.lower())

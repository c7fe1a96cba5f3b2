"""The word vocabulary: frequency threshold, fixed special ids, and a pickle that runs no code.

``vocab.pkl`` holds plain data only; its unpickler refuses every class or function reference,
so a file crafted to run code on load is refused instead.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..artefacts import ArtefactError, is_int, type_name
from ..config import MAX_VOCAB, MIN_WORD_COUNT
from ..errors import StorytellerError
from ..runtime import atomic_path
from .text import END, PAD, SPECIAL_TOKENS, START, UNK, tokenize

FORMAT_VERSION = 1
#: The marker ``to_dict`` writes, by which a vocabulary file is told from any other pickle.
FORMAT_MARKER = "storyteller-vocab"
#: Largest file read to tell whether it is a vocabulary (MAX_VOCAB short words fit in a few MB).
MAX_VOCAB_FILE = 64 * 2**20
#: The special tokens' ids: their places in ``SPECIAL_TOKENS``, which every word list starts with.
PAD_ID, START_ID, END_ID, UNK_ID = (SPECIAL_TOKENS.index(t) for t in (PAD, START, END, UNK))


class Vocabulary:
    """Maps words to ids and back; the first ids are always :data:`PAD_ID` ... :data:`UNK_ID`."""

    pad_id, start_id, end_id, unk_id = PAD_ID, START_ID, END_ID, UNK_ID

    def __init__(
        self, words: Sequence[str], threshold: int = MIN_WORD_COUNT, provenance: dict | None = None
    ):
        self.itos: list[str] = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise StorytellerError("vocabulary words must be unique")
        self.threshold = threshold
        self.provenance = dict(provenance or {})

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        threshold: int = MIN_WORD_COUNT,
        provenance: dict | None = None,
    ) -> Vocabulary:
        """Keep words seen at least ``threshold`` times, most frequent first (ties A-Z)."""
        if threshold < 1:
            raise StorytellerError(f"vocabulary threshold must be >= 1, got {threshold}")
        counts: Counter[str] = Counter()
        num_captions = 0
        for caption in captions:
            counts.update(tokenize(caption))
            num_captions += 1
        words = sorted(
            (w for w, n in counts.items() if n >= threshold), key=lambda w: (-counts[w], w)
        )
        info = {
            "threshold": threshold,
            "num_captions": num_captions,
            "num_distinct_words": len(counts),
            "coverage": round(sum(counts[w] for w in words) / max(1, counts.total()), 4),
        }
        info.update(provenance or {})
        return cls(words, threshold, info)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """``<start> w1 ... wn <end>`` as ids; unknown words -> ``<unk>``; truncated to fit."""
        ids = [self.stoi.get(w, self.unk_id) for w in tokenize(caption)]
        if max_length is not None:
            ids = ids[: max(0, max_length - 2)]
        return [self.start_id, *ids, self.end_id]

    def words(self, ids: Iterable[int]) -> list[str]:
        """Ids -> the caption's words: stops at ``<end>``, drops ``<start>``/``<pad>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return words

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words(ids))

    @property
    def fingerprint(self) -> str:
        """A short hash of the word list: checkpoints store it to catch a mismatched vocab."""
        return hashlib.sha256("\n".join(self.itos).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_MARKER,
            "version": FORMAT_VERSION,
            "itos": list(self.itos),
            "threshold": self.threshold,
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """The vocabulary ``to_dict`` wrote, every field checked; a problem is one line."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_MARKER:
            raise StorytellerError("not a storyteller vocabulary (missing format marker)")
        version = data.get("version", FORMAT_VERSION)
        if not is_int(version) or version > FORMAT_VERSION:
            raise StorytellerError(
                f"vocabulary format version {version!r:.40} is not one this storyteller reads "
                f"({FORMAT_VERSION}): rebuild it with `python -m storyteller vocab`"
            )
        itos = data.get("itos")
        if itos is None:
            raise StorytellerError("no itos (the word list)")
        if not isinstance(itos, list):
            raise StorytellerError(f"itos (the word list) must be a list, got {type_name(itos)}")
        if len(itos) > MAX_VOCAB:
            raise StorytellerError(f"itos holds {len(itos):,} words, more than {MAX_VOCAB:,}")
        bad = next((w for w in itos if not isinstance(w, str) or not w or "\n" in w), None)
        if bad is not None or any(not isinstance(w, str) for w in itos):
            raise StorytellerError(f"itos must hold non-empty one-line words, found {bad!r:.40}")
        specials = len(SPECIAL_TOKENS)
        if itos[:specials] != list(SPECIAL_TOKENS):
            raise StorytellerError(
                f"vocabulary must start with {SPECIAL_TOKENS}, got {itos[:specials]}"
            )
        if len(set(itos)) != len(itos):
            raise StorytellerError("itos lists a word twice")
        threshold = data.get("threshold", MIN_WORD_COUNT)
        if not is_int(threshold) or threshold < 1:
            raise StorytellerError(f"threshold must be an integer >= 1, got {threshold!r:.40}")
        provenance = data.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise StorytellerError(f"provenance must be a mapping, got {type_name(provenance)}")
        return cls(itos[specials:], threshold, provenance)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(self.to_dict(), protocol=4))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise StorytellerError(f"vocabulary file not found: {path}")
        data = path.read_bytes()
        if not data:
            raise ArtefactError(path, "the vocabulary file is empty (0 bytes)")
        if is_torch_file(path):  # checked before unpickling: a zip is no pickle
            raise ArtefactError(
                path,
                "this is a model checkpoint (a PyTorch file such as best_model.pth), not a "
                "vocabulary: give it as the checkpoint (--checkpoint) and the run's vocab.pkl "
                "as the vocabulary (--vocab)",
            )
        try:
            return cls.from_dict(safe_unpickle(data, what=str(path)))
        except ArtefactError:
            raise
        except StorytellerError as exc:
            raise ArtefactError(path, str(exc)) from None

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, threshold={self.threshold})"


def is_torch_file(path: str | Path) -> bool:
    """Whether ``path`` is a zip holding ``<name>/data.pkl``, as ``torch.save`` writes, so a
    swapped ``--vocab best_model.pth`` is named for what it is."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_vocabulary_file(path: str | Path) -> bool:
    """Whether ``path`` holds a pickle ``Vocabulary.save`` wrote (read without running
    anything), so the checkpoint loader names a swapped ``--checkpoint vocab.pkl`` instead of
    failing in ``torch.load``."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_VOCAB_FILE or zipfile.is_zipfile(path):
            return False
        data = safe_unpickle(path.read_bytes(), what=str(path))
    except (OSError, StorytellerError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_MARKER


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle referenced a class or function: plain data never does."""


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise _RefusedGlobal(f"refusing to load {module}.{name}")


def safe_unpickle(data: bytes, what: str = "pickle") -> object:
    """Load plain data from pickle bytes without executing anything."""
    try:
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as exc:
        raise ArtefactError(
            what,
            f"not a plain-data vocabulary ({exc}); it may have been crafted to run code on "
            "load, so it was not loaded. Rebuild it with `python -m storyteller vocab`.",
        ) from None
    except Exception as exc:  # truncated, not a pickle, too deep: say why, in one line
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ArtefactError(what, f"not a readable vocabulary pickle ({detail})") from None

"""Reading artefacts back without trusting them. Every file the package reads back may be
truncated, hand-edited or crafted: its loader checks structure, types and ranges *before*
building anything from it, and says what is wrong in one line naming the file (an
:class:`ArtefactError`). Here are the pieces the loaders share.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StorytellerError

#: Largest ``.npy`` header read (NumPy itself refuses headers over 10,000 bytes by default).
MAX_NPY_HEADER = 10_000
#: Longest integer read from a JSON artefact, in digits: nothing the package writes comes
#: near it, and parsing one takes time quadratic in its length.
MAX_JSON_INT_DIGITS = 100


class ArtefactError(StorytellerError):
    """A file the package wrote (or should have) is not what it must be: ``"<path>: <problem>"``,
    the two kept apart so a caller can add context without naming the file twice."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def describe(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message (never a whole file)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value: Any) -> str:
    return type(value).__name__


def is_int(value: Any) -> bool:
    """An integer, and not a bool (``True`` is an ``int`` to Python, never a size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinity)."""
    return (is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


class _LongInteger(ValueError):
    """A JSON integer over :data:`MAX_JSON_INT_DIGITS` digits; ``args[0]``: its length."""


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_JSON_INT_DIGITS:
        raise _LongInteger(digits)
    return int(text)


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON of ``path``, the ``what`` artefact; an empty, truncated or non-UTF-8
    file, or a huge integer, is an :class:`ArtefactError`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtefactError(path, f"not a {what}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ArtefactError(path, f"cannot read the {what}: {exc.strerror or exc}") from None
    if not text.strip():
        raise ArtefactError(path, f"the {what} is empty")
    try:
        return json.loads(text, parse_int=_json_int)
    except _LongInteger as exc:
        raise ArtefactError(
            path,
            f"not a valid {what}: it holds an integer of {exc.args[0]:,} digits (at most "
            f"{MAX_JSON_INT_DIGITS} are read)",
        ) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ArtefactError(path, f"not a valid {what}: {detail}{where}") from None


def check_npy(path: str | Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Check an ``.npy`` file holds a complete C-ordered ``dtype`` array of ``shape`` from its
    header alone: a header promising terabytes, a pickled array or a truncated file is
    refused before ``np.load`` maps anything."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
            elif version in ((2, 0), (3, 0)):
                header = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
            else:
                raise ValueError(f"unknown .npy format version {version}")
            offset = f.tell()
    except OSError as exc:
        raise ArtefactError(path, f"cannot read the feature array: {exc.strerror or exc}") from None
    except (ValueError, SyntaxError, TypeError) as exc:
        message = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ArtefactError(path, f"not a NumPy .npy array ({message})") from None
    held_shape, fortran, held_dtype = header
    if held_dtype.hasobject:
        raise ArtefactError(
            path, "holds Python objects (a pickled array), not numbers: it was not loaded"
        )
    if held_dtype != np.dtype(dtype):
        raise ArtefactError(path, f"holds {held_dtype} values, expected {np.dtype(dtype)}")
    if fortran:
        raise ArtefactError(path, "is stored in Fortran order; the cache is always C-ordered")
    if tuple(held_shape) != tuple(shape):
        raise ArtefactError(
            path, f"has shape {tuple(held_shape)}, but its index describes {tuple(shape)}"
        )
    expected = offset + math.prod(shape) * held_dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ArtefactError(path, f"is {state} ({size} bytes, expected {expected})")


SPLIT_NAMES = ("train", "val", "test")


def read_splits(path: str | Path) -> dict:
    """``splits.json``: ``train``, ``val`` and ``test``, lists of image names, no image in two
    (that would leak test images into training)."""
    path = Path(path)
    data = read_json(path, "split file")
    if not isinstance(data, dict):
        raise ArtefactError(path, f"the split file must be a JSON object, got {type_name(data)}")
    seen: dict[str, str] = {}
    for split in SPLIT_NAMES:
        names = data.get(split)
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ArtefactError(path, f"{split!r} must be a list of image names")
        for name in names:
            if name in seen:
                raise ArtefactError(
                    path, f"image {describe(name)} is in both {seen[name]!r} and {split!r}"
                )
            seen[name] = split
    return data

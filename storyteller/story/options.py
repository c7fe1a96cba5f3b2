"""Story controls: genre, tone, length (-> a word target and a token budget), sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import SEED
from ..config_cli import Bound, bounded, field_bounds, option, type_words
from .errors import StoryError
from .limits import TURN_SECONDS

GENRES = (
    "adventure",
    "fairy tale",
    "mystery",
    "science fiction",
    "comedy",
    "horror",
    "romance",
    "fable",
)
TONES = ("warm", "funny", "eerie", "hopeful", "melancholic", "suspenseful", "whimsical")
LENGTHS = ("short", "medium", "long")

#: words each turn of a story aims for (a request to chat models; a budget for base models)
WORDS = {"short": 60, "medium": 120, "long": 220}

MAX_LABEL_CHARS = 40


def _label(value: str, what: str) -> str:
    value = " ".join(str(value).split())  # one line, single spaces
    if not value:
        raise StoryError(f"story {what} is empty: pick one of the suggestions or type a word")
    if len(value) > MAX_LABEL_CHARS:
        raise StoryError(
            f"story {what} '{value[:20]}...' is too long: use at most {MAX_LABEL_CHARS} characters"
        )
    return value


@dataclass
class StoryOptions:
    """How a story is written: ``genre`` and ``tone`` are free text (one short line; see
    :data:`GENRES`, :data:`TONES`), ``length`` sets the words and tokens per turn, and
    ``time_limit`` can only lower the backend's own limit (a session keeps its retries in one
    turn's time with it). The `story` command's flags are the fields declared with option()."""

    genre: str = option("adventure", f"e.g. {', '.join(GENRES)} (free text)")
    tone: str = option("warm", f"e.g. {', '.join(TONES)} (free text)")
    length: str = option("short", "the token budget per turn", choices=LENGTHS)
    # Each number's range is its field's Bound: the flag's, and the one checked here.
    temperature: float = option(0.8, "sampling temperature (0: greedy)", bound=Bound(0.0, 2.0))
    seed: int | None = option(None, "repeatable sampling where the backend supports it", bound=SEED)
    max_new_tokens: int | None = option(
        None, "override the token budget of --length", bound=Bound(1, 4096)
    )
    time_limit: float | None = bounded(TURN_SECONDS, None)

    def __post_init__(self) -> None:
        self.genre = _label(self.genre, "genre")
        self.tone = _label(self.tone, "tone")
        length = str(self.length).strip().lower()
        if length not in LENGTHS:
            raise StoryError(
                f"unknown story length '{self.length}': use one of {', '.join(LENGTHS)}"
            )
        self.length = length
        self.temperature = _checked("temperature", self.temperature, float)
        if self.seed is not None:
            self.seed = _checked("seed", self.seed, int)
        if self.max_new_tokens is not None:
            self.max_new_tokens = _checked("max_new_tokens", self.max_new_tokens, int)
        if self.time_limit is not None:
            self.time_limit = _checked("time_limit", self.time_limit, float)

    def turn_limit(self, backend_limit: float) -> float:
        """Seconds this turn may take on a backend whose own limit is ``backend_limit``."""
        if self.time_limit is None:
            return backend_limit
        return min(self.time_limit, backend_limit)

    @property
    def words(self) -> int:
        """How many words one turn of the story aims for."""
        return WORDS[self.length]

    @property
    def token_budget(self) -> int:
        """``max_new_tokens`` for one turn: about 1.5 tokens per English word plus headroom."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return round(self.words * 1.5) + 10


def _checked(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (a float may be text) within the field's bound, or a StoryError."""
    number = value
    if kind is float and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    bound = field_bounds(StoryOptions)[name]
    if not isinstance(number, kind) or isinstance(number, bool) or not bound.holds(number):
        raise StoryError(f"story {name} must be {type_words(kind, bound)}, not {value!r:.40}")
    return number

"""Story controls: genre, tone, length (-> a word target and a token budget), sampling."""

from __future__ import annotations

from dataclasses import dataclass

from ..config_cli import option
from .errors import StoryError
from .limits import MAX_TURN_SECONDS

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
    """How a story is written.

    Parameters:
        genre: a genre; suggestions in :data:`GENRES`, free text (one short line) allowed.
        tone: a tone; suggestions in :data:`TONES`, free text allowed.
        length: one of :data:`LENGTHS`; sets the words per turn and the token budget.
        temperature: sampling temperature in [0, 2]; 0 decodes greedily (base models then loop).
        seed: makes sampling repeatable where the backend supports it (local models, most
            OpenAI-compatible servers); ``None`` for a fresh story every time.
        max_new_tokens: override the token budget that ``length`` implies (e.g. a quick test).
        time_limit: seconds this turn may take, *below* the backend's own limit (which it
            never raises: see :mod:`.limits`); ``None``: the backend's limit. A session uses
            it to keep a turn's retries inside one turn's time.
    """

    # The `story` command's flags are the fields declared with option() (config_cli).
    genre: str = option("adventure", f"e.g. {', '.join(GENRES)} (free text)")
    tone: str = option("warm", f"e.g. {', '.join(TONES)} (free text)")
    length: str = option("short", "the token budget per turn", choices=LENGTHS)
    temperature: float = option(0.8, "sampling temperature (0: greedy)")
    seed: int | None = option(None, "repeatable sampling where the backend supports it")
    max_new_tokens: int | None = option(None, "override the token budget of --length")
    time_limit: float | None = None

    def __post_init__(self) -> None:
        self.genre = _label(self.genre, "genre")
        self.tone = _label(self.tone, "tone")
        length = str(self.length).strip().lower()
        if length not in LENGTHS:
            raise StoryError(
                f"unknown story length '{self.length}': use one of {', '.join(LENGTHS)}"
            )
        self.length = length
        try:
            self.temperature = float(self.temperature)
        except (TypeError, ValueError):
            raise StoryError(f"temperature must be a number, not {self.temperature!r}") from None
        if not 0.0 <= self.temperature <= 2.0:
            raise StoryError(f"temperature {self.temperature} is out of range: use 0 to 2")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
                raise StoryError(f"seed must be a whole number >= 0 or None, not {self.seed!r}")
        if self.max_new_tokens is not None:
            if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
                raise StoryError("max_new_tokens must be a whole number from 1 to 4096")
        if self.time_limit is not None:
            try:
                self.time_limit = float(self.time_limit)
            except (TypeError, ValueError):
                raise StoryError(f"time_limit must be seconds, not {self.time_limit!r}") from None
            if not 0 < self.time_limit <= MAX_TURN_SECONDS:
                raise StoryError(
                    f"time_limit {self.time_limit:g} is out of range: use 0 to "
                    f"{MAX_TURN_SECONDS:g} seconds"
                )

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

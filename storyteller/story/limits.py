"""The bounds on one story request, defined once: the app, the ``story`` command and the
Python API (:class:`~storyteller.story.StorySession`) all use these.

A request must not be able to hold the language model for long, whatever a visitor sends: a
100 KB caption once became a 25,000-token prompt that held the offline model for over ten
minutes while every other visitor waited. So one turn of a story is bounded four ways:

* **text in**: a caption is cut to :data:`MAX_CAPTION_CHARS`, a steering line to
  :data:`MAX_INSTRUCTION_CHARS` (the session says so in :attr:`StorySession.notes`); a
  prompt names at most :data:`PROMPT_CAPTIONS` earlier captions;
* **prompt size**: the prompt is fitted to a token budget by dropping the *oldest* part of
  the story so far (:func:`fit_to_budget`): :data:`LOCAL_PROMPT_TOKENS` counted by a local
  model's own tokenizer, :data:`HOSTED_PROMPT_TOKENS` for a hosted model, whose tokenizer is
  not here, counted as UTF-8 bytes (:func:`bytes_as_tokens`: a byte-level or byte-fallback
  tokenizer never makes more tokens than bytes, so this is an upper bound);
* **time**: one turn (all its retries) may take :data:`DEFAULT_TURN_SECONDS` (or
  ``$STORYTELLER_STORY_TIME_LIMIT``, or a backend's ``timeout``): a local model stops
  generating that long after it has read the prompt (reading it may take
  :data:`PREFILL_GRACE_SECONDS` more, the hard ``max_time``), a hosted stream is cut there. A
  request waiting for a busy local model waits at most one such turn plus
  :data:`PREFILL_GRACE_SECONDS`. A hosted turn's deadline covers connecting, the headers and
  every read, keep-alives included (:mod:`.backends.openai_http`);
* **text out**: a turn keeps (and a front end shows) at most :data:`MAX_TURN_CHARS`
  characters, and a hosted backend reads at most :data:`MAX_RECEIVED_CHARS` from its server
  for one turn, whatever ``max_tokens`` it was asked for (memory does not grow with what a
  server sends).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from ..config_cli import Bound
from .errors import StoryError

MAX_CAPTION_CHARS = 500  # a captioner writes < 60 words; a typed caption a few sentences
MAX_INSTRUCTION_CHARS = 300  # one steering line
PROMPT_CAPTIONS = 5  # earlier captions a prompt names (the newest ones)

LOCAL_PROMPT_TOKENS = 1536  # by the model's tokenizer (Gemma 3 270M: ~10 s to read on a CPU)
HOSTED_PROMPT_TOKENS = 6144  # UTF-8 bytes; leaves room for the answer in an 8k context

DEFAULT_TURN_SECONDS = 60.0
MAX_TURN_SECONDS = 3600.0
TURN_SECONDS = Bound(0.0, MAX_TURN_SECONDS, low_open=True)  # a turn's time limit, or a timeout
TIME_LIMIT_ENV = "STORYTELLER_STORY_TIME_LIMIT"
#: 8 characters per token of the largest token budget (4,096): far above any real turn
MAX_TURN_CHARS = 32_768
#: the cleaner drops copies, labels and a last unfinished sentence: room for them
MAX_RECEIVED_CHARS = 2 * MAX_TURN_CHARS
#: reading a full :data:`LOCAL_PROMPT_TOKENS` prompt happens before the first time check
PREFILL_GRACE_SECONDS = 30.0

T = TypeVar("T")


def cap_text(text: str, limit: int, what: str) -> tuple[str, str]:
    """``text`` cut to at most ``limit`` characters (at a word break when there is one in
    its second half), and a one-line note saying so (``""`` when nothing was cut)."""
    if len(text) <= limit:
        return text, ""
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(), f"the {what} was cut to {limit} characters (it had {len(text):,})"


def turn_seconds(value: float | str | None = None) -> float:
    """Seconds one story turn may take: ``value``, else ``$STORYTELLER_STORY_TIME_LIMIT``,
    else :data:`DEFAULT_TURN_SECONDS`.

    Raises:
        StoryError: not a number in (0, :data:`MAX_TURN_SECONDS`].
    """
    where = "the story time limit"
    if value is None:
        value = os.environ.get(TIME_LIMIT_ENV) or DEFAULT_TURN_SECONDS
        where = f"{TIME_LIMIT_ENV}"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise StoryError(f"{where} must be a number of seconds, not {value!r}") from None
    if not TURN_SECONDS.holds(seconds):
        raise StoryError(f"{where} {value!r} is out of range: use 0 to {MAX_TURN_SECONDS:g} s")
    return seconds


def bytes_as_tokens(text: str) -> int:
    """An upper bound on the tokens of ``text`` for any byte-level or byte-fallback
    tokenizer (each token covers at least one UTF-8 byte)."""
    return len(text.encode("utf-8"))


def fit_to_budget(
    render: Callable[[int], T],
    count: Callable[[T], int],
    budget: int,
    story_chars: int,
    what: str = "the prompt",
) -> T:
    """The prompt ``render(n)`` for the largest ``n <= story_chars`` whose ``count`` fits
    ``budget``, where ``n`` is how many characters of the story so far it keeps (the newest;
    the oldest story text is dropped first). ``count`` runs about ten times at most.

    Raises:
        StoryError: even without the story so far the prompt is over the budget (the
            caption and steering line alone are too long in tokens).
    """
    best = render(story_chars)
    if count(best) <= budget:
        return best
    low, high = 0, story_chars  # render(low) is tried below; render(high) is too long
    best = render(0)
    tokens = count(best)
    if tokens > budget:
        raise StoryError(
            f"{what} is {tokens} tokens even without the story so far, more than its budget of "
            f"{budget}: use a shorter caption or steering line"
        )
    while high - low > max(50, story_chars // 64):
        middle = (low + high) // 2
        candidate = render(middle)
        if count(candidate) <= budget:
            low, best = middle, candidate
        else:
            high = middle
    return best

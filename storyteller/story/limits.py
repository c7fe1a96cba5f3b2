"""The bounds on one story request, defined once for the app, the ``story`` command and the
Python API, so that whatever a visitor sends a request cannot hold the model for long: text in
(a caption, a steering line), prompt size (:func:`fit_to_budget` drops the oldest story text),
time (a turn, its retries included, plus a local model's reading of its prompt; a request
waits for a busy local model at most that long) and text out.
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
#: UTF-8 bytes (no tokenizer here; bytes bound byte-level tokens from above), room for the
#: answer in an 8k context
HOSTED_PROMPT_TOKENS = 6144

DEFAULT_TURN_SECONDS = 60.0
MAX_TURN_SECONDS = 3600.0
TURN_SECONDS = Bound(0.0, MAX_TURN_SECONDS, low_open=True)  # a turn's time limit, or a timeout
TIME_LIMIT_ENV = "STORYTELLER_STORY_TIME_LIMIT"
#: 8 characters per token of the largest token budget (4,096): far above any real turn
MAX_TURN_CHARS = 32_768
#: a saved story file (``story --save``): a prompt reads only a story's end, so this holds
#: thousands of ordinary turns and is never read whole into a model
MAX_STORY_FILE_BYTES = 4 * 2**20
#: what a hosted backend reads from its server, whatever ``max_tokens`` it ignores (the cleaner
#: drops copies, labels and a last unfinished sentence: room for them)
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
    else :data:`DEFAULT_TURN_SECONDS`; checked to be in (0, :data:`MAX_TURN_SECONDS`]."""
    where = "the story time limit"
    if value is None:
        value = os.environ.get(TIME_LIMIT_ENV) or DEFAULT_TURN_SECONDS
        where = TIME_LIMIT_ENV
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise StoryError(f"{where} must be a number of seconds, not {value!r}") from None
    if not TURN_SECONDS.holds(seconds):
        raise StoryError(f"{where} {value!r} is out of range: use 0 to {MAX_TURN_SECONDS:g} s")
    return seconds


def fit_to_budget(
    render: Callable[[int], T],
    count: Callable[[T], int],
    budget: int,
    story_chars: int,
    what: str = "the prompt",
) -> T:
    """The prompt ``render(n)`` for the largest ``n <= story_chars`` (characters of the story
    so far it keeps, the newest) whose ``count`` fits ``budget``, found by bisection; a
    :class:`StoryError` when even ``render(0)`` does not fit."""
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

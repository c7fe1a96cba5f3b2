"""Story sessions, as the Img2Story app had them: start a story from an image's caption,
continue it, add another image, steer it with a line of text.

Every action streams the *whole* story so far after each chunk (what a UI shows) and records
the turn only when it completes: a failure or an abandoned stream leaves the history as it
was. Every action is bounded (:mod:`.limits`), and :attr:`StorySession.notes` says what was cut.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

from ..artefacts import ArtefactError, describe, read_json
from .backends import StoryBackend, get_backend
from .cleaning import sentence_key
from .errors import StoryError
from .limits import (
    DEFAULT_TURN_SECONDS,
    MAX_CAPTION_CHARS,
    MAX_INSTRUCTION_CHARS,
    MAX_STORY_FILE_BYTES,
    MAX_TURN_CHARS,
    cap_text,
)
from .options import StoryOptions
from .prompts import KINDS, StoryPrompt, as_sentence, clean_caption

#: generations tried for one turn before "the model wrote no story text" is reported
ATTEMPTS = 3
#: a retry starts only with at least this much of the turn's time left
RETRY_SECONDS = 1.0

PARAGRAPH = "\n\n"  # each turn is a paragraph of the story
#: turns into a story that a base model opens with their input (the caption, the steering line)
OPENED_TURNS = ("image", "steer")
#: what a saved story says it is, and the version of its layout
STORY_FORMAT, STORY_VERSION = "storyteller story", 1
#: the longest ``input`` (caption or steering line) of each kind of turn
INPUT_CHARS = {
    "start": MAX_CAPTION_CHARS,
    "image": MAX_CAPTION_CHARS,
    "steer": MAX_INSTRUCTION_CHARS,
}


def says_nothing_new(text: str, prompt: StoryPrompt, given: str) -> bool:
    """True when a turn's ``text`` is empty, or only its forced opening (``given`` as a
    sentence: a base model stopped inside its first sentence, which the cleaner drops)."""
    if not text.strip():
        return True
    return prompt.kind in OPENED_TURNS and sentence_key(text) == sentence_key(as_sentence(given))


class StorySession:
    """One user's story (the app keeps it in ``gr.State``). ``backend`` defaults to
    ``get_backend("auto")`` on first use; options an action passes become the defaults.
    ``turns`` holds ``{"kind", "input" (caption or steering line), "text"}`` per paragraph, and
    ``notes`` one line per thing the latest action cut or stopped short."""

    def __init__(self, backend: StoryBackend | None = None, options: StoryOptions | None = None):
        self.backend = backend
        self.options = options or StoryOptions()
        self.turns: list[dict] = []
        self.captions: list[str] = []
        self.notes: list[str] = []

    @property
    def story(self) -> str:
        """The full story so far (one paragraph per turn)."""
        return PARAGRAPH.join(turn["text"] for turn in self.turns)

    def reset(self) -> None:
        """Forget the story (keeps the backend and options)."""
        self.turns, self.captions = [], []

    def save(self, path: str | Path) -> None:
        """Write the story so far to ``path`` as JSON, its turns (atomically)."""
        from ..runtime import write_json  # imports torch: only when a story is saved

        data = {"format": STORY_FORMAT, "version": STORY_VERSION, "turns": self.turns}
        try:
            write_json(path, data)
        except OSError as exc:
            raise ArtefactError(path, f"cannot save the story: {exc.strerror or exc}") from None

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: StoryBackend | None = None,
        options: StoryOptions | None = None,
    ) -> StorySession:
        """The story :meth:`save` wrote to ``path``, ready to go on. A file over
        :data:`MAX_STORY_FILE_BYTES`, or one this class could not have written, is one
        :class:`ArtefactError` line."""
        try:
            size = Path(path).stat().st_size
        except OSError as exc:
            raise ArtefactError(path, f"cannot read the story: {exc.strerror or exc}") from None
        if size > MAX_STORY_FILE_BYTES:
            raise ArtefactError(
                path, f"a saved story is at most {MAX_STORY_FILE_BYTES:,} bytes, this is {size:,}"
            )
        data = read_json(path, "saved story")
        if problem := _saved_story_problem(data):
            raise ArtefactError(path, f"not a saved story: {problem}")
        session = cls(backend, options)
        session.turns = data["turns"]
        session.captions = [t["input"] for t in session.turns if t["kind"] in ("start", "image")]
        return session

    def start(self, caption: str, options: StoryOptions | None = None) -> Iterator[str]:
        """A new story from ``caption`` (replaces the current one once it completes)."""
        self.notes = []
        return self._start(self._caption(caption), options)

    def continue_story(self, options: StoryOptions | None = None) -> Iterator[str]:
        """The next part of the current story."""
        self.notes = []
        prompt = StoryPrompt("continue", self._captions(), self.story)
        return self._turn(prompt, "", options)

    def add_image(self, caption: str, options: StoryOptions | None = None) -> Iterator[str]:
        """Continue the story so that another image's scene (its caption) happens next;
        starts a story when there is none yet."""
        self.notes = []
        caption = self._caption(caption)
        if not self.turns:
            return self._start(caption, options)
        prompt = StoryPrompt("image", (*self.captions, caption), self.story)
        return self._turn(prompt, caption, options)

    def steer(self, instruction: str, options: StoryOptions | None = None) -> Iterator[str]:
        """Continue the story following the reader's line of text (``"a storm breaks"``)."""
        self.notes = []
        instruction = self._cap(
            " ".join(str(instruction or "").split()), MAX_INSTRUCTION_CHARS, "steering line"
        )
        prompt = StoryPrompt("steer", self._captions(), self.story, instruction)
        return self._turn(prompt, prompt.instruction, options)

    def _cap(self, text: str, limit: int, what: str) -> str:
        text, note = cap_text(text, limit, what)
        if note:
            self.notes.append(note)
        return text

    def _caption(self, caption: str) -> str:
        return self._cap(clean_caption(caption), MAX_CAPTION_CHARS, "caption")

    def _start(self, caption: str, options: StoryOptions | None) -> Iterator[str]:
        return self._turn(StoryPrompt("start", (caption,)), caption, options)

    def _captions(self) -> tuple[str, ...]:
        if not self.turns:
            raise StoryError("there is no story yet: start one from an image first")
        return tuple(self.captions)

    def _turn(self, prompt: StoryPrompt, given: str, options: StoryOptions | None) -> Iterator[str]:
        """Validate now (errors surface at the call), generate when iterated."""
        if options is not None:
            self.options = options
        return self._generate(prompt, given, self.options)

    def _draw(self, prompt: StoryPrompt, options: StoryOptions, prefix: str) -> Iterator[str]:
        """One generation: yields ``prefix`` + its text so far after each chunk and returns the
        text, cut (with a note) at :data:`MAX_TURN_CHARS`."""
        text = ""
        for delta in self.backend.stream(prompt, options):
            text += delta
            full = len(text) >= MAX_TURN_CHARS
            if full:
                text = cap_text(text, MAX_TURN_CHARS, "story turn")[0]
                self.notes.append(f"the story turn was cut at {MAX_TURN_CHARS:,} characters")
            if text.strip():
                yield prefix + text.strip()
            if full:
                break
        return text.strip()

    def _generate(self, prompt: StoryPrompt, given: str, options: StoryOptions) -> Iterator[str]:
        if self.backend is None:
            self.backend = get_backend("auto")
        start = prompt.kind == "start"  # a new story replaces the old one once it completes
        before = "" if start else self.story
        prefix = before + PARAGRAPH if before else ""
        # a duck-typed backend (a test double, a student's own) has no time_limit of its own
        limit = options.turn_limit(getattr(self.backend, "time_limit", DEFAULT_TURN_SECONDS))
        deadline = time.monotonic() + limit  # the whole turn, every retry included
        tries, text, opening_only = 0, "", ""
        while not text and tries < ATTEMPTS:
            left = deadline - time.monotonic()
            if tries and left < RETRY_SECONDS:
                break
            # A small model may write nothing new (only copies of the story so far, which the
            # backends drop, or no finished sentence after a forced opening): draw again.
            seed = None if options.seed is None else options.seed + tries
            this_try = dataclasses.replace(options, seed=seed, time_limit=max(left, 0.01))
            tries += 1
            text = yield from self._draw(prompt, this_try, prefix)
            if says_nothing_new(text, prompt, given):
                opening_only, text = text or opening_only, ""
        out_of_time = time.monotonic() >= deadline
        if not text and opening_only:  # the user's own line: kept rather than lose the turn
            text = opening_only
            self.notes.append(f"the model added nothing after the opening line in {tries} tries")
        if not text:
            why = f"in the time limit of {limit:g} s" if out_of_time else f"in {tries} tries"
            raise StoryError(
                f"{self.backend.name}: the model wrote no story text {why}: try again (or raise "
                "the temperature)"
            )
        if out_of_time:
            self.notes.append(f"the story stopped at its time limit of {limit:g} s per turn")
        turn = {"kind": prompt.kind, "input": given, "text": text}
        self.turns = [turn] if start else [*self.turns, turn]
        if prompt.kind in ("start", "image"):
            self.captions = list(prompt.captions)


def _saved_story_problem(data) -> str:
    """What :meth:`StorySession.save` would not have written in ``data`` ("" if nothing)."""
    if not isinstance(data, dict) or data.get("format") != STORY_FORMAT:
        return f'it has no "format": "{STORY_FORMAT}" (save one with story --save)'
    if data.get("version") != STORY_VERSION:
        return f"version {describe(data.get('version'))} (this version reads {STORY_VERSION})"
    turns = data.get("turns")
    if not isinstance(turns, list) or not turns:
        return '"turns" is not a list of turns'
    for number, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or set(turn) != {"kind", "input", "text"}:
            return f'turn {number} is not {{"kind", "input", "text"}}'
        if not all(isinstance(value, str) for value in turn.values()):
            return f"turn {number} holds a value that is not text"
        kind, given, text = turn["kind"], turn["input"], turn["text"]
        if kind not in KINDS or (kind == "start") != (number == 1):
            return f"turn {number} is {describe(kind)}: a story is a start, then {KINDS[1:]}"
        limit = INPUT_CHARS.get(kind, 0)  # a continue turn has no input
        if given != " ".join(given.split()) or len(given) > limit or bool(given) != bool(limit):
            want = f"one line of 1 to {limit} characters" if limit else "none"
            return f"turn {number}'s input {describe(given)} is not a {kind} turn's ({want})"
        if not text.strip() or len(text) > MAX_TURN_CHARS:
            return f"turn {number}'s text is not 1 to {MAX_TURN_CHARS:,} characters"
    return ""


def write_story(
    caption: str,
    backend: str | StoryBackend = "auto",
    options: StoryOptions | None = None,
) -> str:
    """A one-shot story for ``caption`` (``backend``: a name for :func:`get_backend` or a
    backend); :class:`NoStoryBackend` when ``auto`` finds no language model."""
    if isinstance(backend, str):
        backend = get_backend(backend)
    session = StorySession(backend, options)
    for _ in session.start(caption):
        pass
    return session.story

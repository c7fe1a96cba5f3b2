"""Raw model text -> clean story text, streamed as deltas that never need taking back.

Models run past a story's end: a base model writes the next few-shot example (``Genre:``), any
model may stop mid-sentence at its token budget, open with a label or preamble ("Here is the
next part:") or repeat the story's last sentence. :class:`StreamCleaner` holds back just enough
text to remove all of that while the story streams.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

#: a sentence ends at . ! ? or an ellipsis, maybe followed by closing quotes or brackets
_SENTENCE_END = re.compile(r"(?:[.!?]|\u2026)['\"\u201d\u2019)\]]*(?=\s|$)")
_ENDS_SENTENCE = re.compile(r"(?:[.!?:;]|\u2026)['\"\u201d\u2019)\]]*$")
_LEADING_LABEL = re.compile(
    r"^\s*(?:"
    # "Story:", "**Continuation:**", "Part 2:" (the colon is required: "Story time..." stays)
    r"(?:\*\*|#+\s*)?(?:story|story goes on|continuation|next part|part \d+)"
    r"(?:\s*:\s*(?:\*\*)?|\s*(?:\*\*)\s*:)\s*"
    # "Here is the next part of the story:" on a line of its own
    r"|here(?:'s| is)[^\n]{0,80}?:[ \t]*\n\s*"
    # a title line: "**The Lost Ball**" or "# The Lost Ball"
    r"|(?:\*\*|#+ )[^\n*]{1,80}(?:\*\*)?[ \t]*\n\s*"
    r")",
    re.IGNORECASE,
)
_LEAD_CHARS = 80  # decide on a leading label/echo once this much text (or a sentence) is in
_MIN_REPEAT_WORDS = 4  # shorter sentences ("He smiled.") may honestly recur


def sentence_key(sentence: str) -> str:
    """A sentence compared loosely: lower case, words only."""
    return " ".join(re.findall(r"[a-z0-9']+", sentence.lower()))


def partial_marker(text: str, markers: Iterable[str]) -> int:
    """Length of the tail of ``text`` that could still grow into one of ``markers``."""
    held = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), held, -1):
            if text.endswith(marker[:k]):
                held = k
                break
    return held


def split_sentences(text: str) -> list[str]:
    """``text`` cut after every sentence end (the pieces keep their white space)."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if text[start:]:
        pieces.append(text[start:])
    return pieces


def last_sentence(text: str) -> str:
    """The last sentence of ``text`` (for spotting a model that repeats it)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text.rstrip())]
    if len(ends) >= 2:
        return text[ends[-2] :].strip()
    return text.strip()


class StreamCleaner:
    """Feed raw model text in pieces; get back clean story text in pieces: up to the last
    finished sentence, nothing from a ``stop`` marker on (:attr:`done` then turns on), no
    leading label or ``echo`` (the story's last sentence), no ``joins`` (a base model's "story
    goes on" label), and no sentence of four or more words that ``seen`` (the story so far) or
    this turn already has: small models copy whole paragraphs back instead of going on.
    ``after_opening`` is the turn's forced first sentence, joined with one space."""

    def __init__(
        self,
        stop: tuple[str, ...] = (),
        echo: str = "",
        after_opening: str = "",
        joins: tuple[str, ...] = (),
        seen: str = "",
    ):
        self.seen = {sentence_key(s) for s in split_sentences(seen)}
        self._pending_space = ""  # white space of a dropped sentence, for the next one kept
        self.stop = tuple(s for s in stop if s)
        self.joins = tuple(j for j in joins if j)
        self.echo = echo.strip()
        self.after_opening = after_opening
        self.raw = ""
        self.emitted = 0  # characters of self.raw already handed out
        self.done = False  # a stop marker was seen: the caller may stop generating
        self._lead_decided = False
        self._any_output = bool(after_opening)

    def _remove_joins(self) -> None:
        """Drop each join label; a paragraph the model left without its full stop gets one
        ("seen before\nStory goes on: Under" is "seen before. Under", not "before Under")."""
        for join in self.joins:
            while (at := self.raw.find(join, self.emitted)) >= 0:
                head = self.raw[:at]
                body = head.rstrip()
                if len(body) > self.emitted and not _ENDS_SENTENCE.search(body):
                    head = body + "." + head[len(body) :]
                self.raw = head + self.raw[at + len(join) :]

    def _truncate_at_stop(self) -> None:
        self._remove_joins()
        start = len(self.raw) - len(self.raw.lstrip())  # a marker only ends text, not begins it
        found = [self.raw.find(s, start) for s in self.stop]
        # a marker that may still grow into a join (the text ends in "\nStory go") waits
        found = [
            i for i in found if i >= 0 and not any(j.startswith(self.raw[i:]) for j in self.joins)
        ]
        cut = min(found, default=-1)
        if cut >= 0:
            self.raw = self.raw[:cut]
            self.done = True

    def _decide_lead(self, final: bool) -> bool:
        """Strip a leading label, preamble or echo once enough text has arrived to tell."""
        if self._lead_decided:
            return True
        text = self.raw
        while True:
            match = _LEADING_LABEL.match(text)
            if not match or not match.group(0).strip():
                break
            text = text[match.end() :]
        if self.echo:
            said, echo = " ".join(text.split()), " ".join(self.echo.split())
            if echo.startswith(said) and not final:
                return False  # could still be the echo: wait for more
            if said.startswith(echo):
                pattern = r"\s*" + r"\s+".join(map(re.escape, echo.split()))
                text = text[re.match(pattern, text).end() :]
        text = text.lstrip()
        if not final and len(text) < _LEAD_CHARS and not _SENTENCE_END.search(text):
            return False  # a label or preamble may still be arriving
        if self.after_opening and text:
            text = " " + text
        self.raw = text
        self._lead_decided = True
        return True

    def _drop_repeats(self, piece: str) -> str:
        """``piece`` without the sentences the story already has (see ``seen``)."""
        kept = []
        for sentence in split_sentences(piece):
            key = sentence_key(sentence)
            if len(key.split()) >= _MIN_REPEAT_WORDS and key in self.seen:
                space = sentence[: len(sentence) - len(sentence.lstrip())]
                if "\n" in space or not self._pending_space:
                    self._pending_space = space  # a paragraph break outlives the sentence
                continue
            self.seen.add(key)
            if self._pending_space:
                body = sentence.lstrip()
                space = sentence[: len(sentence) - len(body)]
                sentence = (space if "\n" in space else self._pending_space or space) + body
                self._pending_space = ""
            kept.append(sentence)
        return "".join(kept)

    def _take(self, end: int) -> str:
        piece = self.raw[self.emitted : end]
        if piece:
            self.emitted = end
            # counted before copies are dropped: a turn of copies plus a half sentence must
            # not end as that half sentence (see finish)
            self._any_output = self._any_output or bool(piece.strip())
            piece = self._drop_repeats(piece)
        return piece

    def feed(self, delta: str) -> str:
        """Add raw text; return the clean text that is now safe to show (maybe empty)."""
        if self.done:
            return ""
        self.raw += delta
        self._truncate_at_stop()
        if not self._decide_lead(final=self.done):
            return ""
        if self.done:
            return ""  # finish() hands out the rest, trimmed to its last sentence
        safe = len(self.raw) - partial_marker(self.raw, self.stop + self.joins)
        ends = [m.end() for m in _SENTENCE_END.finditer(self.raw, 0, safe)]
        ends = [e for e in ends if e < safe]  # an end must be followed by text to be sure
        return self._take(ends[-1]) if ends and ends[-1] > self.emitted else ""

    def finish(self) -> str:
        """The rest of the story: up to its last finished sentence."""
        self._truncate_at_stop()
        self._decide_lead(final=True)
        rest = self.raw[self.emitted :]
        ends = [m.end() for m in _SENTENCE_END.finditer(rest)]
        if ends:
            return self._take(self.emitted + ends[-1])
        if not self._any_output and rest.strip():  # one unfinished sentence is all there is
            return self._take(len(self.raw.rstrip()))
        return ""

    def clean(self, deltas: Iterable[str]) -> Iterator[str]:
        """The clean pieces of ``deltas`` until they end or a stop marker is seen (then stop
        generating); :meth:`finish` gives the rest."""
        for delta in deltas:
            if piece := self.feed(delta):
                yield piece
            if self.done:
                return


def turn_cleaner(
    story: str, opening: str = "", stop: tuple[str, ...] = (), joins: tuple[str, ...] = ()
) -> StreamCleaner:
    """The :class:`StreamCleaner` for one turn after ``story``, opened by ``opening`` (a
    forced first sentence, or ""), with a completion prompt's ``stop`` and ``joins``: neither
    may be copied back; with no opening, the story's last sentence is the echo to drop."""
    return StreamCleaner(
        stop=stop,
        echo=last_sentence(story) if story and not opening else "",
        after_opening=opening,
        joins=joins,
        seen=f"{story} {opening}",
    )

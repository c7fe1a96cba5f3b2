"""What a language model is asked: one :class:`StoryPrompt` per story turn, rendered two ways.

Chat models get a system prompt and one user message. Base models (the offline Gemma 3 270M)
cannot follow instructions, so they get a few-shot completion prompt, and a turn *opens with
the caption or steering line as its first sentence*: without it the 270M model drifted off the
caption or ignored the steering cue (``bench/steering.py``). Both name the hero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .characters import Hero, find_hero
from .errors import StoryError
from .limits import MAX_CAPTION_CHARS, MAX_INSTRUCTION_CHARS, PROMPT_CAPTIONS
from .options import StoryOptions

KINDS = ("start", "continue", "image", "steer")

#: characters of the story so far that a prompt carries (the rest is trimmed from the front)
CHAT_STORY_CHARS = 6000
COMPLETION_STORY_CHARS = 1500

STOPWORDS = frozenset(
    """a an the and or but of in on at to for from with without by into onto over under up down
    out off near next through across along around behind beside between above below while is
    are was were be been being am its it his her their them they he she him we you i this that
    these those there here some one two three four five several many other another each
    very small large big little front back top side who which what as has have had does do
    something someone his hers our your my while looking looks look stands standing sits
    sitting""".split()
)

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SPECIAL = re.compile(r"<[^<>\s]*>")  # <unk>, <start>, ... from a captioner's vocabulary


def clean_caption(caption: str) -> str:
    """A caption as a model should see it: one line, no ``<unk>``-style tokens, no end dot
    (a StoryError when nothing is left)."""
    text = " ".join(_SPECIAL.sub(" ", str(caption or "")).split()).strip(" .")
    if not text:
        raise StoryError("the caption is empty: caption an image first, or type a caption")
    return text


def as_sentence(text: str) -> str:
    """``"a dog runs"`` -> ``"A dog runs."`` (capitalised, ends with a full stop)."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def content_words(text: str) -> list[str]:
    """The caption's content words (nouns, verbs, colours...): lower case, in order, unique."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        word = word.strip("'-")
        if len(word) > 2 and word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def trim_story(story: str, max_chars: int) -> str:
    """The end of ``story`` in at most ``max_chars``, starting at a sentence: a model needs
    the newest part of a long story to continue it."""
    story = story.strip()
    if len(story) <= max_chars:
        return story
    if max_chars <= 0:  # a prompt over its token budget even with a little of the story
        return ""
    tail = story[-max_chars:]
    match = re.search(r"[.!?]['\"”’)]*\s+", tail)
    if match and match.end() < len(tail):
        tail = tail[match.end() :]
    return "... " + tail.lstrip()


def flatten(story: str) -> str:
    """Paragraphs -> one line (a base-model prompt keeps a story on its ``Story:`` line)."""
    return " ".join(story.split())


@dataclass(frozen=True)
class Completion:
    """A base-model prompt: generate after ``text``; the turn's text begins with ``opening``."""

    text: str
    opening: str = ""
    stop: tuple[str, ...] = ("\n", "Genre:", "Story:", "Then:", "Story goes on:")
    joins: tuple[str, ...] = ("\nStory goes on:",)  # the model going on in few-shot format


FEW_SHOT = """Short stories for a picture book. Each story is about what its picture shows.

Genre: adventure. Tone: warm. Hero: Biscuit, the dog (he).
Story: A brown dog runs through the tall grass. His name is Biscuit, and he has smelled \
something wonderful at the far end of the field. He bounds past the old fence and the apple \
tree, ears flying, until he finds a lost red ball in the weeds.
Then: he meets a kitten
Story goes on: He meets a kitten. Under the apple tree sits a tiny grey kitten, shivering and \
alone. Biscuit drops the ball and nudges it toward her with his nose. The kitten pats it once, \
then twice, and soon the two of them are chasing it home together through the grass.

Genre: mystery. Tone: eerie. Hero: Tom, the man (he).
Story: A man in a red jacket stands on a snowy mountain. The wind has stopped, and the silence \
feels wrong. Below Tom, a line of footprints leads across the snow toward the ridge, but he has \
been alone on this mountain for three days.
Story goes on: Tom pulls his red jacket tighter and follows the footprints, one careful step at \
a time. They end at a small wooden cabin with smoke curling from its chimney. On the table \
inside, a cup of tea is still warm, and next to it lies a map with his own name on it.

"""


@dataclass(frozen=True)
class StoryPrompt:
    """One turn of a story, however a backend renders it: ``start`` (from the caption),
    ``continue``, ``image`` (the newest of ``captions`` happens next) or ``steer`` (following
    the reader's ``instruction``), after ``story``, the story so far."""

    kind: str
    captions: tuple[str, ...]
    story: str = ""
    instruction: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StoryError(f"unknown story turn '{self.kind}': use one of {', '.join(KINDS)}")
        captions = tuple(clean_caption(c) for c in self.captions)
        if not captions:
            raise StoryError("a story needs a caption: caption an image first")
        longest = max(len(c) for c in captions)
        if longest > MAX_CAPTION_CHARS:  # StorySession cuts captions (and says so) first
            raise StoryError(
                f"a caption of {longest:,} characters is too long: use at most "
                f"{MAX_CAPTION_CHARS} (limits.cap_text cuts one)"
            )
        object.__setattr__(self, "captions", captions)
        if self.kind != "start" and not self.story.strip():
            raise StoryError("there is no story to continue yet: start one from an image first")
        if self.kind == "steer":
            instruction = " ".join(self.instruction.split())
            if not instruction:
                raise StoryError("the steering line is empty: type what should happen next")
            if len(instruction) > MAX_INSTRUCTION_CHARS:
                raise StoryError(
                    f"the steering line is too long: use at most {MAX_INSTRUCTION_CHARS} characters"
                )
            object.__setattr__(self, "instruction", instruction)

    @property
    def caption(self) -> str:
        """The newest caption."""
        return self.captions[-1]

    @property
    def hero(self) -> Hero | None:
        """The hero of the first caption that has one: the same in every turn of a story."""
        return next(filter(None, map(find_hero, self.captions)), None)

    def system_message(self, options: StoryOptions) -> str:
        return (
            "You are a storyteller who turns photo captions into stories. "
            f"Write {options.genre} fiction in a {options.tone} tone. "
            "Write plain story prose only: no title, no headings, no lists, no preamble such as "
            "'Here is a story', no notes or questions after the story. "
            "Stay with the people, animals, objects and places the photos show."
        )

    def user_message(self, options: StoryOptions, max_story_chars: int = CHAT_STORY_CHARS) -> str:
        words = options.words
        keep = ", ".join(content_words(self.caption))
        keep_line = f" Keep what it shows at the centre ({keep})." if keep else ""
        hero = self.hero
        hero_line = (
            f" The main character is {hero.line()}: keep that name and pronoun." if hero else ""
        )
        if self.kind == "start":
            return (
                f'A photo shows: "{as_sentence(self.caption)}"\n\n'
                f"Write the opening of a {options.genre} story about exactly what this photo "
                f"shows, about {words} words, in a {options.tone} tone.{keep_line}{hero_line}"
            )
        earlier = self.captions[:-1] if self.kind == "image" else self.captions
        photos = "; ".join(f'"{as_sentence(c)}"' for c in earlier[-PROMPT_CAPTIONS:])
        if len(earlier) > PROMPT_CAPTIONS:  # a bounded prompt names the newest photos only
            photos = f"{len(earlier) - PROMPT_CAPTIONS} more, then {photos}"
        story = trim_story(self.story, max_story_chars)
        lines = [f'The story so far, written from photos showing {photos}:\n\n"""\n{story}\n"""\n']
        if self.kind == "continue":
            lines.append(f"Write the next part of this story, about {words} words.")
        elif self.kind == "image":
            lines.append(
                f'A new photo shows: "{as_sentence(self.caption)}"\n'
                f"Write the next part of the story, about {words} words, in which this new "
                f"scene happens.{keep_line}"
            )
        else:
            lines.append(
                f"Write the next part of the story, about {words} words, following this "
                f'direction from the reader: "{self.instruction}"'
            )
        lines.append(
            "Write only the new text, continuing naturally; do not repeat the story so far."
            + hero_line
        )
        return "\n".join(lines)

    def messages(
        self, options: StoryOptions, max_story_chars: int = CHAT_STORY_CHARS
    ) -> list[dict[str, str]]:
        """Chat messages: ``[{"role": "system", ...}, {"role": "user", ...}]``."""
        return [
            {"role": "system", "content": self.system_message(options)},
            {"role": "user", "content": self.user_message(options, max_story_chars)},
        ]

    def completion(
        self, options: StoryOptions, max_story_chars: int = COMPLETION_STORY_CHARS
    ) -> Completion:
        """A few-shot completion prompt that a base model continues (see the module doc)."""
        hero = self.hero
        cast = f" Hero: {hero.line()}." if hero else ""
        header = FEW_SHOT + f"Genre: {options.genre}. Tone: {options.tone}.{cast}\nStory:"
        if self.kind == "start":
            opening = as_sentence(self.caption)
            return Completion(f"{header} {opening}", opening)
        story = flatten(trim_story(self.story, max_story_chars))
        if self.kind == "continue":
            return Completion(f"{header} {story}\nStory goes on:")
        cue = self.caption if self.kind == "image" else self.instruction
        opening = as_sentence(cue)  # the new image's caption, or the reader's steering line
        return Completion(f"{header} {story}\nThen: {cue}\nStory goes on: {opening}", opening)

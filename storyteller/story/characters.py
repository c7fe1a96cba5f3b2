"""The story's hero, decided once from its first caption, so every turn keeps one name and
one pronoun (a small base model calls the dog "he", then "she").

A word for a man or a woman decides the pronoun; any other person or animal gets one from a
stable hash of the caption; a group (``two dogs``) is ``they``, unnamed; a caption with no
living subject has no hero.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

HE_WORDS = frozenset(
    "man boy guy gentleman father dad son brother grandfather husband king policeman".split()
)
SHE_WORDS = frozenset(
    "woman girl lady mother mom daughter sister grandmother wife queen bride".split()
)
#: people and animals whose word says nothing of he or she
EITHER_WORDS = frozenset(
    """child kid baby toddler person teenager student dog puppy cat kitten horse pony bird
    player skier snowboarder surfer biker cyclist rider climber swimmer runner skateboarder
    hiker dancer worker musician cowboy athlete""".split()
)
#: words for several at once, besides the plural of the words above
GROUP_WORDS = frozenset(
    "people men women children group team crowd couple family friends kids".split()
)
NUMBERS = frozenset("two three four five six several many".split())
HE_NAMES = ("Sam", "Leo", "Max", "Theo", "Finn", "Jack")
SHE_NAMES = ("Mia", "Rosa", "Nell", "Ivy", "Lucy", "Ada")

_ONE = HE_WORDS | SHE_WORDS | EITHER_WORDS
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Hero:
    """Who the story is about: a ``noun`` from the caption, a pronoun, a name ("" for a group)."""

    noun: str
    pronoun: str
    name: str = ""

    def line(self) -> str:
        """``"Max, the dog (he)"`` or ``"the dogs (they)"``: the prompts' ``Hero:`` text."""
        who = f"{self.name}, the {self.noun}" if self.name else f"the {self.noun}"
        return f"{who} ({self.pronoun})"


def _singular(word: str) -> str | None:
    """``word`` if it names one person or animal, its singular if it names several, else None."""
    if word in _ONE:
        return word
    for cut in ("es", "s"):
        if word.endswith(cut) and word[: -len(cut)] in _ONE:
            return word[: -len(cut)]
    return None


def find_hero(caption: str) -> Hero | None:
    """The hero of a story that opens with ``caption``: its first person or animal word."""
    words = _WORD.findall(caption.lower())
    for i, word in enumerate(words):
        counted = i > 0 and words[i - 1] in NUMBERS
        if word in GROUP_WORDS:
            return Hero(word, "they")
        one = _singular(word)
        if one is None:
            continue
        if word != one or counted:  # "dogs", "two dogs"
            return Hero(word, "they")
        if one in HE_WORDS:
            pronoun = "he"
        elif one in SHE_WORDS:
            pronoun = "she"
        else:  # stable across runs and processes (unlike hash())
            pronoun = ("he", "she")[zlib.crc32(caption.encode()) % 2]
        names = HE_NAMES if pronoun == "he" else SHE_NAMES
        name = names[zlib.crc32(caption.encode()[::-1]) % len(names)]
        return Hero(one, pronoun, name)
    return None

"""The interface every story backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from ..options import StoryOptions
from ..prompts import StoryPrompt


class StoryBackend(ABC):
    """A language model that writes story text for a :class:`StoryPrompt`.

    Subclasses set :attr:`name` and implement :meth:`describe` and :meth:`stream`.
    """

    name: str = ""

    @abstractmethod
    def describe(self) -> str:
        """One line naming the backend and its model, for the UI (never a token)."""

    @abstractmethod
    def stream(self, prompt: StoryPrompt, options: StoryOptions) -> Iterator[str]:
        """Yield the turn's text as deltas while it is generated.

        Raises:
            StoryError: the model could not be reached or failed; the message says why.
        """

    def generate(self, prompt: StoryPrompt, options: StoryOptions) -> str:
        """The whole turn at once (joins :meth:`stream`)."""
        return "".join(self.stream(prompt, options)).strip()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"

"""The interface every story backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from ..limits import DEFAULT_TURN_SECONDS
from ..options import StoryOptions
from ..prompts import StoryPrompt


class StoryBackend(ABC):
    """A language model that writes story text for a :class:`StoryPrompt`. :meth:`stream`
    ends a turn within ``options.turn_limit(self.time_limit)`` seconds, like one that runs out
    of tokens, and raises a one-line :class:`StoryError` when the model fails."""

    name: str = ""
    #: seconds one turn may take on this backend (its ``timeout`` argument sets it)
    time_limit: float = DEFAULT_TURN_SECONDS

    @abstractmethod
    def describe(self) -> str:
        """One line naming the backend and its model, for the UI (never a token)."""

    @abstractmethod
    def stream(self, prompt: StoryPrompt, options: StoryOptions) -> Iterator[str]:
        """Yield the turn's text as deltas while it is generated."""

    def __deepcopy__(self, memo) -> StoryBackend:
        """Backends are shared, loaded once: a copied session (``gr.State``) shares it too."""
        return self

    def __copy__(self) -> StoryBackend:
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"

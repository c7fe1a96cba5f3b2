"""The interface every story backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from ..limits import DEFAULT_TURN_SECONDS
from ..options import StoryOptions
from ..prompts import StoryPrompt


class StoryBackend(ABC):
    """A language model that writes story text for a :class:`StoryPrompt`.

    Subclasses set :attr:`name` and implement :meth:`describe` and :meth:`stream`, which
    must end a turn within ``options.turn_limit(self.time_limit)`` seconds (see
    :mod:`..limits`): a turn that runs out of time ends like one that runs out of tokens.
    """

    name: str = ""
    #: seconds one turn may take on this backend (its ``timeout`` argument sets it)
    time_limit: float = DEFAULT_TURN_SECONDS

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

    def __deepcopy__(self, memo) -> StoryBackend:
        """Backends are shared, loaded once: a copied session (``gr.State``) shares it too."""
        return self

    def __copy__(self) -> StoryBackend:
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"

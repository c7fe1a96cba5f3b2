"""From caption to story: language-model backends, prompts and story sessions.

Importing this package is cheap: ``transformers``, ``huggingface_hub`` and ``torch`` are
imported only by the backend that needs them, when it is created.

>>> from storyteller.story import StorySession, StoryOptions, get_backend
>>> session = StorySession(get_backend("auto"), StoryOptions(genre="mystery"))
>>> for text in session.start("a dog runs through the snow"):
...     print(text)  # the whole story so far, growing as it streams
"""

from .backends import StoryBackend, describe_backends, get_backend
from .errors import NoStoryBackend, StoryError
from .options import GENRES, LENGTHS, TONES, StoryOptions
from .prompts import StoryPrompt, content_words
from .session import StorySession, write_story

__all__ = [
    "GENRES",
    "LENGTHS",
    "TONES",
    "NoStoryBackend",
    "StoryBackend",
    "StoryError",
    "StoryOptions",
    "StoryPrompt",
    "StorySession",
    "content_words",
    "describe_backends",
    "get_backend",
    "write_story",
]

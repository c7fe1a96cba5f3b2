"""The errors story generation raises: user-facing, one line, never a token or a traceback."""

from __future__ import annotations

from ..errors import StorytellerError


class StoryError(StorytellerError):
    """Story generation failed (bad token, HTTP error, timeout, model too large...); the
    message names the backend and says what to do, and callers still show the caption."""


class NoStoryBackend(StoryError):
    """No language model is available (``auto`` found neither a token nor the offline model)."""

"""Notebook 05's story cells: pick the story backend, tell the story from the caption, save
``story.json``; a missing model or a failed story is said once and the notebook goes on
with the caption alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import SMOKE_LABEL
from ..progress import Log

#: New tokens per story turn in smoke mode (the offline model stays quick on a CPU).
SMOKE_STORY_TOKENS = 40


def _backend_choice(name: str, token: str | None, smoke: bool) -> tuple[str, str]:
    """The backend :func:`story_backend` uses for ``name``, and why (for messages)."""
    from ..story.backends import choose_auto

    name = (name or "auto").strip().lower()
    if name != "auto":
        return name, f"STORY_BACKEND = {name!r}"
    if smoke:
        return "offline", "auto, smoke mode: the offline model only"
    return choose_auto(token, base_url=None)  # a notebook names no story server: the token decides


def story_backend(name: str = "auto", token: str | None = None, smoke: bool = False):
    """The story backend ``name`` (:func:`storyteller.story.get_backend`; ``"auto"``: hosted
    with a token, else offline, and always offline in smoke mode, as CI has no network), or a
    ``StoryError``. The Hugging Face ``token`` goes to the hosted backend only when that talks
    to Hugging Face (a ``$STORYTELLER_STORY_BASE_URL`` server gets its own key)."""
    from ..story import get_backend
    from ..story.backends.hosted import BASE_URL_ENV
    from ..story.keys import is_hugging_face

    name, _ = _backend_choice(name, token, smoke)
    if name == "hosted" and token and is_hugging_face(os.environ.get(BASE_URL_ENV)):
        return get_backend("hosted", token=token)
    return get_backend(name)


def _no_story(reason: str, log: Log) -> str:
    log(f"no story: {reason}. Going on with the caption alone (story.json records why).")
    return reason


def find_story_backend(
    name: str = "auto", token: str | None = None, smoke: bool = False, log: Log = print
):
    """``(backend, "")``, or ``(None, reason)`` when :func:`story_backend` cannot load one: the
    reason names the backend tried and what would make one available, is printed once, and the
    notebook goes on with the caption alone (the Space installs its own story model)."""
    from ..story import StoryError

    chosen, why = _backend_choice(name, token, smoke)
    try:
        backend = story_backend(name, token, smoke=smoke)
    except StoryError as exc:
        detail = str(exc).removeprefix(f"{chosen}: ")
        return None, _no_story(f"tried the {chosen} backend ({why}): {detail}", log)
    log(f"story backend: {backend.describe()}")
    return backend, ""


def tell_story(session, caption: str, smoke: bool = False, log: Log = print) -> tuple[str, str]:
    """Start ``session``'s story from ``caption``, shown while it is written; ``smoke`` (a smoke
    model's caption) heads it :data:`SMOKE_LABEL`. Returns ``(story, "")``, or ``("", reason)``
    when the model fails (printed once; the notebook goes on with the caption alone)."""
    from ..story import StoryError
    from . import report

    if smoke:
        log(f"{SMOKE_LABEL}: the story opens with a smoke model's caption")
    try:
        return report.stream(session.start(caption)), ""
    except StoryError as exc:
        return "", _no_story(str(exc), log)


def save_story(
    path: str | Path,
    photo: str | Path,
    caption: str,
    session,
    why_no_story: str = "",
    smoke: bool = False,
    log: Log = print,
) -> dict:
    """Write and return ``story.json``'s record: the photo, caption, backend, options, the
    story turn by turn, ``why_no_story`` (None when there is one) and ``smoke`` (the caption
    is a smoke model's, meaningless)."""
    from ..runtime import write_json

    path = Path(path)
    record = {
        "photo": Path(photo).name,
        "caption": caption,
        "backend": session.backend.describe() if session.backend is not None else None,
        "options": vars(session.options),
        "story": session.story,
        "turns": session.turns,
        "why_no_story": why_no_story or None,
        "smoke": smoke,
    }
    write_json(path, record)
    if session.turns:
        words = len(session.story.split())
        log(f"{len(session.turns)} turn(s), {words} words -> {path.name}")
    else:
        log(f"the caption, no story (why_no_story says why) -> {path.name}")
    return record

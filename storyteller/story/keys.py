"""Which key goes to which server, and keeping every key out of what is shown: the Hugging
Face token goes only to Hugging Face (a self-hosted server that got it could act as its owner,
or write it into the story), a ``--base-url`` server gets its own key or none, no key goes over
plain http to another machine, and every key is masked in errors and in the streamed story.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..hf_token import every_hf_token, find_hf_token
from .cleaning import partial_marker
from .errors import StoryError

API_KEY_ENV = "STORYTELLER_STORY_API_KEY"
#: hosts (and their subdomains) that get the Hugging Face token
HF_HOSTS = ("huggingface.co", "hf.co", "huggingface.cloud")
MASK = "***"
MIN_SECRET_CHARS = 6  # shorter "keys" would mask ordinary words in a story


def is_hugging_face(base_url: str | None) -> bool:
    """True for Hugging Face's own endpoints: no ``base_url``, or one on :data:`HF_HOSTS`."""
    if not base_url:
        return True
    host = urlsplit(base_url).hostname or ""  # lower case
    return any(host == h or host.endswith("." + h) for h in HF_HOSTS)


def is_loopback(host: str) -> bool:
    """True for this machine: ``localhost`` (and ``*.localhost``), 127.0.0.0/8, ``::1``."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_for(base_url: str | None, token: str | None = None) -> str | None:
    """The key to send to ``base_url`` (``None``: Hugging Face Inference Providers): ``token``
    if given, else the Hugging Face token for Hugging Face and ``$STORYTELLER_STORY_API_KEY``
    for any other server; a :class:`StoryError` where it would go over plain http to another
    machine."""
    if token:
        key = token
    elif is_hugging_face(base_url):
        key = find_hf_token()
    else:
        key = os.environ.get(API_KEY_ENV) or None
    if key and base_url:
        parts = urlsplit(base_url)
        if parts.scheme.lower() != "https" and not is_loopback(parts.hostname or ""):
            raise StoryError(
                f"hosted: refusing to send an API key over plain {parts.scheme or 'http'} to "
                f"{parts.hostname or base_url}: use an https:// base URL (or a server on "
                f"this machine), or unset {API_KEY_ENV} for a server that needs no key"
            )
    return key


def known_secrets(*extra: str | None) -> list[str]:
    """Every credential this process could send (``extra``, each Hugging Face token, the story
    API key), longest first: what to scrub from anything shown."""
    found = [*extra, *every_hf_token(), os.environ.get(API_KEY_ENV)]
    return sorted({s for s in found if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class Scrubber:
    """:func:`scrub` for streamed text, even when a secret arrives split across chunks: a
    tail that could start one is held back until the next chunk or :meth:`finish`."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self._held = ""

    def feed(self, delta: str) -> str:
        """The text that is now safe to show (maybe empty)."""
        text = scrub(self._held + delta, self.secrets)
        held = partial_marker(text, self.secrets)
        self._held = text[len(text) - held :] if held else ""
        return text[: len(text) - held]

    def finish(self) -> str:
        """The held-back tail (the stream ended: it was not a secret)."""
        rest, self._held = self._held, ""
        return rest

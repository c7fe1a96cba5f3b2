"""Which key goes to which server, and keeping every key out of what is shown.

The one place that decides which story credential goes where (backend choice, the hosted
backend and gated local models all ask here; the Hugging Face token itself is found by
:mod:`storyteller.hf_token`):

* ``HF_TOKEN`` (or a saved ``hf auth login``) is a Hugging Face credential: it is sent only
  to Hugging Face (no ``base_url``, or one on a :data:`HF_HOSTS` host). A self-hosted
  server that received it could use it as its owner (it once did: a ``--base-url`` server
  got the token and wrote it into the story).
* A self-hosted ``--base-url`` gets its own key, ``$STORYTELLER_STORY_API_KEY`` (or an
  explicit ``token`` argument), or none.
* No key is ever sent over plain ``http://`` to a host other than this machine
  (:func:`is_loopback`): anyone on the way could read it.
* Every key is replaced by ``***`` in errors *and* in the streamed story (:class:`Scrubber`
  also catches a key split across two streamed chunks).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..hf_token import every_hf_token, find_hf_token
from .errors import StoryError

API_KEY_ENV = "STORYTELLER_STORY_API_KEY"
#: hosts (and their subdomains) that get the Hugging Face token
HF_HOSTS = ("huggingface.co", "hf.co", "huggingface.cloud")
MASK = "***"
MIN_SECRET_CHARS = 6  # shorter "keys" would mask ordinary words in a story


def host_of(base_url: str) -> str:
    """The host name of ``base_url``, lower case (``""`` when it has none)."""
    return (urlsplit(base_url).hostname or "").lower()


def is_hugging_face(base_url: str | None) -> bool:
    """True for Hugging Face's own endpoints: no ``base_url``, or one on :data:`HF_HOSTS`."""
    if not base_url:
        return True
    host = host_of(base_url)
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
    """The key to send to ``base_url`` (``None``: Hugging Face Inference Providers).

    ``token`` (an explicit argument) wins; else Hugging Face endpoints get
    :func:`find_hf_token` and any other server ``$STORYTELLER_STORY_API_KEY``; else none.

    Raises:
        StoryError: a key would go over plain http to a host other than this machine.
    """
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
                f"{host_of(base_url) or base_url}: use an https:// base URL (or a server on "
                f"this machine), or unset {API_KEY_ENV} for a server that needs no key"
            )
    return key


def known_secrets(*extra: str | None) -> list[str]:
    """Every credential this process could send: ``extra``, the Hugging Face token
    (``HF_TOKEN`` and a saved login, both when they differ) and the story API key (to scrub from anything shown)."""
    found = [*extra, *every_hf_token(), os.environ.get(API_KEY_ENV)]
    return sorted({s for s in found if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class Scrubber:
    """:func:`scrub` for streamed text: feed the chunks, get back text with no secret in
    it, even when one arrives split across chunks (the tail that could be the start of a
    secret is held back until the next chunk or :meth:`finish` decides)."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self._held = ""

    def _held_length(self, text: str) -> int:
        held = 0
        for secret in self.secrets:
            for k in range(min(len(secret) - 1, len(text)), held, -1):
                if text.endswith(secret[:k]):
                    held = k
                    break
        return held

    def feed(self, delta: str) -> str:
        """The text that is now safe to show (maybe empty)."""
        text = scrub(self._held + delta, self.secrets)
        held = self._held_length(text)
        self._held = text[len(text) - held :] if held else ""
        return text[: len(text) - held]

    def finish(self) -> str:
        """The held-back tail (the stream ended: it was not a secret)."""
        rest, self._held = self._held, ""
        return rest

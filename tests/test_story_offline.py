"""The offline Gemma 3 270M backend for real: GGUF conversion into a fresh cache, a short
story on the CPU, loading from the cache, cache repair; and the transformers backend on the
converted folder (a real local model) with and without a chat template.

One conversion (about a minute on 2 CPU cores) is shared by every test in this file; the
stories are kept to a few dozen tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest

from storyteller.story import StoryError, StoryOptions, StoryPrompt, StorySession, content_words
from storyteller.story.backends import gemma_cache, local
from storyteller.story.backends.local import TransformersBackend

pytest.importorskip("transformers")
pytest.importorskip(gemma_cache.PACKAGE)

CAPTION = "a black dog is running through the snow"
QUICK = StoryOptions(seed=0, max_new_tokens=40)  # a sentence or two after the opening
TINY = StoryOptions(seed=0, max_new_tokens=8)  # enough to show the path works


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A fresh cache root with the model converted into it by OfflineBackend, and its log."""
    from storyteller.story.backends.offline import OfflineBackend

    root = tmp_path_factory.mktemp("story-cache")
    log: list[str] = []
    backend = OfflineBackend(device="cpu", root=root, log=log.append)
    return root, backend, log


def test_conversion_writes_a_valid_cache(converted):
    root, backend, log = converted
    folder = gemma_cache.cache_dir(root)
    assert backend.cache == folder and gemma_cache.cache_is_valid(folder)
    assert any("converting" in line for line in log)
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", gemma_cache.MARKER} <= names
    assert "source.gguf" not in names  # the 250 MB GGUF is not kept
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert [p.name for p in root.iterdir() if p.name.startswith(".gemma3-270m.tmp")] == []


def test_offline_story_for_real(converted):
    _, backend, _ = converted
    assert backend.name == "offline" and "Gemma 3 270M" in backend.describe()
    session = StorySession(backend, QUICK)
    shown = list(session.start(CAPTION))
    story = session.story
    assert shown[-1] == story and story.startswith("A black dog is running through the snow.")
    continuation = story[len("A black dog is running through the snow.") :]
    assert len(continuation.split()) >= 3  # the model wrote something after the opening
    assert story[-1] in ".!?\"'”’"  # stopped cleanly at a sentence end
    assert "Genre:" not in story and "Story:" not in story and "\n" not in story
    words = set(w.strip(".,!?\"'").lower() for w in story.split())
    assert words & set(content_words(CAPTION))


def test_a_later_load_reads_the_cache(converted):
    root, _, _ = converted
    log: list[str] = []
    folder = gemma_cache.ensure_offline_model(root, log.append)
    assert log == [] and gemma_cache.cache_is_valid(folder)


def test_transformers_backend_on_a_local_folder_uses_the_plain_prompt(converted):
    root, _, _ = converted
    backend = TransformersBackend(gemma_cache.cache_dir(root), device="cpu")
    assert backend.chat is False and "completion prompt" in backend.describe()
    text = "".join(backend.stream(StoryPrompt("start", (CAPTION,)), TINY))
    assert text.startswith("A black dog is running through the snow.")
    story = "A black dog is running through the snow. It found a bone."
    ids, completion = backend._encode(
        StoryPrompt("steer", (CAPTION,), story, "the dog finds a red ball"), TINY, 1500
    )
    prompt_text = backend.tokenizer.decode(ids["input_ids"][0])
    steer = "Then: the dog finds a red ball\nStory goes on: The dog finds a red ball."
    assert prompt_text.endswith(f"Story: {story}\n{steer}")
    assert completion.opening == "The dog finds a red ball." and "\n" in completion.stop


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_transformers_backend_uses_a_chat_template_when_there_is_one(converted, tmp_path):
    folder = gemma_cache.cache_dir(converted[0])
    chat = tmp_path / "with-template"
    chat.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        os.symlink(folder / name, chat / name)  # the same weights, no copy
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (chat / "tokenizer_config.json").write_text(json.dumps(config))

    backend = TransformersBackend(chat, device="cpu")
    assert backend.chat is True and "chat template" in backend.describe()
    ids, completion = backend._encode(StoryPrompt("start", (CAPTION,)), QUICK, 6000)
    prompt_text = backend.tokenizer.decode(ids["input_ids"][0])
    assert prompt_text.startswith("<bos><start_of_turn>system\nYou are a storyteller")
    assert "A black dog is running through the snow." in prompt_text
    assert prompt_text.endswith("<start_of_turn>model\n")
    assert completion.opening == "" and completion.stop == ()
    text = "".join(backend.stream(StoryPrompt("start", (CAPTION,)), TINY))
    assert len(text.split()) >= 2  # the (base) model answers through the template


def test_a_model_too_large_for_the_machine_is_refused_before_loading(converted, monkeypatch):
    monkeypatch.setattr(local, "available_memory", lambda device: 100 * 2**20)  # 100 MiB free
    with pytest.raises(StoryError, match="too large for this machine.*needs about 1.0 GiB"):
        TransformersBackend(gemma_cache.cache_dir(converted[0]), device="cpu")


# -- cache repair (cheap: a stand-in conversion that links the real files) --------------------


def fake_conversion(source, calls):
    def convert(gguf_package, folder):
        calls.append(folder)
        for path in source.iterdir():
            if path.name != gemma_cache.MARKER:
                os.link(path, folder / path.name)
        shutil.copy(source / gemma_cache.MARKER, folder / gemma_cache.MARKER)

    return convert


@pytest.mark.parametrize("damage", ["truncate", "missing file", "no marker", "bad marker"])
def test_a_broken_cache_is_detected_and_rebuilt(converted, tmp_path, monkeypatch, damage):
    source = gemma_cache.cache_dir(converted[0])
    root = tmp_path / "root"
    broken = gemma_cache.cache_dir(root)
    broken.mkdir(parents=True)
    for path in source.iterdir():  # big files linked, small ones copied (they get damaged)
        if path.stat().st_size > 2**20:
            os.link(path, broken / path.name)
        else:
            shutil.copy(path, broken / path.name)
    assert gemma_cache.cache_is_valid(broken)
    if damage == "truncate":
        text = (broken / "tokenizer_config.json").read_text()
        (broken / "tokenizer_config.json").write_text(text[:-10])
    elif damage == "missing file":
        (broken / "config.json").unlink()
    elif damage == "no marker":
        (broken / gemma_cache.MARKER).unlink()
    else:
        (broken / gemma_cache.MARKER).write_text("{not json")
    assert not gemma_cache.cache_is_valid(broken)

    calls: list = []
    monkeypatch.setattr(gemma_cache, "_convert", fake_conversion(source, calls))
    log: list[str] = []
    assert gemma_cache.ensure_offline_model(root, log.append) == broken
    assert len(calls) == 1 and gemma_cache.cache_is_valid(broken)
    assert any("converting" in line for line in log)
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".gemma3-270m.")]
    assert leftovers == [".gemma3-270m.lock"]  # no temp or broken folders left behind


def test_a_cache_that_passes_its_checks_but_does_not_load_is_rebuilt(
    converted, tmp_path, monkeypatch
):
    from storyteller.story.backends.offline import OfflineBackend

    source = gemma_cache.cache_dir(converted[0])
    bad = gemma_cache.cache_dir(tmp_path)
    bad.mkdir()
    for path in source.iterdir():
        if path.stat().st_size > 2**20:
            os.link(path, bad / path.name)
        else:
            shutil.copy(path, bad / path.name)
    config = (bad / "config.json").read_text()  # same size, still JSON, unknown model type
    (bad / "config.json").write_text(config.replace('"gemma3_text"', '"gemma3_xxxx"'))
    assert gemma_cache.cache_is_valid(bad)

    calls: list = []
    monkeypatch.setattr(gemma_cache, "_convert", fake_conversion(source, calls))
    log: list[str] = []
    backend = OfflineBackend(device="cpu", root=tmp_path, log=log.append)
    assert len(calls) == 1 and any("does not load" in line for line in log)
    assert '"gemma3_text"' in (bad / "config.json").read_text() and backend.model is not None


def test_two_conversions_at_once_convert_once(converted, tmp_path, monkeypatch):
    source = gemma_cache.cache_dir(converted[0])
    calls: list = []
    monkeypatch.setattr(gemma_cache, "_convert", fake_conversion(source, calls))
    results, errors = [], []

    def convert():
        try:
            results.append(gemma_cache.ensure_offline_model(tmp_path, lambda _: None))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=convert) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(calls) == 1 and len(set(results)) == 1
    assert gemma_cache.cache_is_valid(results[0])

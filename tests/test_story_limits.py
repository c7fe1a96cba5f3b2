"""The bounds on one story request: a 100 KB caption, a prompt over its
token budget, a model that would generate for minutes, two visitors at once.

A tiny random ``transformers`` model (built here in seconds, with its own small tokenizer)
stands in for the offline Gemma: the bounds are the backend's, not the model's, and the
real model would make these tests take minutes instead of seconds.
"""

from __future__ import annotations

import threading
import time

import pytest
from fake_llm_server import FakeLLMServer

from storyteller.cli import main
from storyteller.story import StoryError, StoryOptions, StoryPrompt, StorySession, limits
from storyteller.story.backends import get_backend
from storyteller.story.prompts import COMPLETION_STORY_CHARS, FEW_SHOT

pytest.importorskip("transformers")

BIG = ("a dog runs along the beach and barks at the waves " * 2000)[:100_000]  # 100 KB
HAD = f"{len(BIG.strip()):,}"  # what the note counts: the caption on one line
CAPTION = "a black dog runs through the snow"


pytestmark = pytest.mark.usefixtures("no_story_credentials")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A folder with a 1-layer GPT-2 of random weights and a BPE tokenizer trained on the
    few-shot prompt (so prompts take a realistic number of tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([FEW_SHOT, BIG[:2000], CAPTION] * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")
    fast.save_pretrained(folder)
    config = GPT2Config(
        vocab_size=len(fast), n_positions=8192, n_embd=16, n_layer=1, n_head=2,
        eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def local_backend(folder, timeout=None):
    from storyteller.story.backends.local import TransformersBackend

    return TransformersBackend(folder, device="cpu", chat=False, timeout=timeout)


def record_prompts(backend) -> list[int]:
    """Make ``backend`` note the prompt length (tokens) of every generation."""
    lengths: list[int] = []
    generate = backend.model.generate

    def spy(**kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        return generate(**kwargs)

    backend.model.generate = spy
    return lengths


@pytest.fixture
def slow(monkeypatch):
    """Every generated token takes 20 ms: 4096 tokens would take over a minute."""
    from storyteller.story.backends import local

    penalty = local._GeneratedRepetitionPenalty.__call__

    def slow_penalty(self, input_ids, scores):
        time.sleep(0.02)
        return penalty(self, input_ids, scores)

    monkeypatch.setattr(local._GeneratedRepetitionPenalty, "__call__", slow_penalty)


# -- text in --------------------------------------------------------------------------------


def test_a_100kb_caption_is_cut_said_and_bounded_before_the_model(tiny_model):
    """The issue's case: a 100 KB caption held the offline model for over ten minutes (a
    25,000-token prompt). Now it is cut to 500 characters, the session says so, and the
    prompt the model sees fits the token budget of the model's own tokenizer."""
    backend = local_backend(tiny_model)
    lengths = record_prompts(backend)
    session = StorySession(backend, StoryOptions(seed=0, max_new_tokens=20))
    started = time.monotonic()
    shown = list(session.start(BIG))
    assert time.monotonic() - started < 30  # seconds, not minutes
    assert shown and session.notes == [
        f"the caption was cut to {limits.MAX_CAPTION_CHARS} characters (it had {HAD})"
    ]
    assert len(session.captions[0]) <= limits.MAX_CAPTION_CHARS
    assert session.captions[0] == BIG[: len(session.captions[0])].strip()  # cut at a word
    assert lengths and max(lengths) <= limits.LOCAL_PROMPT_TOKENS


def test_every_text_input_is_cut_with_a_note(tiny_model):
    session = StorySession(local_backend(tiny_model), StoryOptions(seed=0, max_new_tokens=12))
    list(session.start(CAPTION))
    assert session.notes == []
    list(session.steer("a storm breaks " * 100))
    # (a tiny random model may add nothing after the steering line's opening: a second note)
    assert session.notes[0] == "the steering line was cut to 300 characters (it had 1,499)"
    assert len(session.turns[-1]["input"]) <= limits.MAX_INSTRUCTION_CHARS
    list(session.add_image(BIG))
    assert session.notes[0].startswith("the caption was cut to 500 characters")
    list(session.continue_story())
    assert session.notes == []  # notes are the latest action's


def test_the_prompt_level_api_refuses_what_the_session_would_cut():
    with pytest.raises(StoryError, match=f"caption of {HAD} characters is too long"):
        StoryPrompt("start", (BIG,))


def test_cli_says_the_caption_was_cut(capsys):
    with FakeLLMServer() as server:
        code = main(["story", "--caption", BIG, "--base-url", server.url])
        body = server.requests[0]["json"]
    out, err = capsys.readouterr()
    assert code == 0 and f"note: the caption was cut to 500 characters (it had {HAD})" in err
    user = body["messages"][-1]["content"]
    assert len(user.encode()) <= limits.HOSTED_PROMPT_TOKENS and "dog runs along" in user


# -- prompt size ----------------------------------------------------------------------------


def test_a_long_story_is_fitted_to_the_budget_oldest_text_first(tiny_model):
    """Greek text takes about two tokens a letter with this tokenizer: the 1,500 characters
    of story a completion prompt carries are then over the token budget, and the oldest
    story text goes first."""
    backend = local_backend(tiny_model)
    prompts: list[str] = []
    generate = backend.model.generate

    def spy(**kwargs):
        prompts.append(backend.tokenizer.decode(kwargs["input_ids"][0]))
        return generate(**kwargs)

    backend.model.generate = spy
    story = " ".join(f"Μέρος {i} της ιστορίας του σκύλου." for i in range(100))
    prompt = StoryPrompt("continue", (CAPTION,) * 12, story)
    untrimmed, _ = backend._encode(prompt, StoryOptions(), COMPLETION_STORY_CHARS)
    assert untrimmed["input_ids"].shape[1] > limits.LOCAL_PROMPT_TOKENS  # it must be trimmed
    list(backend.stream(prompt, StoryOptions(seed=0, max_new_tokens=5)))
    tokens = len(backend.tokenizer(prompts[-1])["input_ids"])
    assert limits.LOCAL_PROMPT_TOKENS * 0.9 < tokens <= limits.LOCAL_PROMPT_TOKENS
    assert "Μέρος 99 της" in prompts[-1] and "Μέρος 1 της" not in prompts[-1]
    # a chat prompt names the newest captions only
    assert "7 more, then" in prompt.user_message(StoryOptions(), 300)


def test_fit_to_budget_keeps_the_most_story_that_fits():
    story = "x" * 10_000
    count_calls = []

    def count(text):
        count_calls.append(1)
        return len(text)

    fitted = limits.fit_to_budget(
        lambda n: "HEAD" + story[-n:] if n else "HEAD", count, 5000, 10_000
    )
    assert 5000 - 200 <= len(fitted) <= 5000 and len(count_calls) < 20
    with pytest.raises(StoryError, match="even without the story so far"):
        limits.fit_to_budget(lambda n: "H" * 100, len, 50, 1000)


def test_hosted_prompts_are_bounded_in_bytes():
    story = "\u00e9t\u00e9 " * 10_000  # two bytes a letter: counted as bytes, not characters
    with FakeLLMServer() as server:
        backend = get_backend("hosted", base_url=server.url)
        prompt = StoryPrompt("steer", (CAPTION,) * 40, story, "a storm breaks")
        list(backend.stream(prompt, StoryOptions(seed=0)))
        messages = server.requests[0]["json"]["messages"]
    assert sum(len(m["content"].encode()) for m in messages) <= limits.HOSTED_PROMPT_TOKENS


# -- time -----------------------------------------------------------------------------------


def test_a_local_turn_stops_at_its_time_limit(tiny_model, slow):
    backend = local_backend(tiny_model, timeout=1.5)
    session = StorySession(backend, StoryOptions(seed=0, max_new_tokens=4096))
    started = time.monotonic()
    list(session.start(CAPTION))
    assert time.monotonic() - started < 15  # 4096 slow tokens would take 80 s
    assert session.story.startswith("A black dog runs through the snow.")
    assert session.notes == ["the story stopped at its time limit of 1.5 s per turn"]


def test_the_time_limit_comes_from_the_environment_and_is_checked(tiny_model, monkeypatch):
    monkeypatch.setenv("STORYTELLER_STORY_TIME_LIMIT", "7")
    assert local_backend(tiny_model).time_limit == 7.0
    monkeypatch.setenv("STORYTELLER_STORY_TIME_LIMIT", "soon")
    with pytest.raises(StoryError, match="STORYTELLER_STORY_TIME_LIMIT must be a number"):
        local_backend(tiny_model)
    with pytest.raises(StoryError, match="out of range"):
        local_backend(tiny_model, timeout=-1)
    with pytest.raises(StoryError, match=r"time_limit must be a number in \(0, 3600\], not 0"):
        StoryOptions(time_limit=0)
    assert StoryOptions(time_limit=5).turn_limit(60) == 5
    assert StoryOptions(time_limit=500).turn_limit(60) == 60  # never above the backend's


def test_a_second_visitor_starts_within_one_turn(tiny_model, slow):
    """Two stories at once on one local model: the second waits for the first, but no longer
    than the first's time limit (it used to wait up to ten minutes)."""
    backend = local_backend(tiny_model, timeout=1.5)
    options = StoryOptions(seed=0, max_new_tokens=4096)
    first_text = threading.Event()
    second: dict[str, float] = {}

    def visitor(name):
        session = StorySession(backend, options)
        for _ in session.start(CAPTION):
            if name == "first":
                first_text.set()
            else:
                second.setdefault("first_text", time.monotonic())
        second[f"{name}_done"] = time.monotonic()

    one = threading.Thread(target=visitor, args=("first",))
    one.start()
    assert first_text.wait(30)  # the first visitor holds the model now
    asked = time.monotonic()
    two = threading.Thread(target=visitor, args=("second",))
    two.start()
    one.join(30)
    two.join(30)
    assert "second_done" in second  # served, not refused as busy
    waited = second["first_text"] - asked
    assert waited < backend.time_limit + 5  # within one turn (plus reading its prompt)


def test_a_request_is_told_the_model_is_busy_after_one_turn(tiny_model, monkeypatch):
    backend = local_backend(tiny_model, timeout=0.2)
    monkeypatch.setattr(type(backend), "lock_wait", property(lambda self: self.time_limit + 0.1))
    backend._lock.acquire()  # a turn that overran (it cannot, but the wait must still end)
    try:
        started = time.monotonic()
        with pytest.raises(StoryError, match=r"busy writing other stories \(waited 0.3 s\)"):
            list(backend.stream(StoryPrompt("start", (CAPTION,)), StoryOptions()))
        assert time.monotonic() - started < 5
    finally:
        backend._lock.release()


def test_a_hosted_stream_is_cut_at_the_time_limit():
    with FakeLLMServer(
        [f"Sentence {i} of a story that never ends. " for i in range(100)]
    ) as server:
        server.chunk_delay = 0.05  # 100 chunks: 5 s
        backend = get_backend("hosted", base_url=server.url)
        session = StorySession(backend, StoryOptions(seed=0, time_limit=0.5))
        started = time.monotonic()
        list(session.start(CAPTION))
    assert time.monotonic() - started < 4
    assert session.story.startswith("Sentence 0") and "Sentence 99" not in session.story
    assert session.notes == ["the story stopped at its time limit of 0.5 s per turn"]


def test_loading_a_model_shows_no_progress_bar_unless_asked(tiny_model, capfd):
    """transformers draws "Loading weights: 0%|..." on stderr, a terminal or not: the CLI
    hides it (and the loading warnings) unless --verbose, and leaves the settings as they were."""
    from transformers.utils import logging

    from storyteller.story.backends import clear_cache

    bars = logging.is_progress_bar_enabled()
    args = ["story", "--caption", CAPTION, "--backend", "transformers", "--model"]
    args += [str(tiny_model), "--device", "cpu", "--max-new-tokens", "8", "--seed", "0"]
    main(args)
    out, err = capfd.readouterr()
    assert out.startswith(f"caption: {CAPTION}") and "story by transformers" in err
    assert "Loading weights" not in err and logging.is_progress_bar_enabled() == bars
    clear_cache()
    get_backend("transformers", model=str(tiny_model), device="cpu", verbose=True)
    assert "Loading weights" in capfd.readouterr().err  # what the default hides

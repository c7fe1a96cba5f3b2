"""A steering line opens the next part, one hero keeps one name and pronoun,
and a paragraph the model leaves without its full stop keeps a sentence break when joined.

A fake *base* model stands in for Gemma: it renders the completion prompt like the offline
backend, streams scripted raw text through the same cleaner, and records every prompt."""

from __future__ import annotations

import pytest
import torch

from storyteller.story import StoryError, StoryOptions, StoryPrompt, StorySession
from storyteller.story.backends.local import _TurnClock
from storyteller.story.characters import Hero, find_hero
from storyteller.story.cleaning import turn_cleaner

CAPTION = "a black dog runs through the snow"


class FakeBaseModel:
    """Writes ``replies`` (raw text, one per turn, in chunks) after each completion prompt."""

    name = "fake-base"

    def __init__(self, replies: list[list[str]]):
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.seeds: list[int | None] = []

    def stream(self, prompt: StoryPrompt, options: StoryOptions):
        completion = prompt.completion(options)
        self.prompts.append(completion.text)
        self.seeds.append(options.seed)
        cleaner = turn_cleaner(prompt.story, completion.opening, completion.stop, completion.joins)
        if completion.opening:
            yield completion.opening
        yield from cleaner.clean(self.replies.pop(0))
        yield cleaner.finish()


def session_for(replies: list[list[str]]) -> tuple[StorySession, FakeBaseModel]:
    backend = FakeBaseModel(replies)
    return StorySession(backend, StoryOptions(length="short", seed=0)), backend


def paragraphs(session: StorySession) -> list[str]:
    return session.story.split("\n\n")


def test_the_steering_line_opens_the_next_part():
    session, backend = session_for([[" It barks at the moon."], [" Snow hides the path."]])
    list(session.start(CAPTION))
    list(session.steer("  a storm   breaks "))
    assert paragraphs(session)[-1] == "A storm breaks. Snow hides the path."
    assert backend.prompts[-1].endswith("Then: a storm breaks\nStory goes on: A storm breaks.")
    assert session.turns[-1]["input"] == "a storm breaks"


def test_a_copy_of_the_steering_line_is_dropped():
    session, _ = session_for([[" It barks."], [" A big storm breaks now. The wind howls."]])
    list(session.start(CAPTION))
    list(session.steer("a big storm breaks now"))
    assert paragraphs(session)[-1] == "A big storm breaks now. The wind howls."


# What Gemma 3 270M did on a busy CPU: the time limit ended the turn inside the model's first
# sentence after our opening, the cleaner dropped that unfinished sentence, and the steered
# part was our opening alone.
CUT_SHORT = [" The snow is covered", " with clouds,"]


def test_a_steered_part_that_is_only_our_opening_is_drawn_again():
    replies = [[" It barks."], CUT_SHORT, [" Snow hides the path. The dog"]]
    session, backend = session_for(replies)
    list(session.start(CAPTION))
    shown = list(session.steer("a storm breaks"))
    assert paragraphs(session)[-1] == "A storm breaks. Snow hides the path."
    assert shown[-1] == session.story
    assert backend.seeds[1:] == [0, 1]  # the second draw used another seed


def test_a_model_that_never_goes_on_after_the_steering_line_keeps_the_line_with_a_note():
    session, backend = session_for([[" It barks."], CUT_SHORT, CUT_SHORT, CUT_SHORT])
    list(session.start(CAPTION))
    shown = list(session.steer("a storm breaks"))
    # Three draws, then the user's own line is kept as the part rather than lost to an error
    assert backend.seeds[1:] == [0, 1, 2]
    assert paragraphs(session)[-1] == "A storm breaks."
    assert shown[-1] == session.story
    assert session.notes == ["the model added nothing after the opening line in 3 tries"]


def test_a_model_that_writes_nothing_at_all_is_an_error():
    session, _ = session_for([[" It barks."], [""], [""], [""]])
    list(session.start(CAPTION))
    before = list(session.turns)
    with pytest.raises(StoryError, match="wrote no story text in 3 tries"):
        list(session.continue_story())  # no opening of ours to keep
    assert session.turns == before  # nothing recorded


def test_a_new_image_part_that_is_only_its_caption_is_drawn_again():
    session, _ = session_for([[" It barks."], CUT_SHORT, [" The sea is cold."]])
    list(session.start(CAPTION))
    list(session.add_image("a girl swims in a lake"))
    assert paragraphs(session)[-1] == "A girl swims in a lake. The sea is cold."


def test_the_turn_clock_starts_when_the_prompt_has_been_read():
    """The model's seconds count from its first new token: reading the prompt (30 s on a
    busy CPU) no longer eats the turn."""
    now = [100.0]
    clock = _TurnClock(10.0, clock=lambda: now[0])
    ids, scores = torch.zeros((2, 5), dtype=torch.long), torch.zeros((2, 7))
    assert not clock(ids, scores).any()  # first token, after 30 s of reading: starts now
    now[0] = 109.0
    assert not clock(ids, scores).any()
    now[0] = 110.0
    assert clock(ids, scores).all() and clock.timed_out


def test_a_missing_full_stop_before_a_join_becomes_a_sentence_break():
    """'...ever seen before\\nStory goes on: Under another cliff' lost its sentence break."""
    raw = [" It was the best beach ever seen before", "\nStory goes on:", " Under a cliff, it"]
    raw += [" slept.\nGenre: x"]
    session, _ = session_for([raw])
    list(session.start(CAPTION))
    text = paragraphs(session)[0]
    assert "ever seen before. Under a cliff, it slept." in text
    assert "before Under" not in text


def test_a_join_after_a_finished_sentence_adds_nothing():
    session, _ = session_for([[" It ran!", "\nStory goes on:", " It slept.\n"]])
    list(session.start(CAPTION))
    assert paragraphs(session)[0].endswith("It ran! It slept.")


def test_every_turn_names_the_same_hero():
    replies = [[" It ran."], [" It slept."], [" It woke."], [" It swam."]]
    session, backend = session_for(replies)
    list(session.start(CAPTION))
    list(session.continue_story())
    list(session.add_image("a girl swims in a lake"))  # a new image: still the first hero
    list(session.steer("a storm breaks"))
    hero = find_hero(CAPTION)
    assert hero is not None and hero.name
    for prompt in backend.prompts:
        last = prompt.rsplit("\n\nGenre:", 1)[1]  # the story's own header, not the few-shot
        assert f"Hero: {hero.line()}." in last.splitlines()[0]


def test_chat_prompts_name_the_hero_in_every_turn():
    story = "The dog ran. It found a shell."
    options = StoryOptions()
    line = find_hero(CAPTION).line()
    for kind, extra in (("start", ""), ("continue", ""), ("steer", "a storm breaks")):
        prompt = StoryPrompt(kind, (CAPTION,), "" if kind == "start" else story, extra)
        assert f"The main character is {line}: keep that name and pronoun." in (
            prompt.user_message(options)
        )


@pytest.mark.parametrize(
    "caption, noun, pronoun, named",
    [
        ("a man in a red jacket stands on a mountain", "man", "he", True),
        ("a little girl in a pink dress climbs the stairs", "girl", "she", True),
        ("two dogs play in the grass", "dogs", "they", False),
        ("a group of people stand by the water", "group", "they", False),
        ("the children play on the beach", "children", "they", False),
        ("a brown dog carries a stick", "dog", None, True),  # he or she, by the caption
    ],
)
def test_find_hero(caption, noun, pronoun, named):
    hero = find_hero(caption)
    assert hero is not None and hero.noun == noun and bool(hero.name) == named
    assert hero.pronoun == pronoun if pronoun else hero.pronoun in ("he", "she")
    assert find_hero(caption) == hero  # the same caption always gives the same hero


def test_no_hero_without_a_person_or_animal():
    assert find_hero("a large red circle on a white background") is None
    prompt = StoryPrompt("start", ("a large red circle on a white background",))
    assert "Hero:" not in prompt.completion(StoryOptions()).text.rsplit("\n\nGenre:", 1)[1]
    assert "main character" not in prompt.user_message(StoryOptions())


def test_hero_line():
    assert Hero("dog", "he", "Max").line() == "Max, the dog (he)"
    assert Hero("dogs", "they").line() == "the dogs (they)"

"""Story sessions (start / continue / new image / steer) driven by the local fake server."""

from __future__ import annotations

import pytest
from fake_llm_server import FakeLLMServer

from storyteller.story import StoryError, StoryOptions, StorySession, write_story
from storyteller.story.backends.hosted import HostedBackend

CAPTION = "a black dog runs through the snow"
BEACH = "two children play on a sandy beach"


@pytest.fixture
def server():
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def session(server):
    backend = HostedBackend(model="fake-model", base_url=server.url, token="t", timeout=5)
    return StorySession(backend, StoryOptions(length="short"))


def user_message(server, i=-1) -> str:
    return server.requests[i]["json"]["messages"][-1]["content"]


def run(stream) -> list[str]:
    shown = list(stream)
    for before, after in zip(shown, shown[1:], strict=False):
        assert after.startswith(before) and len(after) > len(before)  # text only grows
    return shown


def test_a_whole_session(session, server):
    shown = run(session.start(CAPTION))
    assert len(shown) == 3 and shown[-1] == session.story
    assert session.story == "The dog ran. It barked at the sea. Then it slept."
    assert session.turns == [{"kind": "start", "input": CAPTION, "text": session.story}]
    assert session.captions == [CAPTION]

    server.chunks = ["It woke up at dawn. ", "The snow had melted."]
    shown = run(session.continue_story())
    assert shown[0].startswith("The dog ran. It barked at the sea. Then it slept.\n\nIt woke")
    assert "Then it slept." in user_message(server)  # the story so far reaches the prompt
    assert session.turns[-1]["kind"] == "continue"

    server.chunks = ["The children built a castle. ", "The dog guarded it."]
    run(session.add_image(BEACH))
    message = user_message(server)
    assert "Two children play on a sandy beach." in message and "It woke up at dawn." in message
    assert session.captions == [CAPTION, BEACH]
    assert session.turns[-1] == {
        "kind": "image",
        "input": BEACH,
        "text": "The children built a castle. The dog guarded it.",
    }

    server.chunks = ["Suddenly, thunder rolled over the sea."]
    run(session.steer("  a storm   breaks "))
    assert '"a storm breaks"' in user_message(server)
    assert session.turns[-1]["input"] == "a storm breaks"
    assert [t["kind"] for t in session.turns] == ["start", "continue", "image", "steer"]
    assert session.story.count("\n\n") == 3
    assert session.story.endswith("Suddenly, thunder rolled over the sea.")


def test_failure_mid_stream_records_nothing(session, server):
    run(session.start(CAPTION))
    before = (session.story, list(session.turns), list(session.captions))
    server.fail_after = 1  # one sentence, then the server reports an error
    shown = []
    with pytest.raises(StoryError, match="crashed"):
        for text in session.add_image(BEACH):
            shown.append(text)
    assert shown and "The dog ran." in shown[-1]  # the user did see partial text...
    assert (session.story, session.turns, session.captions) == before  # ...but no broken turn


def test_abandoned_stream_records_nothing(session, server):
    stream = session.start(CAPTION)
    next(stream)
    stream.close()  # e.g. the user pressed stop
    assert session.turns == [] and session.story == ""


def test_start_replaces_the_story_and_reset_forgets_it(session, server):
    run(session.start(CAPTION))
    server.chunks = ["Sand everywhere."]
    run(session.start(BEACH))
    assert session.story == "Sand everywhere." and session.captions == [BEACH]
    session.reset()
    assert session.story == "" and session.turns == [] and session.captions == []


def test_actions_that_need_a_story_say_so(session):
    with pytest.raises(StoryError, match="no story yet"):
        session.continue_story()
    with pytest.raises(StoryError, match="no story yet"):
        session.steer("a storm")
    with pytest.raises(StoryError, match="caption is empty"):
        session.start("  <unk> ")


def test_add_image_without_a_story_starts_one(session, server):
    run(session.add_image(BEACH))
    assert session.turns[0]["kind"] == "start" and session.captions == [BEACH]


def test_options_per_action_become_the_default(session, server):
    run(session.start(CAPTION, StoryOptions(genre="horror", length="long")))
    assert "horror" in server.requests[-1]["json"]["messages"][0]["content"]
    run(session.continue_story())
    assert server.requests[-1]["json"]["max_tokens"] == StoryOptions(length="long").token_budget


def test_a_model_that_writes_nothing_is_an_error(session, server):
    server.chunks = ["   "]
    with pytest.raises(StoryError, match="returned no text|wrote no story"):
        run(session.start(CAPTION))
    assert session.turns == []


def test_a_turn_that_only_copies_the_story_is_drawn_again(session, server):
    session.options = StoryOptions(length="short", seed=5)
    first = ["The black dog ran into the snow. ", "It barked at the grey sea for hours."]
    server.chunks = first
    run(session.start(CAPTION))
    server.replies = [first, ["A storm broke over the sea. ", "The dog hid."]]  # 1st: a copy
    server.requests.clear()
    shown = run(session.steer("a storm breaks"))
    assert session.turns[-1]["text"] == "A storm broke over the sea. The dog hid."
    assert shown[-1] == session.story
    seeds = [r["json"].get("seed") for r in server.requests]
    assert seeds == [5, 6]  # the second draw used another seed


def test_a_copied_session_shares_its_backend(session, server):
    import copy

    run(session.start(CAPTION))
    copied = copy.deepcopy(session)  # what gr.State does with its initial value
    assert copied.backend is session.backend and copied.turns == session.turns
    copied.reset()
    assert session.turns  # the histories are separate


def test_write_story_one_shot(server):
    backend = HostedBackend(model="fake-model", base_url=server.url, token="t", timeout=5)
    assert write_story(CAPTION, backend) == "The dog ran. It barked at the sea. Then it slept."


def test_any_backend_that_never_stops_is_cut_at_the_character_cap():
    """The cap is the session's: a backend of any kind (here one of the caller's own) that
    writes for ever ends at :data:`MAX_TURN_CHARS` characters, with a note."""
    from storyteller.story.limits import MAX_TURN_CHARS

    class Endless:
        name = "endless"

        def stream(self, prompt, options):
            while True:
                yield "on and on we go. "

    session = StorySession(Endless(), StoryOptions())
    shown = run(session.start(CAPTION))
    assert MAX_TURN_CHARS - 20 < len(session.story) <= MAX_TURN_CHARS
    assert shown[-1] == session.story
    assert session.notes == [f"the story turn was cut at {MAX_TURN_CHARS:,} characters"]


# -- a saved story, continued and steered from the command line -----------------------------


def story_cli(server, capsys, *args) -> tuple[int, str, str]:
    from storyteller.cli import main

    code = main(["story", *args, "--base-url", server.url])
    return (code, *capsys.readouterr())


@pytest.mark.usefixtures("no_story_credentials")
def test_cli_saves_continues_and_steers_a_story(server, tmp_path, capsys):
    saved = tmp_path / "story.json"
    server.replies = [
        ["The dog ran. ", "It barked at the sea."],
        ["The sea was calm. ", "The dog slept on the sand."],
        ["Rain fell on the sand. ", "The dog ran home."],
    ]
    code, out, err = story_cli(server, capsys, "--caption", CAPTION, "--save", str(saved))
    assert out == f"caption: {CAPTION}\n\nThe dog ran. It barked at the sea.\n"
    assert code == 0 and f"story saved to {saved}: go on with --continue {saved}" in err
    code, out, err = story_cli(server, capsys, "--continue", str(saved), "--genre", "fable")
    assert code == 0 and out == "The sea was calm. The dog slept on the sand.\n"
    assert "It barked at the sea." in user_message(server)  # the saved story goes on
    assert "fable" in server.requests[-1]["json"]["messages"][0]["content"]
    code, out, err = story_cli(server, capsys, "--continue", str(saved), "--steer", "a storm")
    assert code == 0 and "a storm" in user_message(server)

    again = StorySession.load(saved)
    assert [t["kind"] for t in again.turns] == ["start", "continue", "steer"]
    assert again.turns[-1]["input"] == "a storm" and again.captions == [CAPTION]
    assert again.story.endswith("Rain fell on the sand. The dog ran home.")


@pytest.mark.usefixtures("no_story_credentials")
def test_cli_steering_has_the_apps_limits(server, tmp_path, capsys):
    saved = tmp_path / "story.json"
    long_line = "a storm breaks " * 40  # 600 characters: cut to 300, as in the app
    args = ["--caption", CAPTION, "--steer", long_line, "--save", str(saved)]
    code, out, err = story_cli(server, capsys, *args)
    assert code == 0 and "note: the steering line was cut to 300 characters (it had 599)" in err
    assert len(StorySession.load(saved).turns[-1]["input"]) <= 300
    requests = len(server.requests)
    for args, message in [
        (["--caption", CAPTION, "--steer", "  "], "error: --steer is empty"),
        (["--steer", "a storm"], "error: --steer needs a story: --continue FILE"),
    ]:
        code, out, err = story_cli(server, capsys, *args)
        assert code == 2 and err.startswith(message) and out == ""
    assert len(server.requests) == requests  # refused before any request


def saved_story(**change) -> dict:
    turns = [{"kind": "start", "input": CAPTION, "text": "The dog ran."}]
    return {"format": "storyteller story", "version": 1, "turns": turns, **change}


def turn(**change) -> dict:
    return {"kind": "start", "input": CAPTION, "text": "The dog ran.", **change}


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not a valid saved story: Expecting property name"),
        ([1, 2], 'not a saved story: it has no "format": "storyteller story"'),
        (saved_story(version=2), "not a saved story: version 2 (this version reads 1)"),
        (saved_story(turns=[]), 'not a saved story: "turns" is not a list of turns'),
        (saved_story(turns=[{"kind": "start"}]), "turn 1 is not {"),
        (saved_story(turns=[turn(text=7)]), "turn 1 holds a value that is not text"),
        (saved_story(turns=[turn(kind="steer")]), "turn 1 is 'steer': a story is a start"),
        (saved_story(turns=[turn(), turn()]), "turn 2 is 'start'"),
        (saved_story(turns=[turn(input="a" * 501)]), "(one line of 1 to 500 characters)"),
        (saved_story(turns=[turn(input="a\nb")]), "turn 1's input 'a\\nb' is not a start"),
        (saved_story(turns=[turn(), turn(kind="continue")]), "(none)"),
        (saved_story(turns=[turn(text=" ")]), "turn 1's text is not 1 to 32,768 characters"),
        (saved_story(turns=[turn(text="a" * 32_769)]), "turn 1's text is not 1 to 32,768"),
    ],
)
@pytest.mark.usefixtures("no_story_credentials")
def test_cli_refuses_a_bad_story_file_in_one_line(server, tmp_path, capsys, content, problem):
    import json

    saved = tmp_path / "story.json"
    saved.write_text(content if isinstance(content, str) else json.dumps(content))
    code, out, err = story_cli(server, capsys, "--continue", str(saved))
    assert code == 2 and out == "" and err.startswith(f"error: {saved}: ")
    assert problem in err and err.count("\n") == 1
    assert server.requests == []  # refused before the model


@pytest.mark.usefixtures("no_story_credentials")
def test_cli_refuses_a_story_file_over_its_size_limit(server, tmp_path, capsys, monkeypatch):
    import json

    from storyteller.story import session as session_module

    saved = tmp_path / "story.json"
    saved.write_text(json.dumps(saved_story()))
    monkeypatch.setattr(session_module, "MAX_STORY_FILE_BYTES", 10)
    code, out, err = story_cli(server, capsys, "--continue", str(saved))
    assert code == 2 and err.startswith(f"error: {saved}: a saved story is at most 10 bytes")
    code, out, err = story_cli(server, capsys, "--continue", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read the story: No such file or directory" in err

"""app.py's start-up and event handlers in this process (no server): any bad model named at
start leaves the app serving with "No caption model" and the reason; any value an API call
can bring is answered or refused with one log line, never another exception."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import gradio as gr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyteller.config import SAMPLE_LABEL
from storyteller.story import StoryError

APP_FILE = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture(scope="module")
def app(tiny_run):
    """app.py imported as it starts on a server, serving ``tiny_run``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORYTELLER_RUN_DIR", str(tiny_run))
        patch.setenv("STORYTELLER_PRELOAD_STORY", "0")
        patch.delenv("STORYTELLER_MODEL", raising=False)
        spec = importlib.util.spec_from_file_location("storyteller_app_under_test", APP_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    assert module.CAPTIONER is not None, module.MODEL_STATUS
    return module


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log(app):
    lines = Lines()
    app.LOG.addHandler(lines)
    yield lines.lines
    app.LOG.removeHandler(lines)


@pytest.fixture(scope="module")
def photo(tiny_data) -> str:
    return str(sorted((tiny_data / "Images").glob("*.jpg"))[0])


def bad_model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"epoch": ' + "9" * 5001 + "}")
    return folder


def bad_run_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "best_model.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "vocab.pkl").write_bytes(b"\x80\x04 truncated")
    return folder


@pytest.mark.parametrize(
    "variable, value",
    [
        ("STORYTELLER_MODEL", "a/b..c"),
        ("STORYTELLER_MODEL", "a/" + "b" * 200),
        ("STORYTELLER_MODEL", bad_model_folder),
        ("STORYTELLER_RUN_DIR", bad_run_folder),
    ],
    ids=["dots-in-id", "long-id", "big-integer-config", "damaged-run"],
)
def test_any_bad_model_at_start_is_no_caption_model_and_one_line(
    app, log, monkeypatch, tmp_path, variable, value
):
    """STORYTELLER_MODEL=a/b..c and a config.json holding a 5,001-digit integer killed the
    app at start with a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STORYTELLER_MODEL", raising=False)
    monkeypatch.setenv(variable, str(value(tmp_path) if callable(value) else value))
    captioner, status, model_dir = app._load_captioner()
    assert captioner is None and model_dir is None
    assert status.startswith("**No caption model.** ") and "\n" not in status, status
    assert log == [f"no caption model: {status.removeprefix('**No caption model.** ')}"]


def test_the_status_line_labels_a_sample_model(app, monkeypatch, unmarked_run):
    """The page's model line starts with the label of a model of the drawn sample, and has none
    for a model of other data."""
    assert app.MODEL_STATUS.startswith(f"**{SAMPLE_LABEL}.** Caption model: ")
    monkeypatch.setenv("STORYTELLER_RUN_DIR", str(unmarked_run))
    captioner, status, _ = app._load_captioner()
    assert captioner is not None and status.startswith("Caption model: "), status


def refused_or_answered(call, log) -> None:
    """``call()`` answers, or raises gr.Error after exactly one log line."""
    before = len(log)
    try:
        call()
    except gr.Error as exc:
        assert exc.message and "\n" not in exc.message
        assert len(log) == before + 1 and "\n" not in log[-1], log[before:]
    else:
        assert len(log) == before, log[before:]


ANY_JSON = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
ANY_VALUE = (
    ANY_JSON
    | st.lists(ANY_JSON, max_size=3)
    | st.dictionaries(st.text(max_size=5), ANY_JSON, max_size=3)
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    image=st.just("PHOTO") | ANY_VALUE,
    decoding=st.sampled_from(["greedy", "beam"]) | ANY_VALUE,
    beam_width=st.integers(-3, 12) | ANY_VALUE,
)
def test_caption_handler_answers_or_refuses_any_value(app, log, photo, image, decoding, beam_width):
    image = photo if image == "PHOTO" else image
    refused_or_answered(lambda: app.caption_image(image, decoding, beam_width), log)


def test_caption_handler_refuses_the_issues_beam_widths(app, log, photo):
    assert app.caption_image(photo, "beam", 3.0)[0]  # a slider's whole-number float is fine
    for width in ("abc", None, float("nan"), float("inf"), 2.5, True, 0, 11):
        with pytest.raises(gr.Error, match="beam width must be a whole number from 1 to 10"):
            app.caption_image(photo, "beam", width)
    assert len(log) == 8


TEXT = st.none() | st.text(max_size=40)  # what a Textbox gives its handler


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    handler=st.sampled_from(["write_story", "continue_story", "add_image", "steer_story"]),
    text=TEXT,
    genre=ANY_VALUE,
    tone=ANY_VALUE,
    length=TEXT,
)
def test_story_handlers_refuse_any_value_in_one_line(app, log, handler, text, genre, tone, length):
    def down():
        raise StoryError("hosted: cannot connect (a test)")

    app.story_backend, backend = down, app.story_backend
    try:
        function = getattr(app, handler)
        first = () if handler == "continue_story" else (text,)
        refused_or_answered(lambda: list(function(*first, genre, tone, length)), log)
    finally:
        app.story_backend = backend

"""The app with a real story model (the offline Gemma backend), through a real browser and
through the streaming API.

The browser test: Playwright drives Debian's Chromium, headless: upload a photo, see its
caption and then a story appear, continue the story, and save a screenshot into pytest's tmp
folder, or to the path in ``$STORYTELLER_SCREENSHOT`` (``docs/app.png`` for the README).
``$STORYTELLER_RUN_DIR``, when set, picks the caption model shown (default: the tiny model).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from app_server import running_app, space_folder
from bad_images import upright_picture
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

CHROMIUM = os.environ.get("STORYTELLER_CHROMIUM", "/usr/bin/chromium")
# This machine's network is closed: keep Chromium from trying to reach out at all.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake camera that needs no permission prompt (the webcam test in test_app_upload_browser).
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
STORY_TIMEOUT_MS = 420_000  # first use converts the GGUF model once (about a minute here)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: run .ci/install-test-deps.sh (as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def story_app(tiny_run, tmp_path_factory):
    run_dir = Path(os.environ.get("STORYTELLER_RUN_DIR") or tiny_run)
    space = space_folder(run_dir, tmp_path_factory.mktemp("story-app") / "space")
    # The offline Gemma model (loaded on the first story), seeded: the same stories every run.
    env = {"STORYTELLER_STORY_BACKEND": "offline", "STORYTELLER_STORY_SEED": "7"}
    with running_app(space, env=env) as app:
        yield app


def test_upload_caption_story_continue_and_screenshot(browser, story_app, tmp_path):
    from playwright.sync_api import expect

    photo = tmp_path / "photo.jpg"
    upright_picture().save(photo, quality=92)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(story_app.url)
    page.locator("#photo input[type=file]").set_input_files(str(photo))

    caption = page.locator("#caption textarea")
    expect(caption).not_to_have_value("", timeout=120_000)
    story = page.locator("#story textarea")
    timings = page.locator("#timings")
    expect(timings).to_contain_text(re.compile(r"story \d+\.\d s"), timeout=STORY_TIMEOUT_MS)
    first = story.input_value()
    assert len(first.split()) >= 10, first
    expect(timings).to_contain_text(re.compile(r"caption \d+ ms \(beam 5\)"))
    assert story_app.alive()

    expect(timings).to_contain_text("(part 1)")
    page.locator("#continue").click()
    expect(timings).to_contain_text("(part 2)", timeout=STORY_TIMEOUT_MS)
    continued = story.input_value()
    assert len(continued) > len(first) and continued.startswith(first)  # continued, not new

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    target = os.environ.get("STORYTELLER_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_story_api_streams_and_continues(story_app, tmp_path):
    photo = tmp_path / "photo.png"
    upright_picture().save(photo)
    client = Client(story_app.url, verbose=False)
    caption = client.predict(handle_file(photo), "beam", 5, api_name="/caption")
    job = client.submit(caption, "mystery", "dark", "short", api_name="/story")
    partial = list(job)  # every update the server streamed: the whole story so far
    story = job.result()
    assert len(partial) >= 3 and partial[-1] == story and len(story.split()) >= 10
    assert all(story.startswith(text) for text in partial)  # it grows; nothing is rewritten
    more = client.predict("mystery", "dark", "short", api_name="/continue")
    assert more.startswith(story) and len(more) > len(story)  # the same client, the same story
    steered = client.predict("a storm breaks", "mystery", "dark", "short", api_name="/steer")
    assert steered.startswith(more) and len(steered) > len(more)
    extended = client.predict(
        "a dog runs on the beach", "mystery", "dark", "short", api_name="/add_image"
    )
    assert extended.startswith(steered) and len(extended) > len(steered)
    other = Client(story_app.url, verbose=False)  # another visitor has no story to continue
    with pytest.raises(AppError, match="start a story first"):
        other.predict("mystery", "dark", "short", api_name="/continue")
    assert story_app.alive()

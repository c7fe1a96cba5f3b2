"""A real browser on the app: Playwright drives Debian's Chromium, headless.

Upload a photo, see its caption and then a story (from the offline Gemma backend) appear,
continue the story, and save a screenshot: into pytest's tmp folder, or to the path in
``$STORYTELLER_SCREENSHOT`` (``docs/app.png`` for the README). ``$STORYTELLER_RUN_DIR``, when
set, picks the caption model shown (default: the tests' tiny model).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from app_server import running_app, space_folder
from bad_images import upright_picture

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


def test_upload_caption_story_continue_and_screenshot(browser, tiny_run, tmp_path):
    from playwright.sync_api import expect

    run_dir = Path(os.environ.get("STORYTELLER_RUN_DIR") or tiny_run)
    space = space_folder(run_dir, tmp_path / "space")
    photo = tmp_path / "photo.jpg"
    upright_picture().save(photo, quality=92)
    env = {"STORYTELLER_STORY_BACKEND": "offline"}  # loaded on the first story
    with running_app(space, env=env) as app:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app.url)
        page.locator("#photo input[type=file]").set_input_files(str(photo))

        caption = page.locator("#caption textarea")
        expect(caption).not_to_have_value("", timeout=120_000)
        story = page.locator("#story textarea")
        timings = page.locator("#timings")
        expect(timings).to_contain_text(re.compile(r"story \d+\.\d s"), timeout=STORY_TIMEOUT_MS)
        first = story.input_value()
        assert len(first.split()) >= 10, first
        expect(timings).to_contain_text(re.compile(r"caption \d+ ms \(beam 5\)"))
        assert app.alive()

        expect(timings).to_contain_text("(part 1)")
        page.locator("#continue").click()
        expect(timings).to_contain_text("(part 2)", timeout=STORY_TIMEOUT_MS)
        continued = story.input_value()
        assert len(continued) > len(first) and continued.startswith(first[: len(first) // 2])

        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    target = os.environ.get("STORYTELLER_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

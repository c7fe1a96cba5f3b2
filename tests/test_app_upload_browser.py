"""The page's photo picker in a real browser: uploads without patching Gradio.

Every way a photo reaches the page (a file, an example, a webcam shot) must end in the app's
own checks, undecoded by Gradio, and give the same caption as the API; a file that is not a
photo gets the app's message on the page and one line in the server log. Chromium's fake camera
(see ``CHROMIUM_ARGS``) stands in for a webcam.
"""

from __future__ import annotations

import pytest
import test_app
import test_app_browser
from bad_images import upright_picture
from gradio_client import Client, handle_file

from storyteller.serving.examples import example_pictures

# Fixtures shared with the other app tests: the tiny run's Space, the app serving it (a story
# server that is down: only the photo matters here) and headless Chromium.
space, app, browser = test_app.space, test_app.app, test_app_browser.browser
expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(app.url)
    yield page
    page.close()


def _caption_becomes(page, expected: str) -> None:
    expect(page.locator("#caption textarea")).to_have_value(expected, timeout=120_000)


def test_a_file_an_example_and_a_webcam_shot_are_captioned_like_the_api(page, app, space, tmp_path):
    """A file, then (photo removed: caption cleared) the first example, then a webcam shot."""
    client = Client(app.url, verbose=False)
    photo = tmp_path / "photo.jpg"
    upright_picture().save(photo, quality=92)
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    _caption_becomes(page, client.predict(handle_file(photo), "beam", 5, api_name="/caption"))

    examples = example_pictures(space, tmp_path / "examples", True).paths
    assert examples, "the tiny run's Space should show examples"
    page.locator("#photo").get_by_role("button", name="Remove Image").click()
    _caption_becomes(page, "")  # cleared photo: cleared caption
    page.locator(".gallery-item").first.click()
    expected = client.predict(handle_file(examples[0]), "beam", 5, api_name="/caption")
    _caption_becomes(page, expected)
    page.locator("#photo").get_by_role("button", name="Remove Image").click()
    _caption_becomes(page, "")
    page.locator("#photo").get_by_role("button", name="Capture from camera").click()
    page.locator("#photo").get_by_role("button", name="Click to Access Webcam").click()
    video = page.locator("#photo video")
    video.wait_for()
    page.wait_for_function("v => v.readyState >= 2", arg=video.element_handle())
    page.locator("#photo").get_by_role("button", name="capture photo").click()
    # The fake camera's frame is not known here: any caption shows it reached the captioner.
    expect(page.locator("#caption textarea")).not_to_have_value("", timeout=120_000)
    assert "Traceback" not in app.log_tail(100_000) and app.alive()


def test_a_file_that_is_not_a_photo_gets_the_apps_message_and_one_log_line(page, app, tmp_path):
    """The message comes from storyteller.serving.open_upload, so Gradio never decoded it."""
    # Named .jpg: the picker's own filter drops a .txt in the browser before any upload.
    notes = tmp_path / "notes.jpg"
    notes.write_text("my holiday notes, not a photo\n" * 20)
    before = len(app.log.read_text(errors="replace"))
    page.locator("#photo input[type=file]").set_input_files(str(notes))
    expect(page.get_by_text("this file is not an image").first).to_be_visible(timeout=120_000)
    logged = app.log.read_text(errors="replace")[before:]
    assert "Traceback" not in logged, logged
    assert logged.splitlines() == [
        "user mistake: /caption: this file is not an image, or its header is damaged: use a "
        "JPEG, PNG, WebP, GIF, BMP or TIFF photo"
    ], logged
    assert app.alive()

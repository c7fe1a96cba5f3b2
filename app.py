"""Neural Storyteller: photo -> caption -> story, as a Gradio app (the Hugging Face Space's entry).

    python app.py                                   # http://127.0.0.1:7860
    STORYTELLER_RUN_DIR=outputs/flickr8k-1k python app.py
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=8080 python app.py

The caption model is loaded once, here at import: the Hub model (or model folder) named by
``$STORYTELLER_MODEL`` or by ``hub_model.json`` (a Space built with ``deploy --model``), else
from ``$STORYTELLER_RUN_DIR``, else ``best_model.pth`` + ``vocab.pkl`` beside this file
(the Space), else ``./outputs``; it is rebuilt from the checkpoint's own config. Without a model the app still starts and says which
command makes one.

Environment: ``STORYTELLER_STORY_BACKEND`` (``auto``, ``hosted``, ``transformers`` or
``offline``; default ``auto``) picks the story model, loaded in the background at start
(``STORYTELLER_PRELOAD_STORY=0``: on the first story instead); ``STORYTELLER_STORY_SEED``
makes stories repeatable; ``STORYTELLER_CONCURRENCY`` (default 2) is how many captions run at
once; ``STORYTELLER_UPLOAD_LIFETIME`` (default 300) is how many seconds an upload is kept;
``STORYTELLER_STORY_TIME_LIMIT`` (default 60) is how many seconds one story turn may take;
``STORYTELLER_STORY_API_KEY`` is the key for a self-hosted ``STORYTELLER_STORY_BASE_URL``
(``HF_TOKEN`` goes only to Hugging Face).

Every story request is bounded (``storyteller.story.limits``): a caption is cut to 500
characters and a steering line to 300 (the timings line says so), the prompt is fitted to a
token budget, and a turn stops at its time limit. A local model writes one story at a time, so
a visitor waits at most one bounded turn for each visitor ahead in the queue.

A refused request (a file that is not a photo, an empty caption, beam 50 or a malformed
payload through the API, a story backend that is down) puts one line in the server log,
``user mistake: /caption: ...`` or ``story failed: ...``, not a traceback; the client gets the
message alone. A model that cannot be loaded is one line too, ``no caption model: ...``.

API (``gradio_client``), documented in docs/stories.md:

* ``/caption``: image file, decoding ("greedy" or "beam"), beam width -> caption text;
* ``/story``: caption, genre, tone, length -> story text (streamed);
* ``/continue``, ``/add_image`` (continue from another caption), ``/steer`` (a line of text):
  the same client's story so far, continued.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import gradio as gr
except ModuleNotFoundError as exc:  # a base install: one line saying what to install
    if __name__ != "__main__" or exc.name != "gradio":
        raise
    print(
        "error: python app.py needs gradio, in the package's app extra: "
        "pip install -e '.[app]' (and '.[story]' for the offline or hosted story models)",
        file=sys.stderr,
    )
    sys.exit(2)
import torch
from gradio.exceptions import InvalidPathError
from pydantic import ValidationError

from storyteller.config import MAX_BEAM, Strategy
from storyteller.errors import StorytellerError
from storyteller.features.images import UnreadableImage
from storyteller.figures.plots import attention_figure, figure_pixels
from storyteller.inference import Captioner
from storyteller.serving.examples import Examples, example_pictures, photos_allowed
from storyteller.serving.server import (
    MAKE_MODEL_COMMAND,
    caption_upload,
    configured_threads,
    env_count,
    find_model_files,
    find_pretrained,
)
from storyteller.story import (
    GENRES,
    LENGTHS,
    TONES,
    StoryError,
    StoryOptions,
    StorySession,
    describe_backends,
    get_backend,
)
from storyteller.story.backends import resolve_auto
from storyteller.story.limits import MAX_CAPTION_CHARS, MAX_INSTRUCTION_CHARS

APP_DIR = Path(__file__).resolve().parent
STORY_BACKEND = os.environ.get("STORYTELLER_STORY_BACKEND", "auto").strip() or "auto"
# Caption requests run two at a time (a 2-core CPU is busy with two); stories one at a time
# on a local model, a few at a time when a hosted service does the work.
CAPTION_CONCURRENCY = env_count("STORYTELLER_CONCURRENCY", 2)
# Anyone may upload, so uploads are deleted this many seconds after they arrive (Gradio's
# cache cleaning, run every fifth of it): the disk holds at most what arrives in that time.
# A photo captioned again after that is refused with "upload it again".
UPLOAD_LIFETIME = env_count("STORYTELLER_UPLOAD_LIFETIME", 300)
# A fixed seed makes every story repeatable (tests, demos); unset, each story is new.
STORY_SEED = os.environ.get("STORYTELLER_STORY_SEED")
MAX_UPLOAD = "25mb"
if configured_threads():  # STORYTELLER_TORCH_THREADS; else torch's default (all cores)
    torch.set_num_threads(configured_threads())
EXAMPLES_DIR = Path(tempfile.gettempdir()) / "storyteller-examples"

# The server log: one line per refused request (Gradio's default is a traceback for each).
LOG = logging.getLogger("storyteller.app")
if not LOG.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def refuse(message: str, where: str = "", kind: str = "user mistake", **kwargs) -> gr.Error:
    """The error to raise for a request the app will not serve, logged as one line.

    Gradio prints a traceback into the server log for every ``gr.Error``; for a user's mistake
    (a PDF for a photo, an empty caption, beam 50) it only points into this file and buries
    real failures. The log gets ``kind: [where: ]message``; the client gets ``message`` alone,
    on one line whatever value it quotes (a length of ``"\\n"``).
    """
    message = " ".join(message.split())
    LOG.warning("%s: %s%s", kind, f"{where}: " if where else "", message)
    return gr.Error(message, print_exception=False, **kwargs)


def described(exc: Exception) -> str:
    """An unexpected exception as one line: its type and the first line of its message."""
    detail = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def checked_quietly(component):
    """``component`` whose own value checks (a slider's range, a radio's choices) refuse a
    bad API value through :func:`refuse` instead of Gradio's traceback; a value they cannot
    even compare (``"abc"`` or ``None`` for a slider) is refused the same way. (It wraps the
    instance's own ``preprocess`` and calls it: the checks themselves stay Gradio's.)"""
    check = component.preprocess
    label = component.label or ""

    def preprocess(payload):
        try:
            return check(payload)
        except gr.Error as exc:
            raise refuse(exc.message, where=label) from None
        except Exception:
            raise refuse(f"{payload!r:.60} is not a valid {label.lower()}", where=label) from None

    component.preprocess = preprocess
    return component


def refusing_malformed(blocks: gr.Blocks) -> gr.Blocks:
    """``blocks`` whose requests are refused through :func:`refuse` when Gradio cannot prepare
    their values, before any component sees them: too few values, a photo that is not file
    data (a string, a number, no ``meta``), a server path that was not uploaded. Gradio's
    default is a traceback in the log and ``{"error": null}`` for the client. (It wraps the
    instance's ``preprocess_data``, as :func:`checked_quietly` wraps a component's.)"""
    prepare = blocks.preprocess_data
    how = " (gradio_client: handle_file(path))"  # how a client sends a photo

    async def preprocess_data(block_fn, *args, **kwargs):
        try:
            return await prepare(block_fn, *args, **kwargs)
        except gr.Error:
            raise
        except InvalidPathError:
            message = f"the photo must be uploaded with the request, not a path on the server{how}"
        except ValidationError as exc:
            given = exc.errors()[0].get("input")
            message = (
                f'the photo\'s file data must hold "meta": {{"_type": "gradio.FileData"}}{how}'
                if isinstance(given, dict)
                else f"the photo must be an uploaded file, not {given!r:.60}{how}"
            )
        except Exception as exc:
            message = f"malformed request ({described(exc)})"
        raise refuse(message, f"/{block_fn.api_name or block_fn.name}") from None

    blocks.preprocess_data = preprocess_data
    return blocks


# Uploads reach the app through documented Gradio API only. ``gr.Image(type="filepath")`` is
# not enough: its preprocess (gradio/image_utils.py, ``preprocess_image``) calls
# ``PIL.Image.open`` on every upload before our code runs, so a PDF or a decompression bomb
# ends in Gradio's generic error and a traceback in the log. ``gr.File(type="filepath")``
# passes the uploaded file's path undecoded (gradio/components/file.py,
# ``_process_single_file``), so that is the input every caption event takes, and
# :func:`storyteller.serving.server.open_upload` is the only thing that decodes it.
# The visible ``gr.Image`` (upload, webcam, clipboard, examples) is never an event's input,
# so Gradio never decodes it on the server: each change of it is copied, in the browser
# (an event with ``js`` and no ``fn``), into the hidden ``gr.File``; both hold Gradio's
# ``FileData`` of the file the browser already uploaded. The browser shows the photo as it
# was picked; the server only ever sees the hidden file.
COPY_TO_UPLOAD = "(picture) => [picture]"


def photo_inputs(**kwargs) -> tuple[gr.Image, gr.File]:
    """The page's photo picker (``gr.Image``: upload, webcam, clipboard) and the hidden
    ``gr.File`` that carries its file, undecoded, to the caption events (see above)."""
    picker = gr.Image(type="filepath", **kwargs)
    upload = gr.File(type="filepath", file_count="single", visible="hidden", label="Photo file")
    picker.change(None, picker, upload, js=COPY_TO_UPLOAD, queue=False, api_visibility="private")
    return picker, upload


# ------------------------------------------------------------------------------------------
# Loaded once, at import
# ------------------------------------------------------------------------------------------


def _load_captioner() -> tuple[Captioner | None, str, Path | None]:
    """The captioner, a one-line status for the page and the model's folder (or None, what
    to do, None)."""
    try:
        pretrained = find_pretrained(APP_DIR)
        if pretrained is not None:  # a Hub model (or model folder), through the Hub's cache
            from storyteller.serving.hub import resolve_model

            model_dir = resolve_model(pretrained.model, pretrained.revision)
            captioner = Captioner.from_pretrained(model_dir)
            pinned = f" at {pretrained.revision}" if pretrained.revision else ""
            where = f"`{pretrained.model}`{pinned} ({pretrained.source})"
        else:
            files = find_model_files(APP_DIR)
            captioner = Captioner.from_files(files.checkpoint, files.vocab)
            model_dir = files.checkpoint.parent
            place = (
                files.source if files.source == "beside app.py" else f"in {files.checkpoint.parent}"
            )
            where = f"`{files.checkpoint.name}` {place}"
    except Exception as exc:  # a damaged file can fail in ways no check names: serve on, say it
        reason = (
            str(exc)
            if isinstance(exc, StorytellerError)
            else f"the model could not be loaded ({described(exc)})"
        )
        LOG.warning("no caption model: %s", reason)
        return None, f"**No caption model.** {reason}", None
    config = captioner.model.config
    info = captioner.checkpoint_info
    epoch = f", epoch {info['epoch']}" if "epoch" in info else ""
    status = (
        f"Caption model: {config.encoder} features -> `{captioner.model.name}` decoder, "
        f"{captioner.model.describe()} "
        f"({len(captioner.vocab)} words{epoch}), {where}"
    )
    if captioner.label:  # a smoke or sample model: its captions of photos are meaningless
        status = f"**{captioner.label}.** {status}"
    return captioner, status, model_dir


def _load_examples(model_dir: Path | None) -> Examples:
    """Example pictures that fit the served model (:mod:`storyteller.serving.examples`): the drawn
    scenes for a sample-trained model, a few of its run's test photos (unless
    ``STORYTELLER_EXAMPLE_PHOTOS=0``), the Space's own, or none (said in the log)."""
    if model_dir is None:
        return Examples("none", why="no model")
    try:
        found = example_pictures(model_dir, EXAMPLES_DIR, photos_allowed(default=True))
    except (StorytellerError, OSError) as exc:  # a read-only temp folder, a damaged split
        found = Examples("none", why=str(exc))
    if found.kind == "none":
        LOG.info("no example pictures: %s", found.why)
    return found


CAPTIONER, MODEL_STATUS, MODEL_DIR = _load_captioner()
EXAMPLE_SET = _load_examples(MODEL_DIR)
EXAMPLES = [str(p) for p in EXAMPLE_SET.paths]
if CAPTIONER is not None and EXAMPLES:  # first calls pay one-off set-up costs: pay them now
    for beam in (1, 5):
        caption_upload(CAPTIONER, EXAMPLES[0], beam)

_backend_lock = threading.Lock()


def story_backend():
    """The story backend (loaded once, on first use; the lock stops two loads at once)."""
    with _backend_lock:
        return get_backend(STORY_BACKEND)


def _story_status() -> str:
    lines = describe_backends()
    line = lines.get(STORY_BACKEND, "")
    return f"Story backend: `{STORY_BACKEND}`" + (f" ({line})" if line else "")


def _story_concurrency() -> int:
    """4 stories at a time when a hosted service writes them, else 1 (a local model: the
    queue holds the others, each for at most one turn's time limit)."""
    name = STORY_BACKEND
    if name == "auto":
        try:
            name = resolve_auto()
        except StoryError:
            return 1
    return 4 if name == "hosted" else 1


STORY_STATUS = _story_status()
STORY_CONCURRENCY = _story_concurrency()
if os.environ.get("STORYTELLER_PRELOAD_STORY", "1") == "1":
    # Load the language model in the background so the first story does not wait for it;
    # a failure here is reported when a story is asked for.
    def _preload():
        try:
            story_backend()
        except StorytellerError:
            pass

    threading.Thread(target=_preload, name="story-preload", daemon=True).start()


# ------------------------------------------------------------------------------------------
# Event handlers (each is also an API endpoint)
# ------------------------------------------------------------------------------------------


def _beam_width(beam_width) -> int:
    """The beam width an API call asked for (the slider sends 5.0), checked by
    :class:`Strategy`, or a refusal (text, ``NaN``, 2.5, 50)."""
    whole = isinstance(beam_width, float) and beam_width.is_integer()
    try:
        return Strategy(beam_size=int(beam_width) if whole else beam_width).beam_size
    except StorytellerError:
        message = f"beam width must be a whole number from 1 to {MAX_BEAM}, not {beam_width!r:.40}"
        raise refuse(message, "/caption") from None


def caption_image(image: str | None, decoding: str = "beam", beam_width: float = 5, info=None):
    """Caption one image. Returns the caption (and, for the page, the timings state)."""
    if CAPTIONER is None:
        raise refuse(MODEL_STATUS.replace("**", ""), kind="not served", duration=None)
    if not image or not isinstance(image, str):
        raise refuse("upload a photo (or take one with the webcam) first", "/caption")
    if decoding not in ("greedy", "beam"):
        raise refuse(f"decoding must be 'greedy' or 'beam', not {decoding!r:.40}", "/caption")
    beam = _beam_width(beam_width) if decoding == "beam" else 1
    try:
        result = caption_upload(CAPTIONER, image, beam)
    except UnreadableImage as exc:
        raise refuse(str(exc), "/caption") from None
    info = {**(info or {}), "caption_ms": result.ms, "decoding": Strategy(beam).describe()}
    looked = (result.view, result.attention) if result.attention is not None else None
    return result.caption, info, looked


def render_attention(looked):
    """The figure of where the model looked for each word of its caption (attention
    captioners; nothing for the others)."""
    if looked is None:
        return None
    view, attention = looked
    return figure_pixels(attention_figure(view, attention))


def _options(genre: str, tone: str, length: str) -> StoryOptions:
    try:
        seed = int(STORY_SEED) if STORY_SEED else None
        return StoryOptions(
            genre=genre or "adventure", tone=tone or "warm", length=length, seed=seed
        )
    except (StorytellerError, ValueError) as exc:
        raise refuse(str(exc), "story options") from None


def _stream(kind: str, text: str, genre, tone, length, session, info):
    """Run one story turn, yielding (story so far, session, info) after every chunk."""
    options = _options(genre, tone, length)
    try:
        backend = story_backend()
        if session is None or kind == "start":
            session = StorySession(backend, options)
        if kind in ("continue", "steer") and not session.story:  # a new image may start one
            raise refuse("start a story first (New story), then continue it", f"/{kind}")
        started = time.perf_counter()
        if kind == "start":
            chunks = session.start(text, options)
        elif kind == "image":
            chunks = session.add_image(text, options)
        elif kind == "steer":
            chunks = session.steer(text, options)
        else:
            chunks = session.continue_story(options)
        for note in session.notes:  # a caption or steering line cut to its limit
            gr.Warning(note)
        story = session.story
        for story in chunks:
            yield story, session, info
        for note in session.notes:
            if "time limit" in note:
                gr.Warning(note)
        info = {**(info or {}), "story_s": time.perf_counter() - started}
        info.update(parts=len(session.turns), backend=backend.describe(), notes=session.notes)
        yield story, session, info
    except StoryError as exc:
        message = f"{exc} (the caption is still shown above)"
        raise refuse(message, f"{kind} turn", kind="story failed", duration=None) from None


def write_story(caption, genre="adventure", tone="warm", length="short", session=None, info=None):
    """A new story from a caption (streams)."""
    caption = (caption or "").strip()
    if not caption:
        raise refuse("there is no caption yet: upload a photo first (or type a caption)", "/story")
    yield from _stream("start", caption, genre, tone, length, session, info)


def continue_story(genre="adventure", tone="warm", length="short", session=None, info=None):
    """The next part of this user's story (streams)."""
    yield from _stream("continue", "", genre, tone, length, session, info)


def add_image(caption, genre="adventure", tone="warm", length="short", session=None, info=None):
    """Continue this user's story from a new photo's caption (streams)."""
    caption = (caption or "").strip()
    if not caption:
        raise refuse("caption the new photo first, then press New image", "/add_image")
    yield from _stream("image", caption, genre, tone, length, session, info)


def steer_story(
    instruction, genre="adventure", tone="warm", length="short", session=None, info=None
):
    """Continue this user's story following a line of text (streams)."""
    instruction = (instruction or "").strip()
    if not instruction:
        raise refuse("type a line saying where the story should go, then press Steer", "/steer")
    yield from _stream("steer", instruction, genre, tone, length, session, info)


def caption_changed(image, decoding, beam_width, info):
    """The page's photo changed (upload, webcam, example): caption it; cleared: clear."""
    if not image:
        return "", info, None
    return caption_image(image, decoding, beam_width, info)


def auto_story(caption, genre, tone, length, session, info):
    """After a caption on the page: write a story unless this user already has one going
    (then New story, Continue or New image decide what the new caption is for)."""
    if (session is not None and session.story) or not (caption or "").strip():
        yield gr.skip(), gr.skip(), gr.skip()
        return
    yield from write_story(caption, genre, tone, length, session, info)


def render_info(info) -> str:
    """The timings line under the story."""
    info = info or {}
    parts = []
    if "caption_ms" in info:
        parts.append(f"caption {info['caption_ms']:.0f} ms ({info['decoding']})")
    if "story_s" in info:
        parts.append(f"story {info['story_s']:.1f} s (part {info.get('parts', 1)})")
    if info.get("backend"):
        parts.append(info["backend"])
    line = "Timings: " + " · ".join(parts) if parts else ""
    notes = "; ".join(info.get("notes") or ())
    return f"{line}\n\nNote: {notes}" if notes else line


# ------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------

with gr.Blocks(
    title="Neural Storyteller", delete_cache=(max(1, UPLOAD_LIFETIME // 5), UPLOAD_LIFETIME)
) as demo:
    gr.Markdown(
        "# Neural Storyteller\nUpload a photo: a CNN and a caption decoder describe it, then a "
        "language model turns the caption into a story you can continue, extend with another "
        "photo, or steer."
    )
    model_status = gr.Markdown(MODEL_STATUS, elem_id="model-status")
    if CAPTIONER is None:
        gr.Markdown(
            f"To make a model, run `{MAKE_MODEL_COMMAND}` in this folder, then restart the app.",
            elem_id="make-model",
        )
    session = gr.State(None)  # this user's StorySession
    info = gr.State(None)  # this user's latest timings
    looked = gr.State(None)  # (photo as the encoder saw it, AttentionCaption) or None
    with gr.Row():
        with gr.Column(scale=1):
            picker, image = photo_inputs(
                sources=["upload", "webcam", "clipboard"],
                label="Photo",
                elem_id="photo",
                height=320,
            )
            with gr.Row():
                decoding = checked_quietly(
                    gr.Radio(["greedy", "beam"], value="beam", label="Decoding")
                )
                beam_width = checked_quietly(
                    gr.Slider(1, MAX_BEAM, value=5, step=1, label="Beam width")
                )
            caption_button = gr.Button("Caption", elem_id="caption-button")
            if EXAMPLES:
                gr.Examples(
                    examples=[[p] for p in EXAMPLES], inputs=[picker], label=EXAMPLE_SET.label
                )
        with gr.Column(scale=1):
            caption = gr.Textbox(
                label="Caption (you may edit it)",
                lines=2,
                elem_id="caption",
                interactive=True,
                max_length=MAX_CAPTION_CHARS,  # the browser's limit; the API's is the session's
            )
            attention_map = gr.Image(
                label="Where the model looked for each word",
                type="numpy",
                interactive=False,
                visible=CAPTIONER is not None and CAPTIONER.attends,
                elem_id="attention-map",
            )
            with gr.Row():
                genre = gr.Dropdown(
                    list(GENRES), value="adventure", label="Genre", allow_custom_value=True
                )
                tone = gr.Dropdown(list(TONES), value="warm", label="Tone", allow_custom_value=True)
                length = checked_quietly(gr.Radio(list(LENGTHS), value="short", label="Length"))
            story = gr.Textbox(label="Story", lines=12, elem_id="story", interactive=False)
            with gr.Row():
                new_story_button = gr.Button("New story", variant="primary", elem_id="new-story")
                continue_button = gr.Button("Continue", elem_id="continue")
                new_image_button = gr.Button("New image", elem_id="new-image")
            with gr.Row():
                steer_text = gr.Textbox(
                    label="Steer",
                    placeholder="e.g. a storm is coming",
                    scale=3,
                    elem_id="steer",
                    max_length=MAX_INSTRUCTION_CHARS,
                )
                steer_button = gr.Button("Steer", scale=1, elem_id="steer-button")
            timings = gr.Markdown(elem_id="timings")
            gr.Markdown(STORY_STATUS, elem_id="story-status")

    controls = [genre, tone, length, session, info]
    story_outputs = [story, session, info]
    story_events = {"concurrency_limit": STORY_CONCURRENCY, "concurrency_id": "story"}
    private = {"api_visibility": "private", "queue": False}

    caption_inputs = [image, decoding, beam_width, info]
    caption_events = {"concurrency_limit": CAPTION_CONCURRENCY, "concurrency_id": "caption"}
    caption_outputs = [caption, info, looked]
    for captioned in (
        caption_button.click(
            caption_image, caption_inputs, caption_outputs, api_name="caption", **caption_events
        ),
        image.change(
            caption_changed,
            caption_inputs,
            caption_outputs,
            api_visibility="private",
            **caption_events,
        ),
    ):
        captioned.then(render_info, info, timings, **private)
        captioned.then(render_attention, looked, attention_map, **private)
        captioned.success(
            auto_story,
            [caption, *controls],
            story_outputs,
            api_visibility="private",
            **story_events,
        ).then(render_info, info, timings, **private)

    for trigger, fn, first, name in (
        (new_story_button.click, write_story, [caption], "story"),
        (continue_button.click, continue_story, [], "continue"),
        (new_image_button.click, add_image, [caption], "add_image"),
        (steer_button.click, steer_story, [steer_text], "steer"),
    ):
        trigger(fn, [*first, *controls], story_outputs, api_name=name, **story_events).then(
            render_info, info, timings, **private
        )
    steer_text.submit(
        steer_story,
        [steer_text, *controls],
        story_outputs,
        api_visibility="private",
        **story_events,
    ).then(render_info, info, timings, **private)

refusing_malformed(demo)
demo.queue(default_concurrency_limit=CAPTION_CONCURRENCY, max_size=64)

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_UPLOAD)  # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT

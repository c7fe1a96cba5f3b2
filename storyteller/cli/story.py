"""``story``: caption images, then stream a story about them."""

import sys

from ..config_cli import add_config_flags, config_from_args, flag_type
from ..errors import StorytellerError
from ..story.backends import BACKENDS
from ..story.backends.hosted import DEFAULT_MODEL, MODEL_ENV
from ..story.options import StoryOptions
from .caption import caption_each, load_captioner
from .common import add_captioner, terminal_text


def add_parser(sub) -> None:
    p = sub.add_parser(
        "story",
        help="caption images, then stream a story about them (or start from --caption)",
        description="Caption each image, then write a story from the first caption and "
        "continue it with each further image's caption, streaming it to stdout.",
    )
    p.add_argument("images", nargs="*", help="image files (the story follows them in order)")
    p.add_argument(
        "--caption",
        action="append",
        help="write the story from this caption instead of images (repeat for more scenes)",
    )
    add_captioner(  # --model is the language model here
        p,
        "beam width for captions (1 = greedy)",
        "cpu or cuda, for the captioner and a local language model",
        model_flag=False,
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: hosted when --base-url or HF_TOKEN is set, else offline Gemma 3 270M",
    )
    p.add_argument(
        "--model",
        help=f"language model: hosted model id (default ${MODEL_ENV} or "
        f"{DEFAULT_MODEL}), or a hub id / folder for --backend transformers",
    )
    p.add_argument(
        "--base-url",
        help="an OpenAI-compatible server for the hosted backend (TGI, vLLM, llama.cpp, Ollama); "
        "default $STORYTELLER_STORY_BASE_URL. It gets its own key from "
        "$STORYTELLER_STORY_API_KEY (HF_TOKEN goes only to Hugging Face), and no key over "
        "plain http unless it runs on this machine",
    )
    p.add_argument(
        "--timeout",
        type=flag_type(StoryOptions, "time_limit"),
        help="hosted: seconds to wait for the server (default 60); local models: seconds one "
        "turn may generate (default $STORYTELLER_STORY_TIME_LIMIT or 60)",
    )
    add_config_flags(p, StoryOptions)
    p.set_defaults(handler=run)


def run(args) -> None:
    from ..story import StorySession, get_backend

    options = config_from_args(StoryOptions, args)  # checked before any model is loaded
    if args.base_url and args.backend in ("transformers", "offline"):
        raise StorytellerError(f"--base-url is a server for --backend hosted, not {args.backend}")
    if args.model and args.backend == "offline":
        raise StorytellerError("--model is for hosted or transformers: offline runs Gemma 3 270M")
    if args.caption and args.images:
        raise StorytellerError("give images or --caption, not both")
    if not args.caption and not args.images:
        raise StorytellerError("give one or more images, or --caption 'a dog runs on a beach'")
    captioner = load_captioner(args) if args.images else None
    captions = _captions_for(captioner, args) if captioner is not None else args.caption

    def caption_line(caption: str) -> str:
        line = f"caption: {terminal_text(caption)}"
        return captioner.labelled(line) if captioner is not None else line

    print(caption_line(captions[0]), flush=True)  # shown even when no story can follow
    backend = get_backend(
        args.backend,
        model=args.model,
        base_url=args.base_url,
        timeout=args.timeout,
        device=args.device,
    )
    print(f"story by {backend.describe()}", file=sys.stderr, flush=True)
    session = StorySession(backend, options)
    for i, caption in enumerate(captions):
        if i:
            print(f"\n{caption_line(caption)}", flush=True)
        shown = session.story + "\n\n" if session.story else ""
        print(flush=True)
        turn = session.start(caption) if i == 0 else session.add_image(caption)
        _print_notes(session.notes)  # a caption cut to its limit: said before the story
        said = len(session.notes)
        for text in turn:
            sys.stdout.write(terminal_text(text[len(shown) :]))
            sys.stdout.flush()
            shown = text
        print(flush=True)
        _print_notes(session.notes[said:])  # a turn ended by its time limit


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {terminal_text(note)}", file=sys.stderr, flush=True)


def _captions_for(captioner, args) -> list[str]:
    """Caption every image first, so a bad image fails before a language model loads."""
    captions = []
    for path, captioned in caption_each(captioner, args):
        if isinstance(captioned, Exception):
            raise StorytellerError(f"cannot read image {path}: {captioned}") from captioned
        captions.append(captioned["caption"])
    return captions

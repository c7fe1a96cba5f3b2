"""``story``: caption images, then stream a story about them; continue or steer a saved one."""

import functools
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
    _add_saved_story_flags(p)
    add_config_flags(p, StoryOptions)
    p.set_defaults(handler=run)


def _add_saved_story_flags(p) -> None:
    """--continue, --steer, --save: a story that goes on over several calls; and --verbose."""
    p.add_argument(
        "--continue",
        dest="resume",
        metavar="FILE",
        help="go on with the story saved in FILE (by --save): the next part, or the images' or "
        "--caption scenes, and save it there again (unless --save names another file)",
    )
    p.add_argument(
        "--steer",
        action="append",
        metavar="TEXT",
        help="then one more part that follows this line ('a storm breaks'; repeat for more)",
    )
    p.add_argument("--save", metavar="FILE", help="save the story so far to FILE after each part")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the language model's loading progress bars and warnings",
    )


def run(args) -> None:
    from ..story import StorySession, get_backend

    options = config_from_args(StoryOptions, args)  # checked before any model is loaded
    _check(args)
    save_to = args.save or args.resume
    session = StorySession.load(args.resume) if args.resume else StorySession()
    captioner = load_captioner(args) if args.images else None
    captions = _captions_for(captioner, args) if captioner is not None else args.caption or []

    def caption_line(caption: str) -> str:
        line = f"caption: {terminal_text(caption)}"
        return captioner.labelled(line) if captioner is not None else line

    if captions:
        print(caption_line(captions[0]), flush=True)  # shown even when no story can follow
    session.backend = get_backend(
        args.backend,
        verbose=args.verbose,
        model=args.model,
        base_url=args.base_url,
        timeout=args.timeout,
        device=args.device,
    )
    print(f"story by {session.backend.describe()}", file=sys.stderr, flush=True)
    parts = [(caption_line(c), functools.partial(session.add_image, c)) for c in captions]
    parts += [("", functools.partial(session.steer, line)) for line in args.steer or []]
    for i, (line, part) in enumerate(parts or [("", session.continue_story)]):
        if i and line:
            print(f"\n{line}", flush=True)
        if i or line:
            print(flush=True)
        _write_part(session, part(options))
        if save_to:
            session.save(save_to)
    if save_to:
        print(f"story saved to {save_to}: go on with --continue {save_to}", file=sys.stderr)


def _check(args) -> None:
    """The flags that cannot go together, refused before anything loads."""
    if args.base_url and args.backend in ("transformers", "offline"):
        raise StorytellerError(f"--base-url is a server for --backend hosted, not {args.backend}")
    if args.model and args.backend == "offline":
        raise StorytellerError("--model is for hosted or transformers: offline runs Gemma 3 270M")
    if args.caption and args.images:
        raise StorytellerError("give images or --caption, not both")
    if any(not line.strip() for line in args.steer or []):
        raise StorytellerError("--steer is empty: give a line saying what happens next")
    if args.steer and not (args.resume or args.caption or args.images):
        raise StorytellerError(
            "--steer needs a story: --continue FILE (saved by --save), or images or "
            "--caption to start one"
        )
    if not args.caption and not args.images and not args.resume:
        raise StorytellerError("give one or more images, or --caption 'a dog runs on a beach'")


def _write_part(session, part) -> None:
    """Stream one part of the story to stdout, with the notes of what was cut on stderr."""
    shown = session.story + "\n\n" if session.story else ""
    _print_notes(session.notes)  # a caption or steering line cut to its limit: said first
    said = len(session.notes)
    for text in part:
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

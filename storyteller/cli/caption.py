"""``caption``: one JSON line per captioned image, an ``error:`` line on stderr per unreadable
one; its caption loop is also ``story``'s."""

import json
import sys

from ..errors import StorytellerError
from .common import add_captioner


def add_parser(sub) -> None:
    p = sub.add_parser("caption", help="caption images: one JSON line per image")
    p.add_argument("images", nargs="+", help="image files")
    add_captioner(p, "beam width (1 = greedy)", "cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--attention-maps",
        metavar="DIR",
        help="also write, per image, where the model looked for each word (DIR/<image>.png; "
        "attention captioners only)",
    )
    p.set_defaults(handler=run)


def load_captioner(args):
    from ..inference import Captioner
    from ..runtime import get_device

    return Captioner.load(args.checkpoint, args.vocab, get_device(args.device), args.revision)


def caption_each(captioner, args, attention_maps: str | None = None):
    """Each image's path and ``{"caption": ...}`` (plus ``"attention_map"``, the figure written
    into ``attention_maps``), or the exception that stopped an unreadable image."""
    from ..features.images import UnreadableImage, open_image
    from ..figures.attention_maps import write_attention_maps

    decoding = {"beam_size": args.beam, "length_penalty": args.length_penalty}
    figures: set[str] = set()
    for path in args.images:
        try:
            photo = open_image(path)
            if attention_maps:
                result = captioner.caption_with_attention([photo], **decoding)[0]
                preprocessing = captioner.extractor.spec.preprocessing
                written = write_attention_maps(
                    [(path, photo, result)], preprocessing, attention_maps, figures
                )
                captioned = {"caption": result.caption, "attention_map": str(written[0])}
            else:
                captioned = {"caption": captioner([photo], **decoding)[0]}
        except UnreadableImage as exc:
            yield path, exc
        else:
            yield path, captioned


def run(args) -> int:
    captioner = load_captioner(args)
    if args.attention_maps and not captioner.attends:
        raise StorytellerError(
            f"--attention-maps: the {captioner.model.name!r} captioner in {args.checkpoint} does "
            "not attend; train one with --decoder attention"
        )
    warning = {"warning": captioner.label} if captioner.label else {}
    failures = 0
    for path, captioned in caption_each(captioner, args, args.attention_maps):
        if isinstance(captioned, Exception):  # said on stderr; stdout holds captions alone
            failures += 1
            print(f"error: cannot read image {path}: {captioned}", file=sys.stderr, flush=True)
        else:
            print(json.dumps({"image": path, **warning, **captioned}), flush=True)
    if failures:
        print(f"error: {failures} of {len(args.images)} image(s) not captioned", file=sys.stderr)
    return 1 if failures else 0

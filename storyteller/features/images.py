"""Opening a photo nobody vouches for: the one way every command turns a file into pixels.

:func:`open_image` gives upright 8-bit RGB or raises :class:`UnreadableImage` (one line: what
is wrong, what to do), bounding the work: regular files only (a FIFO named ``x.jpg`` would
block for ever), at most :data:`MAX_PIXELS` read from the header before decoding
(decompression bombs), and a long side at most :data:`MAX_ASPECT_RATIO` times the short one:
encoders resize the short side to 256, so a 131-byte 16000 x 1 strip would become 3 GB.
"""

from __future__ import annotations

import os
import stat
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import StorytellerError

# 40 megapixels: above every phone camera, far below what would exhaust a small server's memory
# (decoded as RGB: 120 MB). Larger pictures are refused before any pixel is decoded.
MAX_PIXELS = 40_000_000
# Panoramas (4:1 and beyond) pass; a strip of 20:1 already shows the encoder's centre crop only
# a twentieth of its length.
MAX_ASPECT_RATIO = 20


class UnreadableImage(StorytellerError):
    """A file that cannot be captioned; the message says why and what to do."""


def check_size(width: int, height: int) -> None:
    """Refuse a picture too big to decode, empty, or too long and thin to resize."""
    if width * height > MAX_PIXELS:
        raise UnreadableImage(_too_large_message(f"{width} x {height} pixels"))
    if width < 1 or height < 1:
        raise UnreadableImage("the image is empty (0 pixels): use another photo")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise UnreadableImage(
            f"the image is too long and thin to caption ({width} x {height} pixels; the long "
            f"side may be at most {MAX_ASPECT_RATIO} times the short one): crop it and try again"
        )


def _too_large_message(what: str) -> str:
    return (
        f"the image is too large to caption ({what}; the limit is {MAX_PIXELS / 1e6:.0f} "
        "megapixels): resize it and try again"
    )


def _refuse_special(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for is_kind, name in kinds.items() if is_kind(mode)), "a device")
    raise UnreadableImage(f"this is {kind}, not a regular file: use a photo file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened in binary if it is a regular file, else :class:`UnreadableImage`.
    Checked before opening (a device is never opened) and again on the file opened without
    blocking, so a FIFO put there in between cannot hang the reader."""
    _refuse_special(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _refuse_special(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def open_image(source: str | os.PathLike | BinaryIO, draft_side: int | None = None) -> Image.Image:
    """A photo's path (or open binary file) -> upright 8-bit RGB, or :class:`UnreadableImage`.
    ``draft_side``: a JPEG at least twice that is decoded at 1/2, 1/4 or 1/8 scale (libjpeg),
    keeping at least ``draft_side`` pixels a side."""
    if isinstance(source, (str, os.PathLike)):
        try:
            file = open_regular(source)
        except FileNotFoundError:
            raise UnreadableImage(
                "the file does not exist: check its name, or upload it again"
            ) from None
        except (OSError, ValueError) as exc:  # no permission, a NUL in the name, ...
            reason = getattr(exc, "strerror", None) or exc
            raise UnreadableImage(f"the file could not be opened ({reason})") from None
        with file:
            return open_image(file, draft_side)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that: refuse both the same way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(_too_large_message("too many pixels")) from None
    except UnidentifiedImageError:
        raise UnreadableImage(
            "this file is not an image, or its header is damaged: use a JPEG, PNG, WebP, GIF, "
            "BMP or TIFF photo"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's plugins raise all three
        raise UnreadableImage(f"the image could not be opened ({exc}): try another file") from None
    with image:
        check_size(*image.size)
        if draft_side and image.format == "JPEG" and min(image.size) >= 2 * draft_side:
            image.draft(None, (draft_side, draft_side))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. Pillow's "palette with transparency"
                return load_rgb(image)
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
            raise UnreadableImage(
                f"the image file is damaged or truncated ({exc}): use the complete file"
            ) from None


def load_rgb(image: Image.Image) -> Image.Image:
    """A PIL image as upright 8-bit RGB (EXIF rotation applied, any mode converted), with
    :func:`check_size`'s bounds; undecodable pixels raise ``OSError``/``ValueError``."""
    check_size(*image.size)
    image.load()
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clipping to white.
        array = np.asarray(image, dtype=np.float32)
        peak = float(array.max()) or 1.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")

"""Files a stranger may upload, made on the fly from a generated sample picture.

``make_bad_images(folder)`` returns ``{kind: (path, expected)}`` where ``expected`` is a
regular expression the app's error message must match, or ``None`` when the image must be
captioned (it is unusual but valid). ``make_fifo`` makes what no upload can carry, a named
pipe; ``returns_within`` calls something that might block on it without hanging the tests.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyteller.data.sample import make_example

# EXIF orientation 6: "rotate 90 degrees clockwise to display".
ORIENTATION = 0x0112


def upright_picture() -> Image.Image:
    _, _, picture = make_example(0, 5, image_size=224)
    return picture


def exif_rotated(picture: Image.Image) -> tuple[Image.Image, Image.Exif]:
    """Pixels stored sideways plus the EXIF tag that turns them upright again."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return picture.transpose(Image.Transpose.ROTATE_90), exif


def make_bad_images(folder: str | Path) -> dict[str, tuple[Path, str | None]]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    picture = upright_picture()
    png, jpeg = io.BytesIO(), io.BytesIO()
    picture.save(png, "PNG")
    picture.save(jpeg, "JPEG", quality=90)
    png, jpeg = png.getvalue(), jpeg.getvalue()
    out: dict[str, tuple[Path, str | None]] = {}

    def put(name: str, data: bytes, expected: str | None) -> None:
        path = folder / name
        path.write_bytes(data)
        out[name.split(".")[0]] = (path, expected)

    def save(name: str, image: Image.Image, expected: str | None = None, **kwargs) -> None:
        buffer = io.BytesIO()
        image.save(buffer, **kwargs)
        put(name, buffer.getvalue(), expected)

    corrupted = bytearray(png)
    start = corrupted.index(b"IDAT") + 20
    corrupted[start : start + 200] = bytes(b ^ 0xFF for b in corrupted[start : start + 200])
    put("corrupted.png", bytes(corrupted), "damaged or truncated")
    put("truncated.jpg", jpeg[: len(jpeg) // 2], "damaged or truncated")
    put("not_an_image.jpg", b"%PDF-1.4 this is a document, not a photo\n" * 20, "not an image")
    put("empty.png", b"", "not an image")
    save("grayscale.jpg", picture.convert("L"), format="JPEG")
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(picture.size))
    save("rgba.png", rgba, format="PNG")
    save("cmyk.jpg", picture.convert("CMYK"), format="JPEG")
    grey16 = (np.asarray(picture.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("sixteen_bit.png", Image.fromarray(grey16), format="PNG")
    save("palette.gif", picture.convert("P"), format="GIF")
    save("huge.png", Image.new("1", (9000, 9000)), "too large .*9000 x 9000", format="PNG")
    save("bomb.png", Image.new("1", (20000, 20000)), "too large", format="PNG")
    # 131 bytes, and 256 x 4,096,000 pixels once the encoder resizes its short side to 256.
    save("wide.png", Image.new("RGB", (16000, 1)), "too long and thin .*16000 x 1", format="PNG")
    sideways, exif = exif_rotated(picture)
    save("exif_rotated.jpg", sideways, format="JPEG", quality=90, exif=exif)
    return out


def make_fifo(folder: str | Path, name: str = "x.jpg") -> Path:
    """A named pipe called ``name``, with no writer: opening it for reading blocks for ever."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    path = Path(folder) / name
    os.mkfifo(path)
    return path


def returns_within(seconds: float, function, *args, **kwargs):
    """``function(*args, **kwargs)``'s result (or its exception, raised here), failing the test
    instead of hanging it when the call is still blocked after ``seconds``."""
    outcome: dict = {}

    def call():
        try:
            outcome["result"] = function(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(function, '__name__', function)} still blocked after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")

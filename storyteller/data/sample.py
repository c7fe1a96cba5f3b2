"""The embedded sample: drawn scenes of one to three coloured shapes on a named background,
each with five true English captions ("Three tiny yellow stars in a row."), written in the
Kaggle Flickr8k layout (``Images/sample_00000.jpg``, ``captions.txt``, and ``sample.json``
written last) so any command runs on a fresh machine with no downloads. Everything derives
from ``(seed, image index)`` through private generators: one seed, byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from storyteller.errors import StorytellerError
from storyteller.progress import progress

# 2,000 training pairs: enough to learn colour, shape, count, size and background, while
# extraction plus training stays at a couple of minutes on 2 CPU cores.
DEFAULT_NUM_IMAGES = 400

# Bump when the drawing or the captions change, so cached samples are regenerated.
SAMPLE_VERSION = 1
CAPTIONS_PER_IMAGE = 5
IMAGES_DIRNAME = "Images"
CAPTIONS_FILENAME = "captions.txt"
MANIFEST_FILENAME = "sample.json"
MANIFEST_FORMAT = "storyteller-sample"
JPEG_QUALITY = 90

_SUPERSAMPLE = 2  # shapes are drawn at twice the size and shrunk, for smooth edges
_NOISE_STD = 3.0  # pixel noise added to the final picture, in 0-255 units
_IMAGE_NAME_RE = re.compile(r"sample_\d+\.jpg")

# fmt: off
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35), "green": (35, 170, 60), "blue": (35, 75, 225),
    "yellow": (250, 215, 25), "purple": (140, 50, 185), "orange": (250, 135, 20),
}
# fmt: on
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = ("small", "large")
COUNTS = (1, 2, 3)
POSITIONS = ("left", "right", "top", "bottom", "center")
# Where a single object stands, as fractions of the picture's width and height.
# fmt: off
_SPOTS = {"left": (0.26, 0.5), "right": (0.74, 0.5), "top": (0.5, 0.26), "bottom": (0.5, 0.74),
          "center": (0.5, 0.5)}
# fmt: on
ROW = "row"  # the position of a group: objects are lined up side by side


@dataclass(frozen=True)
class Background:
    """A named background: how it reads in captions and which colours it would hide."""

    name: str
    on_phrases: tuple[str, ...]  # "... on a white background"
    noun_phrases: tuple[str, ...]  # "a white background with ..."
    keywords: frozenset[str]  # caption tokens that name this background
    excluded_colours: frozenset[str] = frozenset()


# fmt: off
BACKGROUNDS: dict[str, Background] = {bg.name: bg for bg in (
    Background("white", ("on a white background", "on a plain white background", "on white"),
               ("a white background", "a plain white background"), frozenset({"white"})),
    Background("black", ("on a black background", "on a plain black background", "on black"),
               ("a black background", "a plain black background"), frozenset({"black"})),
    Background("grey", ("on a grey background", "on a gray background", "on grey"),
               ("a grey background", "a gray background"), frozenset({"grey", "gray"})),
    Background("striped", ("on a striped background", "on stripes", "against a striped background"),
               ("a striped background",), frozenset({"striped", "stripes"})),
    Background("grass-green", ("on the grass", "on a grassy background", "on a patch of grass"),
               ("a grassy background", "a patch of grass"), frozenset({"grass", "grassy"}),
               frozenset({"green"})),
    Background("sky-blue", ("in the sky", "against the sky", "on a sky background"),
               ("a sky background", "a clear sky"), frozenset({"sky"}),
               frozenset({"blue", "purple"})),
    Background("sand", ("on the sand", "on a sandy background", "on sand"),
               ("a sandy background", "a patch of sand"), frozenset({"sand", "sandy"}),
               frozenset({"yellow", "orange"})),
)}
# fmt: on


@dataclass(frozen=True)
class Scene:
    """Everything a picture shows; ``position`` is :data:`ROW` for a group."""

    background: str
    shape: str
    colour: str
    size: str
    count: int
    position: str


def random_scene(rng: random.Random) -> Scene:
    """Draw the attributes of one scene; the colour always contrasts with the background."""
    background = rng.choice(list(BACKGROUNDS))
    excluded = BACKGROUNDS[background].excluded_colours
    colour = rng.choice([c for c in COLOURS if c not in excluded])
    shape, size, count = rng.choice(SHAPES), rng.choice(SIZES), rng.choice(COUNTS)
    position = rng.choice(POSITIONS) if count == 1 else ROW
    return Scene(background, shape, colour, size, count, position)


# Synonyms: the first word is the canonical one and the most frequent.
# fmt: off
SIZE_WORDS = {"small": ("small", "small", "little", "tiny"),
              "large": ("large", "large", "big", "huge")}
SHAPE_WORDS = {"circle": ("circle", "circle", "circle", "disc"), "square": ("square",),
               "triangle": ("triangle",), "star": ("star",), "cross": ("cross",)}
# fmt: on
COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "two", "a pair of"), 3: ("three",)}
WHERE_PHRASES = {
    "left": ("on the left", "on the left side", "to the left", "on the left of the picture"),
    "right": ("on the right", "on the right side", "to the right", "on the right of the picture"),
    "top": ("at the top", "near the top", "at the top of the picture"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
    "center": ("in the middle", "in the center", "in the centre", "in the middle of the picture"),
    2: ("side by side", "next to each other", "in a row"),
    3: ("in a row", "side by side", "in a line", "lined up"),
}

# One picture gets five different templates. Every template names the count and the shape;
# all but one name the colour.
TEMPLATES = (
    "{n} {size} {colour} {shape} {on_bg}",
    "{n} {size} {colour} {shape} {where}",
    "there {be} {n} {colour} {shape} {on_bg}",
    "a picture of {n} {colour} {shape}",
    "{n} {colour} {shape} {where} {on_bg}",
    "{bg} with {n} {size} {colour} {shape} {where}",
    "{n} {size} {shape} in {colour} {on_bg}",
    "an image showing {n} {size} {colour} {shape}",
    "{n} {colour} {shape} {on_bg}",
    "{n} {size} {shape} {where}",
    "a drawing of {n} {size} {colour} {shape} {on_bg}",
    "{n} {colour} {shape} {where}",
)


def _plural(word: str) -> str:
    return word + "es" if word.endswith(("s", "x")) else word + "s"


def caption_scene(scene: Scene, rng: random.Random, k: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """``k`` true captions for ``scene``, each from its own template, synonyms drawn at random."""
    background = BACKGROUNDS[scene.background]
    captions = []
    for template in rng.sample(TEMPLATES, k):
        n = rng.choice(COUNT_WORDS[scene.count])
        shape = rng.choice(SHAPE_WORDS[scene.shape])
        where_key = scene.position if scene.count == 1 else scene.count
        text = template.format(
            n=n,
            size=rng.choice(SIZE_WORDS[scene.size]),
            colour=scene.colour,
            shape=shape if scene.count == 1 else _plural(shape),
            be="is" if scene.count == 1 or n.startswith("a ") else "are",  # "is a pair of"
            where=rng.choice(WHERE_PHRASES[where_key]),
            on_bg=rng.choice(background.on_phrases),
            bg=rng.choice(background.noun_phrases),
        )
        text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a orange" -> "an orange"
        captions.append(text[0].upper() + text[1:] + ".")
    return captions


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.uniform(-amount, amount, 3), 0, 255)


def _vertical_gradient(top: np.ndarray, bottom: np.ndarray, size: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    return np.broadcast_to((1 - t) * top + t * bottom, (size, size, 3)).copy()


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A float ``(size, size, 3)`` array for the named background."""
    plain = {"white": (245, 245, 245), "black": (18, 18, 18), "grey": (128, 128, 128)}
    if name in plain:
        base = _jitter(plain[name], rng, 3) + rng.uniform(-8, 8)  # stays neutral, not tinted
        shade = rng.uniform(-10, 10)  # a faint top-to-bottom lighting gradient
        return _vertical_gradient(base + shade, base - shade, size)
    if name == "striped":
        light, dark = _jitter((238, 238, 238), rng, 6), _jitter((170, 170, 170), rng, 6)
        angle = np.deg2rad(rng.choice([0, 45, 90, 135]) + rng.uniform(-8, 8))
        period = size / rng.uniform(7, 11)
        y, x = np.mgrid[0:size, 0:size]
        phase = ((x * np.cos(angle) + y * np.sin(angle)) / period) % 1.0
        return np.where((phase < 0.5)[..., None], light, dark)
    if name == "grass-green":
        base = _jitter((70, 140, 50), rng, 10)
        blades = np.repeat(rng.normal(0, 1, (size // 8 + 1, size)), 8, axis=0)[:size]
        return base + blades[..., None] * np.array([8.0, 16.0, 6.0])
    if name == "sky-blue":
        top, bottom = _jitter((100, 160, 228), rng, 10), _jitter((190, 218, 245), rng, 8)
        return _vertical_gradient(top, bottom, size)
    if name == "sand":
        base = _jitter((222, 196, 140), rng, 8)
        return base + rng.normal(0, 9, (size, size, 1))
    raise ValueError(f"unknown background {name!r}")


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """Polygon corners of ``shape`` (not the circle) around ``(cx, cy)``, turned by ``angle``."""
    if shape == "square":
        polar = [(r * 0.9 * np.sqrt(2), np.pi / 4 + i * np.pi / 2) for i in range(4)]
    elif shape == "triangle":
        # Pointing up, moved down a quarter of its radius so its bounding box is centred.
        polar = [(r * 1.4, -np.pi / 2 + i * 2 * np.pi / 3) for i in range(3)]
        cy += r * 1.4 / 4
    elif shape == "star":
        polar = [(r * (1.3 if i % 2 == 0 else 0.55), -np.pi / 2 + i * np.pi / 5) for i in range(10)]
    elif shape == "cross":
        w = r * 0.36  # half the width of an arm
        corners = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r)]
        corners += [(-x, -y) for x, y in corners]
        polar = [(np.hypot(x, y), np.arctan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [(cx + d * np.cos(a + angle), cy + d * np.sin(a + angle)) for d, a in polar]


def _layout(scene: Scene, size: int, rng: np.random.Generator) -> tuple[float, list[tuple]]:
    """The object radius and the object centres, in pixels of a ``size`` picture."""
    radius = (0.07 if scene.size == "small" else {1: 0.19, 2: 0.16, 3: 0.11}[scene.count]) * size
    radius *= rng.uniform(0.92, 1.08)

    def jit(amount: float) -> float:
        return rng.uniform(-amount, amount) * size

    if scene.count == 1:
        fx, fy = _SPOTS[scene.position]
        centres = [(fx * size + jit(0.03), fy * size + jit(0.03))]
    else:
        if scene.size == "small":  # a tight row somewhere near the middle
            spacing = 0.2 * size
            mid_x, mid_y = size / 2 + jit(0.12), size / 2 + jit(0.18)
        else:  # a wide row across the picture
            spacing = (0.44 if scene.count == 2 else 0.32) * size
            mid_x, mid_y = size / 2 + jit(0.01), size / 2 + jit(0.08)
        offsets = np.arange(scene.count) - (scene.count - 1) / 2
        centres = [(mid_x + o * spacing, mid_y + jit(0.02)) for o in offsets]
    margin = radius * 1.5  # keep every object fully inside the picture
    centres = [
        (float(np.clip(x, margin, size - margin)), float(np.clip(y, margin, size - margin)))
        for x, y in centres
    ]
    return radius, centres


def draw_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    big = image_size * _SUPERSAMPLE
    canvas = np.clip(_background(scene.background, big, rng), 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    radius, centres = _layout(scene, big, rng)
    for cx, cy in centres:
        fill = tuple(int(v) for v in _jitter(COLOURS[scene.colour], rng, 12))
        r = radius * rng.uniform(0.95, 1.05)
        if scene.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            angle = np.deg2rad(rng.uniform(-12, 12))
            draw.polygon(_shape_points(scene.shape, cx, cy, r, angle), fill=fill)
    pixels = np.asarray(image.reduce(_SUPERSAMPLE), dtype=float)
    pixels += rng.normal(0, _NOISE_STD, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


def image_name(index: int) -> str:
    return f"sample_{index:05d}.jpg"


def _rngs(seed: int, index: int) -> tuple[random.Random, np.random.Generator]:
    """Private generators for one picture: scene and captions, then pixels."""
    text_rng = random.Random(f"storyteller-sample-v{SAMPLE_VERSION}:{seed}:{index}")
    pixel_rng = np.random.default_rng([SAMPLE_VERSION, seed, index])
    return text_rng, pixel_rng


def make_example(
    seed: int, index: int, image_size: int = 224
) -> tuple[Scene, list[str], Image.Image]:
    """Example ``index``: it depends on ``(seed, index)`` alone, so a smaller sample is a
    prefix of a larger one."""
    text_rng, pixel_rng = _rngs(seed, index)
    scene = random_scene(text_rng)
    return scene, caption_scene(scene, text_rng), draw_scene(scene, image_size, pixel_rng)


def scene_for(seed: int, index: int) -> Scene:
    """The scene of example ``index``, nothing drawn."""
    return random_scene(_rngs(seed, index)[0])


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise StorytellerError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _manifest(num_images: int, seed: int, image_size: int) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "version": SAMPLE_VERSION,
        "num_images": num_images,
        "seed": seed,
        "image_size": image_size,
        "captions_per_image": CAPTIONS_PER_IMAGE,
    }


def _is_complete(out: Path, manifest: dict) -> bool:
    try:
        found = json.loads((out / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    images = out / IMAGES_DIRNAME
    return (
        found == manifest
        and (out / CAPTIONS_FILENAME).is_file()
        and all((images / image_name(i)).is_file() for i in range(manifest["num_images"]))
    )


def _written_as(name: str) -> str:
    """The file ``name`` is, or is the unfinished write of (``atomic_path``'s
    ``.<file>.<random>.tmp``, or a ``<file>.tmp``), so an interrupted sample is still ours."""
    from storyteller.runtime import ATOMIC_TEMP_NAME  # imports torch: only when writing

    if ATOMIC_TEMP_NAME.fullmatch(name):
        return name[1:].rsplit(".", 2)[0]  # .captions.txt.x1y2z3w4.tmp -> captions.txt
    return name.removesuffix(".tmp")


def _is_ours(out: Path) -> bool:
    """Whether all of ``out`` looks like (part of) a sample, so it may be replaced without
    asking: a real Flickr folder has other image names and is never touched."""
    own_files = {CAPTIONS_FILENAME, MANIFEST_FILENAME}
    for entry in out.iterdir():
        if entry.name == IMAGES_DIRNAME and entry.is_dir():
            if not all(
                _IMAGE_NAME_RE.fullmatch(_written_as(p.name)) and p.is_file()
                for p in entry.iterdir()
            ):
                return False
        elif not (_written_as(entry.name) in own_files and entry.is_file()):
            return False
    return True


def _remove_dataset_files(out: Path) -> None:
    for name in (MANIFEST_FILENAME, CAPTIONS_FILENAME):  # the manifest first: "incomplete"
        left = [
            out / name,
            *(p for p in out.iterdir() if p.name != name and _written_as(p.name) == name),
        ]
        for path in left:
            if path.is_file() or path.is_symlink():
                path.unlink()
    images = out / IMAGES_DIRNAME
    if images.is_dir() and not images.is_symlink():
        shutil.rmtree(images)
    elif images.exists() or images.is_symlink():
        images.unlink()


def generate_sample_dataset(
    out_dir: str | Path,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    image_size: int = 224,
    overwrite: bool = False,
) -> Path:
    """Write the sample into ``out_dir`` and return it; a complete one with the same
    parameters (``sample.json``) is kept as it is, an unfinished or different sample redrawn.
    Other content is an error unless ``overwrite``, which redraws anyway but replaces only
    ``Images/``, ``captions.txt`` and ``sample.json``."""
    num_images = _check_int("num_images", num_images, 1)
    image_size = _check_int("image_size", image_size, 64)
    seed = _check_int("seed", seed, 0)
    out = Path(out_dir).expanduser()
    manifest = _manifest(num_images, seed, image_size)

    if out.exists() and not out.is_dir():
        raise StorytellerError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir():
        if not overwrite and _is_complete(out, manifest):
            return out
        if not overwrite and not _is_ours(out):
            raise StorytellerError(
                f"{out} already holds files that are not a storyteller sample dataset; "
                "choose an empty or new folder, or pass overwrite=True (--overwrite) to replace "
                "its Images/ and captions.txt"
            )
        _remove_dataset_files(out)

    from storyteller.runtime import atomic_path  # imports torch: only when there is drawing

    images = out / IMAGES_DIRNAME
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    progress_bar = progress(
        range(num_images), desc="drawing sample", unit="img", disable=num_images < 50
    )
    for index in progress_bar:
        _, captions, picture = make_example(seed, index, image_size)
        name = image_name(index)
        with atomic_path(images / name) as tmp:
            picture.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        rows.extend((name, caption) for caption in captions)

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")  # quotes captions that contain commas
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    with atomic_path(out / CAPTIONS_FILENAME) as tmp:
        tmp.write_text(table.getvalue(), encoding="utf-8", newline="")
    with atomic_path(out / MANIFEST_FILENAME) as tmp:  # last: marks the sample complete
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8", newline="")
    return out


def default_sample_dir() -> Path:
    """``$STORYTELLER_SAMPLE_DIR``, else ``$XDG_CACHE_HOME/storyteller/sample-v1``."""
    explicit = os.environ.get("STORYTELLER_SAMPLE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "storyteller" / f"sample-v{SAMPLE_VERSION}"


def ensure_sample_dataset(num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0) -> Path:
    """The sample in :func:`default_sample_dir`, drawn unless it is already there."""
    return generate_sample_dataset(default_sample_dir(), num_images=num_images, seed=seed)

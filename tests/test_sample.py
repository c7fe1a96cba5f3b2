"""Tests for the embedded sample dataset (``storyteller.data.sample``)."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyteller.data.sample import (
    BACKGROUNDS,
    CAPTIONS_PER_IMAGE,
    COLOURS,
    DEFAULT_NUM_IMAGES,
    SHAPE_WORDS,
    SIZE_WORDS,
    Scene,
    caption_scene,
    default_sample_dir,
    draw_scene,
    ensure_sample_dataset,
    generate_sample_dataset,
    make_example,
    random_scene,
    scene_for,
)
from storyteller.data.text import tokenize
from storyteller.errors import StorytellerError

N = 20
SIZE = 96  # small pictures keep the tests fast


def read_captions(out: Path) -> dict[str, list[str]]:
    with open(out / "captions.txt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["image", "caption"]
        captions: dict[str, list[str]] = defaultdict(list)
        for row in reader:
            captions[row["image"]].append(row["caption"])
    return dict(captions)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("sample"), N, seed=3, image_size=SIZE)


# --- layout -------------------------------------------------------------------------------


def test_layout(dataset: Path):
    images = sorted((dataset / "Images").glob("*.jpg"))
    assert [p.name for p in images] == [f"sample_{i:05d}.jpg" for i in range(N)]
    for path in images[:3]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)

    text = (dataset / "captions.txt").read_text(encoding="utf-8")
    assert text.startswith("image,caption\n")
    assert len(text.splitlines()) == 1 + CAPTIONS_PER_IMAGE * N
    captions = read_captions(dataset)
    assert set(captions) == {p.name for p in images}
    assert all(len(caps) == CAPTIONS_PER_IMAGE for caps in captions.values())

    manifest = json.loads((dataset / "sample.json").read_text())
    assert manifest["num_images"] == N and manifest["seed"] == 3
    assert manifest["image_size"] == SIZE


def test_default_num_images_is_sensible():
    assert 100 <= DEFAULT_NUM_IMAGES <= 2000


# --- determinism --------------------------------------------------------------------------


def test_same_seed_same_bytes_and_pixels(tmp_path: Path, dataset: Path):
    again = generate_sample_dataset(tmp_path / "again", N, seed=3, image_size=SIZE)
    assert (again / "captions.txt").read_bytes() == (dataset / "captions.txt").read_bytes()
    for i in range(N):
        name = f"Images/sample_{i:05d}.jpg"
        assert np.array_equal(pixels(again / name), pixels(dataset / name))


def test_different_seed_differs(tmp_path: Path, dataset: Path):
    other = generate_sample_dataset(tmp_path / "other", N, seed=4, image_size=SIZE)
    assert (other / "captions.txt").read_bytes() != (dataset / "captions.txt").read_bytes()
    name = "Images/sample_00000.jpg"
    assert not np.array_equal(pixels(other / name), pixels(dataset / name))


# --- captions tell the truth --------------------------------------------------------------


def scene_words(scene: Scene) -> tuple[set[str], set[str]]:
    """(shape words for this scene, shape words of every other shape), singular and plural."""

    def forms(shape: str) -> set[str]:
        words = set(SHAPE_WORDS[shape])
        return words | {w + "es" if w.endswith(("s", "x")) else w + "s" for w in words}

    others = set().union(*(forms(s) for s in SHAPE_WORDS if s != scene.shape))
    return forms(scene.shape), others


def check_captions(scene: Scene, captions: list[str]) -> None:
    count_words = {1: {"a", "an", "one", "single"}, 2: {"two", "pair"}, 3: {"three"}}
    other_counts = {"one", "single", "two", "pair", "three"} - count_words[scene.count]
    other_sizes = set(SIZE_WORDS["small" if scene.size == "large" else "large"])
    other_colours = set(COLOURS) - {scene.colour}
    other_backgrounds = set().union(
        *(bg.keywords for name, bg in BACKGROUNDS.items() if name != scene.background)
    )
    shape_words, other_shapes = scene_words(scene)

    tokenized = [set(tokenize(c)) for c in captions]
    assert len(set(captions)) == len(captions), "the captions of one image must differ"
    assert sum(scene.colour in toks for toks in tokenized) >= len(captions) - 1
    for caption in captions:  # grammar: "there is one ...", "there are two ..."
        if caption.startswith("There is "):
            assert scene.count == 1 or caption.startswith("There is a pair of "), caption
        if caption.startswith("There are "):
            assert scene.count > 1, caption
    for caption, toks in zip(captions, tokenized, strict=True):
        assert toks & shape_words, caption
        assert toks & count_words[scene.count], caption
        for wrong in (other_counts, other_sizes, other_colours, other_backgrounds, other_shapes):
            assert not toks & wrong, (caption, scene)


def test_captions_match_the_scene(dataset: Path):
    captions = read_captions(dataset)
    for i in range(N):
        check_captions(scene_for(3, i), captions[f"sample_{i:05d}.jpg"])


def test_captions_match_many_random_scenes():
    rng = random.Random(0)
    for _ in range(500):
        scene = random_scene(rng)
        check_captions(scene, caption_scene(scene, rng))


def test_position_words_for_single_objects():
    rng = random.Random(1)
    expected = {
        "left": {"left"},
        "right": {"right"},
        "top": {"top"},
        "bottom": {"bottom"},
        "center": {"middle", "center", "centre"},
    }
    for position, words in expected.items():
        scene = Scene("white", "circle", "red", "large", 1, position)
        captions = caption_scene(scene, rng, k=12)  # every template once
        assert any(set(tokenize(c)) & words for c in captions)
        others = set().union(*(w for p, w in expected.items() if p != position))
        assert not any(set(tokenize(c)) & others for c in captions)


def test_colour_never_matches_background():
    rng = random.Random(2)
    for _ in range(2000):
        scene = random_scene(rng)
        assert scene.colour not in BACKGROUNDS[scene.background].excluded_colours
        assert scene.colour not in scene.background  # no green on grass-green, blue on sky-blue
        assert (scene.count == 1) == (scene.position != "row")


def test_caption_variety(dataset: Path):
    captions = read_captions(dataset)
    vocabulary = {tok for caps in captions.values() for c in caps for tok in tokenize(c)}
    assert len(vocabulary) > 30
    # Articles are fixed up: never "a orange".
    assert not any(" a orange" in c.lower() for caps in captions.values() for c in caps)


def test_scene_attributes_are_all_used():
    scenes = [scene_for(0, i) for i in range(DEFAULT_NUM_IMAGES)]
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.shape for s in scenes} == set(SHAPE_WORDS)
    assert {s.size for s in scenes} == {"small", "large"}
    assert {s.count for s in scenes} == {1, 2, 3}


# --- the pictures show the scene ----------------------------------------------------------


def object_mask(image: Image.Image) -> np.ndarray:
    """Pixels far from the (plain) background colour, taken from the picture's corner."""
    arr = np.asarray(image, dtype=float)
    corner = np.median(arr[:8, :8].reshape(-1, 3), axis=0)
    return np.abs(arr - corner).sum(axis=2) > 90


def draw(**changes) -> Image.Image:
    fields = dict(background="white", shape="circle", colour="red", size="large", count=1)
    fields |= {"position": "center"} | changes
    return draw_scene(Scene(**fields), 128, np.random.default_rng(0))


def test_object_colour_is_drawn():
    for colour, rgb in COLOURS.items():
        image = draw(colour=colour)
        mask = object_mask(image)
        mean = np.asarray(image, dtype=float)[mask].mean(axis=0)
        assert np.abs(mean - rgb).max() < 30, colour


def test_size_and_count_change_the_drawn_area():
    small, large = object_mask(draw(size="small")).sum(), object_mask(draw(size="large")).sum()
    assert large > 4 * small > 0
    one = object_mask(draw(size="small")).sum()
    three = object_mask(draw(size="small", count=3, position="row")).sum()
    assert 2.3 * one < three < 3.7 * one


def test_position_is_drawn():
    def centre(position: str) -> np.ndarray:
        ys, xs = np.nonzero(object_mask(draw(size="small", position=position)))
        return np.array([xs.mean(), ys.mean()]) / 128

    assert centre("left")[0] < 0.4 < 0.6 < centre("right")[0]
    assert centre("top")[1] < 0.4 < 0.6 < centre("bottom")[1]
    assert np.abs(centre("center") - 0.5).max() < 0.1


def test_backgrounds_differ():
    means = {
        name: np.asarray(draw(background=name, size="small"), dtype=float).mean(axis=(0, 1))
        for name in BACKGROUNDS
    }
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if {a, b} != {"striped", "grey"}:  # similar mean; the stripes tell them apart
                assert np.abs(means[a] - means[b]).max() > 20, (a, b)
    striped = np.asarray(draw(background="striped"), dtype=float)
    assert striped[:30, :30].std() > 15 > np.asarray(draw(background="grey"))[:30, :30].std()


def test_every_colour_stands_out_on_every_allowed_background():
    for name, background in BACKGROUNDS.items():
        for colour in set(COLOURS) - background.excluded_colours:
            arr = np.asarray(draw(background=name, colour=colour, shape="star"), dtype=float)
            inside = arr[59:69, 59:69].reshape(-1, 3).mean(axis=0)  # the middle of the star
            outside = arr[:16, :16].reshape(-1, 3).mean(axis=0)
            assert np.abs(inside - outside).sum() > 100, (name, colour)


def test_dataset_pictures_show_their_scene():
    plain = {"white", "black", "grey"}
    checked = 0
    for i in range(80):
        scene, _, image = make_example(0, i, image_size=128)
        if scene.background in plain:
            mask = object_mask(image)
            typical = np.median(np.asarray(image, dtype=float)[mask], axis=0)  # edges blur
            assert np.abs(typical - COLOURS[scene.colour]).max() < 30, scene
            checked += 1
    assert checked >= 15


def test_dataset_pictures_are_all_different(dataset: Path):
    arrays = [pixels(dataset / f"Images/sample_{i:05d}.jpg") for i in range(N)]
    assert len({a.tobytes() for a in arrays}) == N


# --- caching, resuming, refusing ----------------------------------------------------------


def test_second_call_returns_without_rewriting(tmp_path: Path):
    out = generate_sample_dataset(tmp_path / "s", N, seed=1, image_size=64)
    before = mtimes(out)
    assert generate_sample_dataset(out, N, seed=1, image_size=64) == out
    assert mtimes(out) == before


def test_missing_manifest_regenerates(tmp_path: Path):
    out = generate_sample_dataset(tmp_path / "s", N, seed=1, image_size=64)
    reference = (out / "captions.txt").read_bytes()
    # Simulate an interrupted run: no manifest, no captions, a half-written image.
    (out / "sample.json").unlink()
    (out / "captions.txt").unlink()
    (out / "Images" / "sample_00007.jpg").unlink()
    (out / "Images" / "sample_00008.jpg.tmp").write_bytes(b"half")
    generate_sample_dataset(out, N, seed=1, image_size=64)
    assert (out / "sample.json").is_file()
    assert (out / "captions.txt").read_bytes() == reference
    assert len(list((out / "Images").iterdir())) == N


def test_interrupted_atomic_writes_are_ours_and_cleaned(tmp_path: Path):
    """The sample is written with ``runtime.atomic_path``: the temporary
    files a kill leaves (``.<file>.<random>.tmp``) still mark the folder as a sample's, and
    the next call removes them; a temporary file of anything else is not ours."""
    out = generate_sample_dataset(tmp_path / "s", N, seed=1, image_size=64)
    reference = (out / "captions.txt").read_bytes()
    (out / "sample.json").unlink()
    (out / ".captions.txt.k3x9q2mz.tmp").write_text("image,caption\n")
    (out / "Images" / ".sample_00003.jpg.a1b2c3d4.tmp").write_bytes(b"half")
    generate_sample_dataset(out, N, seed=1, image_size=64)
    assert sorted(p.name for p in out.iterdir()) == ["Images", "captions.txt", "sample.json"]
    assert (out / "captions.txt").read_bytes() == reference
    assert len(list((out / "Images").iterdir())) == N

    (out / "sample.json").unlink()
    (out / ".notes.txt.k3x9q2mz.tmp").write_text("someone else's")
    with pytest.raises(StorytellerError, match="overwrite"):
        generate_sample_dataset(out, N, seed=1, image_size=64)


def test_other_parameters_regenerate(tmp_path: Path):
    out = generate_sample_dataset(tmp_path / "s", N, seed=1, image_size=64)
    generate_sample_dataset(out, 10, seed=2, image_size=64)
    assert len(list((out / "Images").iterdir())) == 10
    assert len(read_captions(out)) == 10
    assert json.loads((out / "sample.json").read_text())["seed"] == 2


def test_empty_existing_dir_is_fine(tmp_path: Path):
    generate_sample_dataset(tmp_path, 5, image_size=64)
    assert len(read_captions(tmp_path)) == 5


def test_foreign_dir_is_refused_unless_overwrite(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "1000268201_693b08cb0e.jpg").write_bytes(b"a real photo")
    with pytest.raises(StorytellerError, match="overwrite"):
        generate_sample_dataset(tmp_path, 5, image_size=64)
    assert (tmp_path / "Images" / "1000268201_693b08cb0e.jpg").exists()

    generate_sample_dataset(tmp_path, 5, image_size=64, overwrite=True)
    assert len(read_captions(tmp_path)) == 5
    assert sorted(p.name for p in (tmp_path / "Images").iterdir())[0] == "sample_00000.jpg"
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the dataset's own paths go


def test_out_dir_that_is_a_file_is_refused(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorytellerError):
        generate_sample_dataset(tmp_path / "file", 5, image_size=64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_images": 0},
        {"num_images": -3},
        {"num_images": 2.5},
        {"image_size": 63},
        {"image_size": 0},
        {"seed": -1},
        {"seed": "0"},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict):
    with pytest.raises(StorytellerError):
        generate_sample_dataset(tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()


# --- where the default sample lives -------------------------------------------------------


def test_default_sample_dir(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("STORYTELLER_SAMPLE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_sample_dir() == tmp_path / "cache" / "storyteller" / "sample-v1"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_sample_dir() == Path.home() / ".cache" / "storyteller" / "sample-v1"

    monkeypatch.setenv("STORYTELLER_SAMPLE_DIR", str(tmp_path / "here"))
    assert default_sample_dir() == tmp_path / "here"


def test_ensure_sample_dataset(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("STORYTELLER_SAMPLE_DIR", str(tmp_path / "sample"))
    out = ensure_sample_dataset(num_images=5)
    assert out == tmp_path / "sample"
    assert len(read_captions(out)) == 5
    before = mtimes(out)
    assert ensure_sample_dataset(num_images=5) == out
    assert mtimes(out) == before


def test_drawing_logs_a_few_plain_lines_without_a_terminal(tmp_path: Path, capsys):
    """Redirected, drawing 60 images is ten lines of progress, not bar redraws."""
    capsys.readouterr()
    generate_sample_dataset(tmp_path, 60, seed=1, image_size=SIZE)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("drawing sample")]
    assert "\r" not in err and len(lines) == 10
    assert lines[-1].startswith("drawing sample: 100% 60/60")

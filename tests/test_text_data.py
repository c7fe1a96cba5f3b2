import pytest

from storyteller.data import SkipReport, load_dataset, read_caption_file, split_by_image
from storyteller.errors import StorytellerError
from storyteller.text import normalize_caption, tokenize


def test_tokenize_lowercases_and_strips_punctuation():
    assert tokenize("A dog, running -- through the GRASS!") == [
        "a",
        "dog",
        "running",
        "through",
        "the",
        "grass",
    ]
    assert normalize_caption("  Café   au lait. ") == "cafe au lait"
    assert tokenize("...") == []


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_kaggle_csv_with_quoted_commas(tmp_path):
    f = _write(
        tmp_path / "captions.txt", 'image,caption\na.jpg,"A dog, brown, runs ."\nb.jpg,A cat sits\n'
    )
    assert read_caption_file(f) == [("a.jpg", "A dog, brown, runs ."), ("b.jpg", "A cat sits")]


def test_reads_flickr8k_token_file(tmp_path):
    f = _write(tmp_path / "Flickr8k.token.txt", "a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog .\n")
    assert read_caption_file(f) == [("a.jpg", "A dog runs ."), ("a.jpg", "A brown dog .")]


def test_reads_flickr30k_results_csv(tmp_path):
    f = _write(
        tmp_path / "results.csv",
        "image_name| comment_number| comment\n1.jpg| 0| Two men | one hat .\n1.jpg| 1| A man .\n",
    )
    assert read_caption_file(f) == [("1.jpg", "Two men | one hat ."), ("1.jpg", "A man .")]


def test_bad_rows_are_skipped_counted_and_warned(tmp_path):
    images = tmp_path / "Images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(b"x")
    _write(
        tmp_path / "captions.txt",
        "image,caption\na.jpg,A dog runs\nmalformed-row-without-caption\nb.jpg,   \nb.jpg,?!\n"
        "missing.jpg,A cat\nb.jpg,A bird flies\n",
    )
    with pytest.warns(UserWarning, match="skipped") as record:
        dataset = load_dataset(tmp_path)
    assert dataset.captions == {"a.jpg": ["A dog runs"], "b.jpg": ["A bird flies"]}
    assert dataset.skipped.counts == {
        "malformed rows": 1,
        "empty captions": 2,
        "captions of missing images": 1,
    }
    assert "missing.jpg" in str(record[0].message)


def test_missing_dataset_and_wrong_header_give_clear_errors(tmp_path):
    with pytest.raises(StorytellerError, match="not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(StorytellerError, match="no caption file"):
        load_dataset(tmp_path)
    (tmp_path / "Images").mkdir()
    _write(tmp_path / "captions.txt", "file,text\na.jpg,hello\n")
    with pytest.raises(StorytellerError, match="header"):
        load_dataset(tmp_path)


def test_kaggle_flickr30k_nested_image_folder(tmp_path):
    nested = tmp_path / "flickr30k_images" / "flickr30k_images"
    nested.mkdir(parents=True)
    (nested / "1.jpg").write_bytes(b"x")
    _write(tmp_path / "captions.txt", "image,caption\n1.jpg,A man .\n")
    assert load_dataset(tmp_path).image_dir == nested


def test_split_is_by_image_seeded_and_disjoint():
    images = [f"{i}.jpg" for i in range(103)]
    split = split_by_image(images, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (83, 10, 10)
    assert not (set(split.train) & set(split.test)) and not (set(split.val) & set(split.test))
    assert set(split.train) | set(split.val) | set(split.test) == set(images)
    assert split_by_image(list(reversed(images)), seed=3) == split  # order of input irrelevant
    assert split_by_image(images, seed=4) != split


def test_split_rejects_bad_fractions():
    with pytest.raises(StorytellerError):
        split_by_image(["a", "b", "c"], fractions=(0.5, 0.5, 0.5))
    with pytest.raises(StorytellerError):
        split_by_image(["a", "b"])


def test_skip_report_summary():
    report = SkipReport()
    report.add("empty captions", "x.jpg")
    report.add("empty captions", "y.jpg")
    assert report.total == 2 and "2 empty captions" in report.summary()


def test_real_flickr_sample_loads(tmp_path):
    from conftest import FLICKR8K_1K

    if not FLICKR8K_1K.is_dir():
        pytest.skip("../shared/data/flickr8k-1k not present")
    dataset = load_dataset(FLICKR8K_1K)
    assert len(dataset) == 1000 and dataset.num_captions == 5000

import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyteller.data.captions import (
    MAX_CAPTION_FILE_BYTES,
    MAX_ROW_CHARS,
    SkipReport,
    load_dataset,
    read_caption_file,
    split_by_image,
)
from storyteller.data.text import tokenize
from storyteller.errors import StorytellerError


def test_tokenize_lowercases_and_strips_punctuation():
    assert tokenize("A dog, running -- through the GRASS!") == [
        "a",
        "dog",
        "running",
        "through",
        "the",
        "grass",
    ]
    assert tokenize("  Café   au lait. ") == ["cafe", "au", "lait"]
    assert tokenize("...") == []


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_kaggle_csv_with_quoted_commas(tmp_path):
    f = _write(
        tmp_path / "captions.txt", 'image,caption\na.jpg,"A dog, brown, runs ."\nb.jpg,A cat sits\n'
    )
    assert read_caption_file(f) == [("a.jpg", "A dog, brown, runs ."), ("b.jpg", "A cat sits")]


def test_unquoted_commas_stay_in_a_two_column_caption(tmp_path):
    f = _write(tmp_path / "captions.txt", "image,caption\na.jpg,A dog , brown , runs .\n")
    assert read_caption_file(f) == [("a.jpg", "A dog , brown , runs .")]


def test_extra_csv_columns_are_ignored_not_glued_into_captions(tmp_path):
    """``image,caption,source`` once gave captions ending in ",flickr-user-42"."""
    f = _write(
        tmp_path / "captions.txt",
        "image,caption,source\nx.jpg,A dog runs,flickr-user-42\n"
        "y.jpg,A cat , sits,flickr-user-7\n",  # an unquoted comma in a middle column
    )
    report = SkipReport()
    with pytest.warns(UserWarning, match="ignoring 'source'"):
        assert read_caption_file(f, report) == [("x.jpg", "A dog runs")]
    assert report.counts == {"malformed rows": 1}
    _write(f, "source,IMAGE,caption\nflickr,x.jpg,A dog , runs\n")  # caption last: glued
    with pytest.warns(UserWarning, match="ignoring 'source'"):
        assert read_caption_file(f) == [("x.jpg", "A dog , runs")]
    _write(f, "caption,image\nA dog , runs,x.jpg\n")  # caption first: cannot be told apart
    assert read_caption_file(f, report := SkipReport()) == []
    assert report.counts == {"malformed rows": 1}


def test_a_junk_first_line_names_the_file_not_captions_txt(tmp_path):
    f = _write(tmp_path / "Flickr8k.token.txt", "junk\na.jpg#0\tA dog runs .\n")
    with pytest.raises(
        StorytellerError, match=r"Flickr8k\.token\.txt is not a caption file"
    ) as err:
        read_caption_file(f)
    assert "captions.txt" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("encoding", "named"),
    [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32"), ("utf-16-le", "UTF-16")],
)
def test_a_caption_file_not_in_utf8_names_its_encoding(tmp_path, encoding, named):
    """A UTF-16 file was refused with a 400-character dump of NUL characters."""
    f = tmp_path / "captions.txt"
    f.write_bytes("image,caption\na.jpg,A dog runs\n".encode(encoding))
    with pytest.raises(StorytellerError, match=f"is {named}.* save it as UTF-8") as err:
        read_caption_file(f)
    assert "\x00" not in str(err.value) and len(str(err.value)) < 200


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    f = tmp_path / "captions.txt"
    f.write_bytes("image,caption\na.jpg,A dog runs\n".encode("utf-8-sig"))
    assert read_caption_file(f) == [("a.jpg", "A dog runs")]


def test_a_caption_file_over_the_bound_is_refused_unread(tmp_path):
    """A 4 GB sparse captions.txt was read whole (killed for memory at 3 GB)."""
    f = tmp_path / "captions.txt"
    with f.open("wb") as out:
        out.write(b"image,caption\n")
        out.truncate(4 * 2**30)  # sparse: no disk used
    bound = f"{MAX_CAPTION_FILE_BYTES // 2**20} MB"
    with pytest.raises(StorytellerError, match=f"4,096 MB, over the {bound}"):
        read_caption_file(f)


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


def _kaggle_file(tmp_path, n_images=60, per_image=5):
    """A well-formed ``captions.txt`` of ``n_images * per_image`` distinct rows, as lines."""
    rows = [
        f"{i:04d}.jpg,A dog number {i} does thing {k} ."
        for i in range(n_images)
        for k in range(per_image)
    ]
    return ["image,caption", *rows]


def _read(tmp_path, lines: list[str] | bytes):
    f = tmp_path / "captions.txt"
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    f.write_bytes(data)
    report = SkipReport()
    return read_caption_file(f, report), report


def test_a_stray_quote_skips_only_its_own_row(tmp_path):
    """An unterminated quote at row 11 of 301 once swallowed the rest of the file into one
    field (11 captions of 3 images, no warning): now only that row is skipped, and counted."""
    lines = _kaggle_file(tmp_path)
    lines[11] = lines[11].replace(",", ',"', 1)
    rows, report = _read(tmp_path, lines)
    assert len(rows) == 299 and len({image for image, _ in rows}) == 60
    assert report.counts == {"rows with an unterminated quote": 1}
    assert "line 12" in report.summary()


def test_a_quoted_field_spanning_lines_is_skipped_whole(tmp_path):
    lines = _kaggle_file(tmp_path)
    lines[20:21] = ['0003.jpg,"A dog that', 'spans two lines ."']
    rows, report = _read(tmp_path, lines)
    assert len(rows) == 299
    assert report.counts == {"quoted fields spanning lines": 1}
    assert "lines 21-22" in report.summary()


def test_a_huge_caption_is_skipped_not_fatal(tmp_path):
    """A 1 MB row once aborted the load (``field larger than field limit (131072)``)."""
    lines = _kaggle_file(tmp_path)
    lines[5] = "0000.jpg," + "a" * 1_000_000
    lines[6] = "0001.jpg," + "b " * (MAX_ROW_CHARS // 2 + 1)  # just over, in characters
    rows, report = _read(tmp_path, lines)
    assert len(rows) == 298
    assert report.counts == {f"rows over {MAX_ROW_CHARS} characters": 2}


def test_invalid_utf8_rows_are_skipped_not_replaced(tmp_path):
    data = ("\n".join(_kaggle_file(tmp_path)) + "\n").encode()
    data = data.replace(b"dog number 7 does thing 2", b"d\xffg number 7 does thing 2")
    rows, report = _read(tmp_path, data)
    assert len(rows) == 299 and not any("\ufffd" in caption for _, caption in rows)
    assert report.counts == {"rows that are not UTF-8": 1}


def test_duplicate_rows_are_counted_once(tmp_path):
    lines = _kaggle_file(tmp_path)
    lines += [lines[3], lines[3] + "  ", lines[9]]  # trailing spaces: still the same caption
    rows, report = _read(tmp_path, lines)
    assert len(rows) == 300 and len(set(rows)) == 300
    assert report.counts == {"duplicate rows": 3}


def test_every_line_is_read_or_counted(tmp_path):
    """All kinds of damage in one file, with Windows line ends and a byte-order mark: the
    rows kept plus the lines skipped add up to the file's non-empty lines."""
    lines = _kaggle_file(tmp_path, n_images=10)
    lines[2] = lines[2].replace(",", ',"', 1)  # unterminated quote
    lines[4] = "not-an-image-row"
    lines[6] = "0001.jpg,   "
    lines.insert(8, "")
    lines.append(lines[1])
    data = b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode()
    data += b"0002.jpg,caf\xe9 au lait\r\n"  # Latin-1, not UTF-8
    rows, report = _read(tmp_path, data)
    non_empty = sum(1 for line in lines if line.strip()) + 1
    assert 1 + len(rows) + report.total == non_empty  # header + kept + skipped
    assert report.counts == {
        "rows with an unterminated quote": 1,
        "malformed rows": 1,
        "empty captions": 1,
        "duplicate rows": 1,
        "rows that are not UTF-8": 1,
    }
    assert all(not caption.endswith("\r") for _, caption in rows)


#: Pieces of caption files, good and bad, that random lines are made of.
_PIECES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"image,caption",
            b"image,caption,source",
            b"a.jpg,A dog runs",
            b'a.jpg,"A dog, runs"',
            b'b.jpg,"open',
            b"a.jpg#0\tA dog",
            b"1.jpg| 0| A man",
            b"\xef\xbb\xbf",
            b"\xff\xfe",
            b'"',
            b",",
            b"\t",
            b"|",
            b"\r",
            b"\0",
            b"\xe9",
        ]
    ),
)
_FILES = st.lists(st.lists(_PIECES, max_size=4).map(b"".join), max_size=12).map(b"\n".join)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=_FILES)
def test_any_bytes_give_rows_and_counted_skips_or_one_error_line(tmp_path, data):
    """Whatever a caption file holds: every non-empty line is read, counted or (the first
    line only) a header, or the file is refused in one line; never another exception."""
    f = tmp_path / "captions.txt"
    f.write_bytes(data)
    report = SkipReport()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = read_caption_file(f, report)
    except StorytellerError as exc:
        assert "\n" not in str(exc) and "please report" not in str(exc)
        return
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    non_empty = sum(1 for line in data.split(b"\n") if line.strip())
    assert non_empty - 1 <= len(rows) + report.lines <= non_empty


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


@pytest.mark.parametrize("inside", ["captions.txt", "Images"])
def test_data_pointing_inside_the_dataset_suggests_the_folder(inside, tmp_path):
    """``--data .../captions.txt`` said "folder not found"; ``.../Images`` did not name the parent."""
    (tmp_path / "Images").mkdir()
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,a dog runs\n")
    with pytest.raises(StorytellerError, match=f"try {tmp_path}$"):
        load_dataset(tmp_path / inside)

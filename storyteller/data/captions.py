"""Reading caption datasets (the folder passed as ``--data``) and splitting them by image.

Layouts: Kaggle's ``Images/`` + ``captions.txt`` (CSV with columns ``image`` and ``caption``
in any order; a comma in the last column may go unquoted), ``Flickr8k.token.txt``
(``image.jpg#N<TAB>caption``) and Flickr30k's ``results.csv`` (``image| n| caption``).
Files are read line by line, so damage stays on its line (a stray quote cannot swallow the
rest of the file, as in a CSV reader); every line is a kept row or a skip counted by reason
in a :class:`SkipReport`. A file over :data:`MAX_CAPTION_FILE_BYTES`, not UTF-8 or in no known
layout is refused in one line.
"""

from __future__ import annotations

import codecs
import csv
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StorytellerError
from .text import tokenize

CAPTION_FILES = ("captions.txt", "results.csv", "Flickr8k.token.txt")
IMAGE_DIRS = ("Images", "images", "flickr30k_images", "Flicker8k_Dataset", "Flickr8k_Dataset")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class SkipReport:
    """Skipped rows/images counted by reason, with a few examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lines: int = 0  # physical lines of a file these skips took (a row may take several)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        self.lines += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(example[:80])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = [
            f"{n} {reason} (e.g. {', '.join(repr(e) for e in self.examples[reason])})"
            for reason, n in self.counts.most_common()
        ]
        return "skipped " + "; ".join(parts)

    def warn(self, what: str) -> None:
        if self.total:
            warnings.warn(f"{what}: {self.summary()}", stacklevel=2)


@dataclass
class CaptionDataset:
    """Captions grouped by image: ``captions[image_name] = [caption, ...]`` in file order."""

    image_dir: Path
    captions: dict[str, list[str]]
    source: Path
    skipped: SkipReport = field(default_factory=SkipReport)

    @property
    def images(self) -> list[str]:
        return list(self.captions)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions.values())

    def subset(self, images: list[str]) -> CaptionDataset:
        return CaptionDataset(
            self.image_dir, {name: self.captions[name] for name in images}, self.source
        )


#: The longest row kept, in characters: Flickr captions are under 200; a longer row is
#: skipped, not tokenised (a 1 MB "caption" made the CSV reader give up on the whole file).
MAX_ROW_CHARS = 2000
#: The largest caption file read: Flickr30k's takes 16 MB, COCO's about 40 MB. Reading holds
#: about 8 times the file's size in memory (0.5 GB here).
MAX_CAPTION_FILE_BYTES = 64 * 2**20
#: Byte-order marks of encodings that are not UTF-8, UTF-32's first (it starts like UTF-16's).
_OTHER_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; refused if too large (checked before reading) or not UTF-8: a
    UTF-16/32 byte-order mark, or a NUL in the first line (UTF-16 without a mark)."""
    size = path.stat().st_size
    if size > MAX_CAPTION_FILE_BYTES:
        raise StorytellerError(
            f"{path} is {size / 2**20:,.0f} MB, over the {MAX_CAPTION_FILE_BYTES // 2**20} MB "
            "a caption file may have: is it the right file?"
        )
    data = path.read_bytes()
    found = next((name for bom, name in _OTHER_BOMS if data.startswith(bom)), None)
    first_end = data.find(b"\n")
    if found is None and b"\0" in data[: first_end if first_end >= 0 else len(data)]:
        found = "UTF-16 (or other non-UTF-8)"
    if found:
        raise StorytellerError(f"{path} is {found} text: save it as UTF-8 and try again")
    return data


@dataclass
class _Line:
    number: int  # 1-based
    text: str


def _lines(data: bytes, report: SkipReport) -> tuple[list[_Line], int]:
    """The non-empty lines, each decoded on its own, and how many there were; a line not
    UTF-8 (never decoded with replacement characters) or too long is counted and skipped."""
    lines, written = [], 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        written += 1
        if len(raw) > 4 * MAX_ROW_CHARS:  # cheap check first: no decoding of a huge line
            report.add(f"rows over {MAX_ROW_CHARS} characters", f"line {number}")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            report.add("rows that are not UTF-8", f"line {number}: {raw[:40]!r}")
            continue
        if len(text) > MAX_ROW_CHARS:
            report.add(f"rows over {MAX_ROW_CHARS} characters", f"line {number}")
            continue
        lines.append(_Line(number, text))
    return lines, written


def _looks_like_row_start(text: str, image_column: int) -> bool:
    fields = text.split(",")
    name = fields[image_column].strip().strip('"') if len(fields) > max(1, image_column) else ""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _layout_error(path: Path, first: str) -> StorytellerError:
    return StorytellerError(
        f"{path} is not a caption file in a known layout: its first line {first[:60]!r} is "
        "neither a Kaggle captions CSV header naming the columns 'image' and 'caption', nor a "
        "Flickr8k.token.txt line 'image.jpg#0<TAB>caption', nor a Flickr30k results.csv line "
        "'image_name| comment_number| comment'"
    )


def _csv_columns(path: Path, lines: list[_Line]) -> tuple[int, int, int]:
    """The header's number of columns and where 'image' and 'caption' are; other columns are
    ignored, with one warning."""
    first = lines[0].text if lines else ""
    try:
        header = next(csv.reader([first]), [])
    except csv.Error:  # e.g. a lone carriage return
        header = []
    names = [h.strip().lower() for h in header]
    if "image" not in names or "caption" not in names:
        raise _layout_error(path, first)
    extra = [h for h in header if h.strip().lower() not in ("image", "caption")]
    if extra:
        warnings.warn(
            f"{path}: reading the columns 'image' and 'caption', ignoring "
            + ", ".join(repr(h) for h in extra),
            stacklevel=2,
        )
    return len(names), names.index("image"), names.index("caption")


def _read_kaggle_csv(path: Path, lines: list[_Line], report: SkipReport) -> list[tuple[str, str]]:
    """``image,caption`` rows, one per line. A quote left open skips its own line, or, when
    the next lines (not row starts) close it, those lines together."""
    width, image_column, caption_column = _csv_columns(path, lines)
    rows = []
    i = 1
    while i < len(lines):
        line = lines[i]
        try:
            fields = next(csv.reader([line.text], strict=True))
        except csv.Error:
            end = i + 1
            while end < len(lines) and not _looks_like_row_start(lines[end].text, image_column):
                end += 1
            closes = any(lines[j].text.count('"') % 2 for j in range(i + 1, end))
            if line.text.count('"') % 2 and closes:
                span = f"lines {line.number}-{lines[end - 1].number}"
                report.add("quoted fields spanning lines", span)
                report.lines += end - i - 1
                i = end
            else:
                report.add("rows with an unterminated quote", f"line {line.number}: {line.text}")
                i += 1
            continue
        i += 1
        if caption_column == width - 1 and len(fields) > width:
            # An unquoted comma splits the last column, the caption: glue it back. (In any
            # other column it cannot be told from the next column: such rows are malformed.)
            fields[caption_column:] = [",".join(fields[caption_column:])]
        if len(fields) != width or not fields[image_column].strip():
            report.add("malformed rows", f"line {line.number}: {line.text}")
            continue
        rows.append((fields[image_column].strip(), fields[caption_column]))
    return rows


def _token_row(text: str) -> tuple[str, str] | None:
    key, sep, caption = text.partition("\t")  # image.jpg#N<TAB>caption
    image = key.split("#")[0].strip()
    return (image, caption) if sep and image else None


def _results_row(text: str) -> tuple[str, str] | None:
    parts = text.split("|")  # image| n| caption
    return (parts[0].strip(), "|".join(parts[2:])) if len(parts) >= 3 and parts[0].strip() else None


def _read_rows(lines: list[_Line], report: SkipReport, row_of: Callable) -> list[tuple[str, str]]:
    rows = []
    for line in lines:
        row = row_of(line.text)
        if row is None:
            report.add("malformed rows", f"line {line.number}: {line.text}")
        else:
            rows.append(row)
    return rows


def read_caption_file(path: str | Path, report: SkipReport | None = None) -> list[tuple[str, str]]:
    """Any of the three layouts (told from the content) as raw ``(image, caption)`` rows.
    Every line is a row or counted in ``report`` (empty captions and repeated rows too), and
    the total is checked against the file's lines."""
    path = Path(path)
    if not path.is_file():
        raise StorytellerError(f"caption file not found: {path}")
    report = report if report is not None else SkipReport()
    before = report.lines
    lines, written = _lines(_read_bytes(path), report)
    first = lines[0].text if lines else ""
    if "\t" in first and "#" in first.split("\t")[0]:
        header, rows = 0, _read_rows(lines, report, _token_row)
    elif first.count("|") >= 2:
        header = int(first.replace(" ", "").lower().startswith("image_name|"))
        rows = _read_rows(lines[header:], report, _results_row)
    else:
        rows = _read_kaggle_csv(path, lines, report)
        header = 1
    kept, seen = [], set()
    for image, caption in rows:
        caption = caption.strip()
        if not tokenize(caption):
            report.add("empty captions", f"{image}: {caption!r}")
        elif (image, caption) in seen:
            report.add("duplicate rows", f"{image}: {caption[:40]!r}")
        else:
            seen.add((image, caption))
            kept.append((image, caption))
    accounted = header + len(kept) + report.lines - before
    if accounted != written:  # a parser bug, never the data's fault: say so, lose nothing
        raise StorytellerError(
            f"{path}: {written} non-empty lines, but {accounted} read or skipped: please report "
            "this file"
        )
    return kept


def find_caption_file(data_dir: Path) -> Path:
    for name in CAPTION_FILES:
        for candidate in (data_dir / name, *data_dir.glob(f"*/{name}")):
            if candidate.is_file():
                return candidate
    raise StorytellerError(
        f"no caption file in {data_dir}: expected one of {', '.join(CAPTION_FILES)} "
        "(Kaggle layout: Images/ + captions.txt)"
    )


def find_image_dir(data_dir: Path) -> Path:
    for name in IMAGE_DIRS:
        for candidate in (data_dir / name, *data_dir.glob(f"*/{name}")):
            if candidate.is_dir():
                # Kaggle's flickr30k nests flickr30k_images/flickr30k_images/
                nested = candidate / candidate.name
                return nested if nested.is_dir() else candidate
    raise StorytellerError(
        f"no image folder in {data_dir}: expected one of {', '.join(IMAGE_DIRS)}"
    )


def check_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` if it can be a dataset folder, else a one-line error saying what to pass
    (torch-free: the command line checks ``--data`` with it before loading the pipeline)."""
    data_dir = Path(data_dir).expanduser()
    if data_dir.is_file():
        raise StorytellerError(
            f"--data wants the dataset folder, not a file: try {data_dir.parent}"
        )
    if not data_dir.is_dir():
        raise StorytellerError(f"dataset folder not found: {data_dir}")
    if data_dir.name in IMAGE_DIRS and not any((data_dir / n).is_file() for n in CAPTION_FILES):
        raise StorytellerError(
            f"{data_dir} is the image folder; --data wants the dataset folder that holds it "
            f"and the caption file: try {data_dir.parent}"
        )
    return data_dir


def load_dataset(data_dir: str | Path, check_images: bool = True) -> CaptionDataset:
    """A dataset folder's captions grouped by image; with ``check_images``, captions of a
    missing image are skipped and counted (unreadable ones are found at extraction)."""
    data_dir = check_data_dir(data_dir)
    caption_file = find_caption_file(data_dir)
    image_dir = find_image_dir(data_dir)
    report = SkipReport()
    rows = read_caption_file(caption_file, report)
    present = {p.name for p in image_dir.iterdir()} if check_images else None
    captions: dict[str, list[str]] = defaultdict(list)
    for image, caption in rows:
        if present is not None and image not in present:
            report.add("captions of missing images", image)
            continue
        captions[image].append(caption)
    if not captions:
        raise StorytellerError(
            f"no usable captions in {caption_file} with images in {image_dir}"
            + (f" ({report.summary()})" if report.total else "")
        )
    report.warn(f"reading {caption_file}")
    return CaptionDataset(image_dir, dict(captions), caption_file, report)


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def split_by_image(
    images: list[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
    """Image names shuffled with ``seed`` and cut 80/10/10: by image, not caption row, so a
    photo's captions stay in one split (no train/test leakage)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise StorytellerError(f"split fractions must be three numbers summing to 1: {fractions}")
    names = sorted(set(images))
    if len(names) < 3:
        raise StorytellerError(f"need at least 3 images to split, got {len(names)}")
    import torch  # here: reading a dataset (and the CLI's --data check) needs no torch

    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [names[i] for i in order]
    n_val = max(1, round(fractions[1] * len(names))) if fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] * len(names))) if fractions[2] > 0 else 0
    n_train = len(names) - n_val - n_test
    return Split(
        train=shuffled[:n_train],
        val=shuffled[n_train : n_train + n_val],
        test=shuffled[n_train + n_val :],
    )

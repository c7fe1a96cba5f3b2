"""Tables, figures and examples of a run for the notebooks, read from the files the pipeline
writes (so a run made earlier, or by the CLI, shows too): Markdown and images in Jupyter,
plain text and file paths anywhere else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..artefacts import read_json
from ..figures.plots import plot_caption_grid
from ..run_folder import DATA_EXAMPLES_FILE, LOSS_CURVE_FILE, RunPaths

#: The scores shown in the metrics table, in order, with their display names.
METRIC_NAMES = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "cider": "CIDEr-D",
    "precision": "token precision",
    "recall": "token recall",
    "f1": "token F1",
    "distinct_captions": "distinct captions",
    "vocab_used": "words used",
    "recall_at_5": "retrieval R@5",
}


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where rich display works."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class Table:
    """Rows of values under named columns; Markdown in Jupyter, aligned text elsewhere."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence], title: str = ""):
        self.columns, self.rows, self.title = list(columns), [list(r) for r in rows], title

    def _cells(self) -> list[list[str]]:
        return [[_format(v) for v in row] for row in self.rows]

    def _repr_markdown_(self) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += [
            "| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in self._cells()
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        cells = [self.columns, *self._cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)

    def column(self, name: str) -> list:
        """The values of one column (tests and further processing)."""
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


def show(item) -> None:
    """Display a table, or an image file given its path; printed outside Jupyter."""
    is_path = isinstance(item, (str, Path))
    if not in_notebook():
        print(f"figure: {Path(item)}" if is_path else repr(item))
        return
    from IPython.display import Image, display

    display(Image(filename=str(item)) if is_path else item)


def dataset_overview(data_dir: str | Path, out_dir: str | Path, num_examples: int = 6):
    """A summary table of a dataset folder, and the path of a grid of a few of its images with
    one caption each (``out_dir/data_examples.png``)."""
    from ..data.captions import load_dataset

    dataset = load_dataset(data_dir)
    per_image = [len(c) for c in dataset.captions.values()]
    table = Table(
        ["what", "value"],
        [
            ["caption file", dataset.source.name],
            ["image folder", dataset.image_dir.name],
            ["images with captions", len(dataset)],
            ["captions", dataset.num_captions],
            ["captions per image", f"{min(per_image)}-{max(per_image)}"],
            ["rows skipped", dataset.skipped.total],
        ],
        title=f"Dataset {Path(data_dir).name}",
    )
    shown = dataset.images[:num_examples]
    grid = plot_caption_grid(
        [dataset.image_dir / name for name in shown],
        [dataset.captions[name] for name in shown],
        {},
        Path(out_dir) / DATA_EXAMPLES_FILE,
        title="A few training photos and one of their reference captions",
    )
    return table, grid


def vocabulary_table(vocab, num_words: int = 15) -> Table:
    """The vocabulary's provenance and its most frequent words (ids 4, 5, ...)."""
    rows = [[key, value] for key, value in vocab.provenance.items()]
    rows.append(["special tokens", " ".join(vocab.itos[:4])])
    rows.append([f"{num_words} most frequent words", " ".join(vocab.itos[4 : 4 + num_words])])
    return Table(["property", "value"], rows, title=f"vocab.pkl: {len(vocab)} words")


def encoding_example(vocab, caption: str) -> Table:
    """How one caption becomes ids and back (what the model actually sees)."""
    ids = vocab.encode(caption)
    return Table(
        ["step", "value"],
        [
            ["caption", caption],
            ["tokens", " ".join(vocab.itos[i] for i in ids)],
            ["ids", " ".join(map(str, ids))],
            ["decoded back", vocab.decode(ids)],
        ],
        title="One caption through the vocabulary",
    )


def history_table(history: Sequence[Mapping]) -> Table:
    """One row per epoch: losses, perplexity, learning rate, time, best marker."""
    rows = [
        [
            h["epoch"],
            h["train_loss"],
            h["val_loss"],
            h["val_perplexity"],
            f"{h['lr']:.2g}",
            f"{h['seconds']:.1f}",
            "*" if h.get("best") else "",
        ]
        for h in history
    ]
    return Table(
        ["epoch", "train loss", "val loss", "val perplexity", "lr", "seconds", "best"],
        rows,
        title="Training, epoch by epoch",
    )


def read_history(out_dir: str | Path) -> list[dict]:
    """``history.json`` of a run (empty before the first finished epoch)."""
    path = RunPaths(Path(out_dir)).history
    return read_json(path, "training history") if path.is_file() else []


class TrainingMonitor:
    """``train_step(on_epoch=TrainingMonitor(out_dir))``: a per-epoch table and the loss plot,
    redrawn in place after every epoch (printed rows outside Jupyter); the epochs before a
    resume come from ``history.json``."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.history = read_history(self.out_dir)
        self._handles = None

    def __call__(self, record: Mapping) -> None:
        self.history = [h for h in self.history if h["epoch"] < record["epoch"]] + [dict(record)]
        if not in_notebook():
            print(repr(history_table([record])).splitlines()[-1])
            return
        from IPython.display import Image, display

        table = history_table(self.history)
        curve = self.out_dir / LOSS_CURVE_FILE  # the training loop redraws it every epoch
        image = Image(filename=str(curve)) if curve.is_file() else None
        if self._handles is None:
            self._handles = (display(table, display_id=True), display(image, display_id=True))
        else:
            self._handles[0].update(table)
            self._handles[1].update(image)


def metrics_table(metrics: Mapping[str, Mapping], baseline: Mapping | None = None) -> Table:
    """Metrics side by side: one column per decoding (``greedy``, ``beam5``), plus the
    most-frequent-caption baseline when given."""
    decodings = list(metrics)
    columns = ["metric", *decodings] + (["baseline"] if baseline else [])
    rows = []
    for key, name in METRIC_NAMES.items():
        if not any(key in m for m in metrics.values()):
            continue
        row = [name, *[metrics[d].get(key) for d in decodings]]
        if baseline:
            row.append(baseline.get(key))
        rows.append(row)
    backend = next(iter(metrics.values())).get("meteor_backend")
    title = "Test split: greedy vs beam search" + (f" (METEOR: {backend})" if backend else "")
    return Table(columns, rows, title=title)


def smoke_run(metrics: Mapping[str, Mapping]) -> bool:
    """Whether ``metrics`` (``metrics.json``, or what ``evaluate_step`` returns) come from a
    smoke run, whose figures are marked as such (no recorded provenance: a real run)."""
    return any(m.get("provenance", {}).get("smoke") is True for m in metrics.values())


def best_and_worst(
    out_dir: str | Path, decoding: str | None = None, k: int = 3
) -> dict[str, list[dict]]:
    """The ``k`` best and ``k`` worst test captions of the run's ``test_captions.json`` by
    per-image CIDEr-D, for ``decoding`` (default: the last one evaluated): ``{"best": [...],
    "worst": [...]}``, each item ``{"image", "references", "caption", "score", "decoding"}``."""
    from ..evaluation.metrics import per_image_cider  # nltk, pycocoevalcap: only when asked

    items = read_json(RunPaths(Path(out_dir)).test_captions, "test captions file")
    if decoding is None:
        decoding = [key for key in items[0] if key not in ("image", "references")][-1]
    scores = per_image_cider([it["references"] for it in items], [it[decoding] for it in items])
    ranked = sorted(
        (
            {"image": it["image"], "references": it["references"], "caption": it[decoding]}
            | {"score": score, "decoding": decoding}
            for it, score in zip(items, scores, strict=True)
        ),
        key=lambda e: (-e["score"], e["image"]),
    )
    k = min(k, len(ranked) // 2 or 1)
    return {"best": ranked[:k], "worst": ranked[::-1][:k]}


def plot_examples(
    examples: Sequence[Mapping],
    image_dir: str | Path,
    path: str | Path,
    title: str,
    smoke: bool = False,
) -> Path:
    """A caption grid of chosen examples (from :func:`best_and_worst`); ``smoke``: marked as
    a smoke run's (see :func:`smoke_run`)."""
    return plot_caption_grid(
        [Path(image_dir) / e["image"] for e in examples],
        [e["references"] for e in examples],
        {
            f"{examples[0]['decoding']} (CIDEr-D)": [
                f"{e['caption']} ({e['score']:.2f})" for e in examples
            ]
        },
        path,
        title=title,
        smoke=smoke,
    )


def caption_line(captioner, caption: str) -> str:
    """``caption (<model>): <caption>``, with the smoke-run label ahead when the captioner's
    model is a smoke run's (:meth:`storyteller.inference.Captioner.labelled`)."""
    return captioner.labelled(f"caption ({captioner.model.describe()}): {caption}")


def stream(chunks) -> str:
    """Show a story while it is generated (``chunks`` yields the whole text so far, as
    ``StorySession.start`` does) and return the final text: in Jupyter it grows in place,
    elsewhere the final text is printed once."""
    text, handle = "", None
    for text in chunks:
        if in_notebook():
            from IPython.display import Markdown, display

            shown = Markdown(text.replace("\n", "  \n"))  # a line break in Markdown
            if handle is None:
                handle = display(shown, display_id=True)
            else:
                handle.update(shown)
    if not in_notebook():
        print(text)
    return text

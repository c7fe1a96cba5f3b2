"""Evaluating a trained captioner on the test split: greedy and beam search side by side.

Writes ``metrics.json`` (one entry per decoding, e.g. ``greedy`` and ``beam5``, each with the
keys ``bleu1 bleu2 bleu3 bleu4 meteor rouge1 rouge2 rougeL cider precision recall f1``,
``meteor_backend`` and the specificity measures), ``test_captions.json`` (every test image's
references and generated captions) and ``caption_grid.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .data import CaptionDataset
from .decoding import generate_captions
from .errors import StorytellerError
from .features import FeatureCache
from .plots import plot_caption_grid
from .runtime import unwrap, write_json
from .vocab import Vocabulary

METRICS_FILE = "metrics.json"
TEST_CAPTIONS_FILE = "test_captions.json"
GRID_FILE = "caption_grid.png"


def decoding_name(beam_size: int) -> str:
    return "greedy" if beam_size == 1 else f"beam{beam_size}"


def score_captions(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], meteor: str = "auto"
) -> dict:
    """All metrics for one set of captions: quality scores plus specificity."""
    from .metrics import caption_metrics, specificity_metrics  # nltk import is slow: load lazily

    scores = caption_metrics(references, hypotheses, meteor=meteor)
    scores.update(specificity_metrics(references, hypotheses, k=5))
    return scores


def baseline_scores(
    dataset: CaptionDataset, train_images: list[str], test_images: list[str], meteor: str = "none"
) -> dict:
    """The trivial baseline: the most frequent training caption, said for every test image."""
    from .metrics import most_frequent_caption

    caption = most_frequent_caption(c for name in train_images for c in dataset.captions[name])
    references = [dataset.captions[name] for name in test_images]
    scores = score_captions(references, [caption] * len(test_images), meteor=meteor)
    scores["caption"] = caption
    return scores


def evaluate_model(
    model: torch.nn.Module,
    vocab: Vocabulary,
    cache: FeatureCache,
    dataset: CaptionDataset,
    test_images: list[str],
    out_dir: str | Path,
    beam_sizes: Sequence[int] = (1, 5),
    length_penalty: float = 0.7,
    max_length: int = 50,
    meteor: str = "auto",
    grid_size: int = 9,
    log=print,
) -> dict[str, dict]:
    """Caption every test image with each decoding, score, and write the result files."""
    out_dir = Path(out_dir)
    images = [name for name in test_images if name in cache]
    if not images:
        raise StorytellerError("no test images with features to evaluate")
    rows = [cache.index[name] for name in images]
    features = cache.batch(rows, unwrap(model).feature_layout)  # (N, [h*w,] feature_dim)
    references = [dataset.captions[name] for name in images]

    results: dict[str, dict] = {}
    generated: dict[str, list[str]] = {}
    for beam_size in beam_sizes:
        name = decoding_name(beam_size)
        generated[name] = generate_captions(
            model, features, vocab, beam_size, max_length, length_penalty
        )
        results[name] = score_captions(references, generated[name], meteor=meteor)
        r = results[name]
        log(
            f"{name:>7}: BLEU-4 {r['bleu4']:.4f}  METEOR {r['meteor'] if r['meteor'] is None else round(r['meteor'], 4)}  "
            f"ROUGE-L {r['rougeL']:.4f}  CIDEr {r['cider']:.4f}  distinct {r['distinct_captions']:.2f}  "
            f"R@5 {r['recall_at_5']:.3f}"
        )
    write_json(out_dir / METRICS_FILE, results)
    write_json(
        out_dir / TEST_CAPTIONS_FILE,
        [
            {"image": name, "references": refs, **{k: v[i] for k, v in generated.items()}}
            for i, (name, refs) in enumerate(zip(images, references, strict=True))
        ],
    )
    shown = images[:grid_size]
    plot_caption_grid(
        [dataset.image_dir / name for name in shown],
        references[: len(shown)],
        {k: v[: len(shown)] for k, v in generated.items()},
        out_dir / GRID_FILE,
        title="Test images: a reference caption and the generated ones",
    )
    return results

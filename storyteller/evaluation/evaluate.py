"""Evaluating a trained captioner on the test split: greedy and beam search side by side.

Writes ``metrics.json``: per decoding (``greedy``, ``beam5``, ...) the scores of
:mod:`.metrics`, which captioner made them (``decoder``, ``model``), its teacher-forced
``test_loss`` and ``test_perplexity``, and ``provenance`` (:mod:`.provenance`, plus that
decoding's settings and ``num_test_images``). Also ``test_captions.json``, ``caption_grid.png``
and, for a captioner that attends, ``attention_maps/``: where it looked for each word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import Strategy, TrainConfig
from ..data.captions import CaptionDataset
from ..data.vocab import PAD_ID, Vocabulary
from ..decoding import generate_captions
from ..errors import StorytellerError
from ..features.cache_format import FeatureCache
from ..features.encoders import get_encoder_spec
from ..features.images import open_image
from ..figures.attention_maps import attends, caption_with_attention, write_attention_maps
from ..figures.plots import plot_caption_grid
from ..run_folder import ATTENTION_MAPS_DIR, GRID_FILE, METRICS_FILE, TEST_CAPTIONS_FILE
from ..runtime import unwrap, write_json


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


def teacher_forced_loss(
    model: torch.nn.Module,
    vocab: Vocabulary,
    cache: FeatureCache,
    dataset: CaptionDataset,
    images: Sequence[str],
    batch_size: int = 64,
) -> float:
    """Mean next-word cross-entropy per caption on ``images``' references, teacher forced as
    in validation, without the decoder's extra loss terms (so it means the same for every
    decoder); ``exp`` of it is the test perplexity."""
    from torch.utils.data import DataLoader

    from ..training.data import CaptionPairs, make_collate
    from ..training.train import make_batch_loss, validate

    network = unwrap(model)
    device = next(network.parameters()).device
    pairs = CaptionPairs(cache, dataset, list(images), vocab, TrainConfig().max_length)
    loader = DataLoader(
        pairs, batch_size=batch_size, collate_fn=make_collate(cache, network.feature_layout)
    )
    batch_loss = make_batch_loss(device, False, PAD_ID, label_smoothing=0.0)
    return validate(network, loader, batch_loss, device)


def evaluate_model(
    model: torch.nn.Module,
    vocab: Vocabulary,
    cache: FeatureCache,
    dataset: CaptionDataset,
    test_images: list[str],
    out_dir: str | Path,
    beam_sizes: Sequence[int] = (1, 5),
    length_penalty: float = Strategy.length_penalty,
    max_length: int = Strategy.max_length,
    meteor: str = "auto",
    grid_size: int = 9,
    log=print,
    attention_maps: int = 4,
    provenance: dict | None = None,
) -> dict[str, dict]:
    """Caption every test image with each decoding, score, and write the result files.
    ``attention_maps``: how many photos get a figure of where an attending captioner looked
    (the widest beam's caption); ``provenance``: what made the model, recorded with every
    decoding's numbers, whose ``smoke`` marks the figures as a smoke run's."""
    out_dir = Path(out_dir)
    strategies = [Strategy(beam_size, max_length, length_penalty) for beam_size in beam_sizes]
    images = [name for name in test_images if name in cache]
    if not images:
        raise StorytellerError("no test images with features to evaluate")
    rows = [cache.index[name] for name in images]
    features = cache.batch(rows, unwrap(model).feature_layout)  # (N, [h*w,] feature_dim)
    references = [dataset.captions[name] for name in images]
    about = _about(model, teacher_forced_loss(model, vocab, cache, dataset, images), log)
    provenance = {**(provenance or {}), "num_test_images": len(images)}
    smoke = bool(provenance.get("smoke"))
    results: dict[str, dict] = {}
    generated: dict[str, list[str]] = {}
    for strategy in strategies:
        name = strategy.name
        generated[name] = generate_captions(model, features, vocab, strategy)
        results[name] = {
            **score_captions(references, generated[name], meteor=meteor),
            **about,
            "provenance": {**provenance, "decoding": strategy.to_dict()},
        }
        _log_scores(name, results[name], log)
    write_json(out_dir / METRICS_FILE, results)
    _write_captions(out_dir, dataset.image_dir, images, references, generated, grid_size, smoke)
    if attends(model) and attention_maps:
        shown = images[:attention_maps]
        widest = max(strategies, key=lambda strategy: strategy.beam_size)
        chunk = features[: len(shown)].to(next(unwrap(model).parameters()).device)
        captions = caption_with_attention(model, vocab, chunk, cache.grid, widest)
        figures = write_attention_maps(
            [
                (name, open_image(dataset.image_dir / name), caption)
                for name, caption in zip(shown, captions, strict=True)
            ],
            get_encoder_spec(cache.encoder).preprocessing,
            out_dir / ATTENTION_MAPS_DIR,
            smoke=smoke,
        )
        log(f"where the model looked, word by word: {len(figures)} figures in {figures[0].parent}")
    return results


def _about(model: torch.nn.Module, loss: float, log) -> dict:
    """Which captioner made the numbers, and its test loss and perplexity."""
    network = unwrap(model)
    about = {
        "decoder": network.name,
        "model": network.describe(),
        "test_loss": round(loss, 4),
        "test_perplexity": round(math.exp(min(loss, 50.0)), 3),
    }
    log(
        f"{network.name} ({about['model']}): test loss {loss:.4f}, "
        f"perplexity {about['test_perplexity']:.1f}"
    )
    return about


def _log_scores(name: str, r: dict, log) -> None:
    meteor = r["meteor"] if r["meteor"] is None else round(r["meteor"], 4)
    log(
        f"{name:>7}: BLEU-4 {r['bleu4']:.4f}  METEOR {meteor}  "
        f"ROUGE-L {r['rougeL']:.4f}  CIDEr {r['cider']:.4f}  distinct {r['distinct_captions']:.2f}  "
        f"R@5 {r['recall_at_5']:.3f}"
    )


def _write_captions(
    out_dir: Path,
    image_dir: Path,
    images: list[str],
    references: list[list[str]],
    generated: dict[str, list[str]],
    grid_size: int,
    smoke: bool,
) -> None:
    """``test_captions.json`` (every image's references and captions) and the caption grid."""
    write_json(
        out_dir / TEST_CAPTIONS_FILE,
        [
            {"image": name, "references": refs, **{k: v[i] for k, v in generated.items()}}
            for i, (name, refs) in enumerate(zip(images, references, strict=True))
        ],
    )
    shown = images[:grid_size]
    plot_caption_grid(
        [image_dir / name for name in shown],
        references[: len(shown)],
        {k: v[: len(shown)] for k, v in generated.items()},
        out_dir / GRID_FILE,
        title="Test images: a reference caption and the generated ones",
        smoke=smoke,
    )

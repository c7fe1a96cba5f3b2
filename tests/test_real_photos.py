"""End to end on 1,000 real Flickr8k photos with the offline EfficientNet-Lite0 encoder.

Takes a few minutes on 2 CPU cores; skipped when ../shared/data/flickr8k-1k is absent.
"""

import json
import time

import pytest
from conftest import FLICKR8K_1K

from storyteller import pipeline
from storyteller.config import TrainConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FLICKR8K_1K.is_dir(), reason="../shared/data/flickr8k-1k not present"),
]

# The recipe docs/results.md's results table reports: defaults, with room for early stopping.
RECIPE = TrainConfig(num_epochs=30)


@pytest.fixture(scope="module")
def flickr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flickr8k-1k")
    started = time.perf_counter()
    results = pipeline.run_all(
        FLICKR8K_1K,
        out,
        encoder="efficientnet_lite0",
        train_config=RECIPE,
        model_overrides={"decoder": "lstm"},
    )
    return out, results, time.perf_counter() - started


def test_model_beats_the_most_frequent_caption_baseline(flickr_run):
    out, results, seconds = flickr_run
    baseline = json.loads((out / "baseline.json").read_text())
    print(
        f"run-all on flickr8k-1k: {seconds:.0f}s; greedy BLEU-4 {results['greedy']['bleu4']:.4f}, "
        f"beam5 {results['beam5']['bleu4']:.4f}, baseline {baseline['bleu4']:.4f}"
    )
    for decoding in ("greedy", "beam5"):
        assert results[decoding]["bleu4"] > baseline["bleu4"], decoding
        assert results[decoding]["distinct_captions"] > 0.2  # not one caption for every photo
        assert results[decoding]["recall_at_5"] > baseline["recall_at_5"]


def test_no_image_in_two_splits(flickr_run):
    out, _, _ = flickr_run
    splits = json.loads((out / "splits.json").read_text())
    train, val, test = (set(splits[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert (len(train), len(val), len(test)) == (800, 100, 100)


def test_sample_scores_far_higher_than_real_photos(flickr_run, sample_run):
    _, real, _ = flickr_run
    sample = json.loads((sample_run[0] / "metrics.json").read_text())
    assert sample["greedy"]["bleu4"] > 2 * real["greedy"]["bleu4"]

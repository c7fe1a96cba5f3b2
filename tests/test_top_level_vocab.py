"""The committed top-level ``vocab.pkl`` and the ``vocab --captions`` path that builds it."""

from pathlib import Path

import pytest
from conftest import SHARED_DATA
from conftest import cli as _cli

from storyteller import pipeline
from storyteller.data.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_VOCAB = REPO / "vocab.pkl"
FLICKR8K_CAPTIONS = SHARED_DATA / "flickr8k-captions-40k.txt"


def test_top_level_vocab_is_a_real_flickr8k_vocabulary_with_provenance():
    vocab = Vocabulary.load(TOP_LEVEL_VOCAB)
    p = vocab.provenance
    assert p["threshold"] == 5 and vocab.threshold == 5
    assert p["size"] == len(vocab)
    assert (p["split"], p["seed"]) == ("train", 0)
    assert p["source"] == FLICKR8K_CAPTIONS.name and len(p["source_sha256"]) == 16
    assert "Flickr8k" in p["dataset"]
    # 80 % of Flickr8k's 8,091 photos, five captions each, less the training split's 7
    # exact duplicate rows (the file has 10), which the caption reader skips and counts
    assert p["num_images"] == 6473 and p["num_captions"] == 5 * 6473 - 7
    assert 2000 < len(vocab) < 4000
    for word in ("dog", "man", "running", "beach", "red"):
        assert word in vocab
    assert not any(str(v).startswith("/") for v in p.values()), "no machine paths inside"


@pytest.mark.skipif(not FLICKR8K_CAPTIONS.is_file(), reason="needs ../shared/data (offline data)")
def test_top_level_vocab_rebuilds_from_the_flickr8k_captions(tmp_path):
    result = _cli(
        "vocab",
        "--captions",
        str(FLICKR8K_CAPTIONS),
        "--dataset-name",
        "Flickr8k (Kaggle adityajn105/flickr8k captions.txt)",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    rebuilt, committed = Vocabulary.load(tmp_path / "vocab.pkl"), Vocabulary.load(TOP_LEVEL_VOCAB)
    assert rebuilt.fingerprint == committed.fingerprint
    assert rebuilt.provenance == committed.provenance
    assert (tmp_path / "vocab.pkl").read_bytes() == TOP_LEVEL_VOCAB.read_bytes()


def test_captions_only_vocabulary_equals_the_dataset_folder_one(tiny_data, tmp_path):
    """``--captions FILE`` gives the same split and words as ``--data`` on the full folder."""
    log = lambda _: None  # noqa: E731
    from_folder = pipeline.vocab_step(tiny_data, tmp_path / "folder", threshold=2, log=log)
    from_file = pipeline.vocab_from_captions(
        tiny_data / "captions.txt", tmp_path / "file", threshold=2, log=log
    )
    assert from_file.fingerprint == from_folder.fingerprint
    assert (tmp_path / "file" / "splits.json").read_text() == (
        tmp_path / "folder" / "splits.json"
    ).read_text()
    assert from_file.provenance["source"] == "captions.txt"
    assert from_folder.provenance["size"] == len(from_folder)


def test_vocab_command_refuses_data_and_captions_together(tiny_data, tmp_path):
    result = _cli(
        "vocab",
        "--data",
        str(tiny_data),
        "--captions",
        str(tiny_data / "captions.txt"),
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 2 and "either --data" in result.stderr

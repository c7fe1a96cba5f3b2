import os
import pickle

import pytest

from storyteller.data.vocab import Vocabulary
from storyteller.errors import StorytellerError


def test_threshold_and_fixed_special_ids():
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "a cat"], threshold=2)
    assert vocab.itos == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.encode("A dog flies!") == [1, 4, 5, 3, 2]
    assert vocab.decode([1, 4, 5, 2, 4, 4]) == "a dog"  # stops at <end>
    assert vocab.provenance["num_captions"] == 3


def test_encode_truncates_to_max_length():
    vocab = Vocabulary.build(["w " * 100], threshold=1)
    ids = vocab.encode("w " * 100, max_length=10)
    assert len(ids) == 10 and ids[0] == 1 and ids[-1] == 2


def test_round_trip_is_plain_data(tmp_path):
    vocab = Vocabulary.build(["a dog runs"] * 5, threshold=5, provenance={"source": "test"})
    path = vocab.save(tmp_path / "vocab.pkl")
    loaded = Vocabulary.load(path)
    assert loaded.itos == vocab.itos and loaded.fingerprint == vocab.fingerprint
    assert loaded.provenance["source"] == "test"
    raw = pickle.loads(path.read_bytes())
    assert type(raw) is dict and set(raw) == {
        "format",
        "version",
        "itos",
        "threshold",
        "provenance",
    }


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/storyteller-pwned",))


def test_crafted_pickle_is_refused_without_running(tmp_path):
    marker = "/tmp/storyteller-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "vocab.pkl"
    path.write_bytes(pickle.dumps({"format": "storyteller-vocab", "itos": _Exploit()}))
    with pytest.raises(StorytellerError, match="refusing to load"):
        Vocabulary.load(path)
    assert not os.path.exists(marker)


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(StorytellerError, match="not a readable"):
        Vocabulary.load(tmp_path / "bad.pkl")
    with pytest.raises(StorytellerError, match="not found"):
        Vocabulary.load(tmp_path / "missing.pkl")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"itos": ["a"]}))
    with pytest.raises(StorytellerError, match="format marker"):
        Vocabulary.load(tmp_path / "other.pkl")


def test_bad_threshold():
    with pytest.raises(StorytellerError):
        Vocabulary.build(["a"], threshold=0)


def test_a_checkpoint_given_as_the_vocabulary_is_named(tmp_path):
    import torch

    from storyteller.data.vocab import is_torch_file, is_vocabulary_file

    torch.save({"model": {}}, tmp_path / "best_model.pth")
    with pytest.raises(StorytellerError, match="this is a model checkpoint .*not a vocabulary"):
        Vocabulary.load(tmp_path / "best_model.pth")
    vocab = Vocabulary.build(["a dog"], threshold=1).save(tmp_path / "vocab.pkl")
    assert is_torch_file(tmp_path / "best_model.pth") and not is_torch_file(vocab)
    assert is_vocabulary_file(vocab) and not is_vocabulary_file(tmp_path / "best_model.pth")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"itos": ["a"]}))
    assert not is_vocabulary_file(tmp_path / "other.pkl")  # a pickle, but not ours


def test_captions_of_a_file_group_by_image_with_a_path_free_provenance(tmp_path):
    """Building a run's vocabulary is its own module: a caption file gives
    each image's captions and a provenance of its name and content, never its folder; a file
    with no usable caption is a one-line error."""
    from storyteller.data.vocab_build import build_split_vocabulary, captions_of_file

    path = tmp_path / "captions.txt"
    rows = [f"{i}.jpg,a dog number {i} runs" for i in range(10)] + ["0.jpg,a dog sleeps"]
    path.write_text("image,caption\n" + "\n".join(rows) + "\n")
    captions, provenance = captions_of_file(path)
    assert captions["0.jpg"] == ["a dog number 0 runs", "a dog sleeps"] and len(captions) == 10
    assert provenance["source"] == "captions.txt" and str(tmp_path) not in str(provenance)
    vocab, split = build_split_vocabulary(captions, threshold=1, seed=3, provenance=provenance)
    assert vocab.provenance["source_sha256"] == provenance["source_sha256"]
    assert vocab.provenance["num_images"] == len(split.train) == 8
    empty = tmp_path / "empty.txt"
    empty.write_text("image,caption\n")
    with pytest.raises(StorytellerError, match="no usable captions in .*empty.txt"):
        captions_of_file(empty)

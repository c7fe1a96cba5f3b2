"""Pretrained word vectors (`--embeddings FILE`, `--freeze-embeddings`): reading a GloVe text
file the test writes, coverage, the rows it sets, freezing versus fine-tuning for every
decoder, resume, and the CLI end to end with a checkpoint that no longer needs the file."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from storyteller.cli import build_parser, main
from storyteller.cli.train import configs
from storyteller.config import ModelConfig, TrainConfig, train_flags
from storyteller.data.embeddings import read_word_vectors
from storyteller.data.vocab import Vocabulary
from storyteller.errors import StorytellerError
from storyteller.models import build_model, decoder_class
from storyteller.models.checkpoint import load_model, read_checkpoint
from storyteller.run_folder import BEST_CHECKPOINT
from storyteller.training.state import TrainingState, load_word_vectors

WORDS = ["dog", "runs", "grass", "ball", "red", "child", "water", "jumps"]
MISSING = {"jumps"}  # vocabulary words the file lacks
DIM = 6


def write_glove(path: Path, vectors: dict[str, list[float]], bad_lines: list[bytes] = ()) -> Path:
    """A GloVe-format file: the raw ``bad_lines`` first (a malformed line of a word must
    not hide its good one later, nor change the dimension), then ``word v1 ... vD``."""
    with path.open("wb") as handle:
        for line in bad_lines:
            handle.write(line + b"\n")
        for word, values in vectors.items():
            handle.write((word + " " + " ".join(f"{v:.6f}" for v in values) + "\n").encode())
    return path


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(WORDS)


@pytest.fixture
def glove(tmp_path) -> tuple[Path, dict[str, list[float]]]:
    """Vectors for the vocabulary's words but ``MISSING``, "Dog" cased after "dog" (the first
    wins), words outside the vocabulary, and five malformed lines."""
    gen = torch.Generator().manual_seed(0)
    vectors = {w: torch.randn(DIM, generator=gen).tolist() for w in WORDS if w not in MISSING}
    others = {w: torch.randn(DIM, generator=gen).tolist() for w in ("the", "cat", "Dog", "x2")}
    malformed = [
        b"short 0.1 0.2",  # too few values
        b"grassy " + b" ".join([b"0.5"] * (DIM + 1)),  # too many
        b"ball " + b" ".join([b"oops"] * DIM),  # a vocabulary word, not numbers
        b"red " + b" ".join([b"nan"] * DIM),  # a vocabulary word, NaN
        b"\xff\xfe " + b" ".join([b"0.1"] * DIM),  # not UTF-8
    ]
    path = write_glove(tmp_path / "glove.test.6d.txt", {**vectors, **others}, malformed)
    return path, vectors


def test_reading_reports_coverage_and_sets_the_found_rows(vocab, glove):
    path, vectors = glove
    read = read_word_vectors(path, vocab, seed=3)
    assert read.dim == DIM and read.source == path.name
    assert read.words == len(WORDS) and int(read.found.sum()) == len(WORDS) - len(MISSING)
    assert read.coverage == pytest.approx(7 / 8)
    assert read.malformed == 5 and read.lines == 7 + 4 + 5
    for word, values in vectors.items():  # "Dog" came after "dog": the first one wins
        assert torch.allclose(read.matrix[vocab.stoi[word]], torch.tensor(values), atol=1e-6)
    assert not read.found[vocab.stoi["jumps"]] and read.matrix[vocab.pad_id].abs().sum() == 0
    found_std = read.matrix[read.found].std()
    missing_row = read.matrix[vocab.stoi["jumps"]]
    assert 0 < missing_row.abs().max() < 10 * found_std  # random, at the found vectors' scale
    summary = read.summary()
    assert "7 of 8" in summary and "87.5%" in summary and "5 malformed" in summary
    assert "\n" not in summary and str(path.parent) not in str(read.provenance())


def test_a_cased_word_reaches_the_vocabulary_through_the_normaliser(vocab, tmp_path):
    path = write_glove(tmp_path / "g.txt", {"WATER": [1.0] * 3, "Café": [2.0] * 3})
    read = read_word_vectors(path, Vocabulary(WORDS + ["cafe"]))
    assert read.matrix[read.found].shape == (2, 3)
    assert read.matrix[Vocabulary(WORDS + ["cafe"]).stoi["cafe"]].tolist() == [2.0] * 3


def test_a_word2vec_header_is_skipped(vocab, tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("2 3\ndog 1 2 3\nball 4 5 6\n")
    read = read_word_vectors(path, vocab)
    assert read.dim == 3 and read.lines == 2 and read.malformed == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no word vectors"),
        (b"the 0.1 0.2\ncat 0.3 0.4\n", "none of the vocabulary's 8 words"),
    ],
)
def test_an_unusable_file_is_a_one_line_error(vocab, tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(StorytellerError, match=message) as raised:
        read_word_vectors(path, vocab)
    assert "\n" not in str(raised.value)
    with pytest.raises(StorytellerError, match="not found"):
        read_word_vectors(tmp_path / "absent.txt", vocab)


#: Every decoder, as small as it goes; each one's width is set from the file.
DECODERS = {
    "lstm": {"decoder": "lstm", "hidden_size": 8, "dropout": 0.0},
    "attention": {"decoder": "attention", "hidden_size": 8, "dropout": 0.0},
    "transformer": {
        "decoder": "transformer",
        "decoder_options": {"heads": 2, "ff_dim": 8, "decoder_layers": 1, "dropout": 0.0},
    },
}
FEATURE_DIM = 5


def _config(vocab, name: str, dim: int, freeze: bool) -> ModelConfig:
    overrides = decoder_class(name).with_embedding_width(DECODERS[name], dim, "glove.txt")
    return ModelConfig(
        vocab_size=len(vocab), feature_dim=FEATURE_DIM, freeze_embeddings=freeze, **overrides
    )


def _train_step(state: TrainingState, vocab: Vocabulary) -> None:
    """One optimiser step on a random batch, as the training loop takes it."""
    model = state.model
    features = torch.randn(3, FEATURE_DIM)  # (B, D)
    if model.feature_layout == "grid":
        features = torch.randn(3, 4, FEATURE_DIM)  # (B, P, D)
    captions = torch.randint(4, len(vocab), (3, 5))  # (B, T)
    captions[:, 0] = vocab.start_id
    logits, extra = model(features, captions)  # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), captions.roll(-1, 1).flatten())
    (loss + sum(extra.values())).backward()
    state.optimizer.step()


@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_vectors_stay_put_and_fine_tuned_ones_move(vocab, glove, name, freeze, tmp_path):
    path, vectors = glove
    read = read_word_vectors(path, vocab)
    train = TrainConfig(weight_decay=0.1)  # decay must not move a frozen table either
    state = TrainingState.create(_config(vocab, name, DIM, freeze), train, torch.device("cpu"))
    load_word_vectors(state, read)
    weight = state.model.word_embedding().weight
    assert torch.equal(weight.detach(), read.matrix) and weight.requires_grad is not freeze
    assert state.embeddings == read.provenance()
    _train_step(state, vocab)
    assert torch.equal(weight.detach(), read.matrix) is freeze
    # A rebuilt model (resume, reload) from the same config is frozen or not in the same way.
    rebuilt = build_model(state.model.config)
    assert rebuilt.word_embedding().weight.requires_grad is not freeze
    assert all(p is not weight for g in state.optimizer.param_groups for p in g["params"]) is freeze


def test_a_different_width_asked_for_is_a_clear_error():
    with pytest.raises(StorytellerError, match="--embed-size 256 disagrees .* 300-d"):
        decoder_class("lstm").with_embedding_width({"embed_size": 256}, 300, "glove.txt")
    with pytest.raises(StorytellerError, match="d_model=64 disagrees"):
        decoder_class("transformer").with_embedding_width(
            {"decoder_options": {"d_model": 64}}, 300, "glove.txt"
        )


def test_cli_flags_and_their_inverse():
    parser = build_parser()
    args = parser.parse_args(["train", "--embeddings", "g.txt", "--freeze-embeddings"])
    train, model = configs(args)
    assert model["freeze_embeddings"] is True and "embed_size" not in model  # the file says
    assert "--freeze-embeddings" in train_flags(train, model)
    _, plain = configs(parser.parse_args(["train"]))
    assert "embed_size" not in plain and "freeze_embeddings" not in plain  # ModelConfig's 256
    # --freeze-embeddings alone: train_step decides (a resumed checkpoint may hold vectors)
    assert configs(parser.parse_args(["train", "--freeze-embeddings"]))[1]["freeze_embeddings"]


def test_train_with_frozen_glove_end_to_end_then_reload_without_the_file(
    tiny_data, tiny_run, tmp_path, capsys
):
    """`train --embeddings F --freeze-embeddings` on the sample; the checkpoint holds the
    vectors and their provenance, and loads after the file is gone; resume keeps them."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("*.pth", "history.json"))
    vocab = Vocabulary.load(out / "vocab.pkl")
    gen = torch.Generator().manual_seed(1)
    words = [w for w in vocab.itos[4:] if len(w) % 3]  # about two thirds of the words
    vectors = {w: torch.randn(12, generator=gen).tolist() for w in words}
    glove = write_glove(tmp_path / "glove.sample.12d.txt", vectors, [b"broken line 1"])
    flags = ["train", "--data", str(tiny_data), "--out", str(out), "--decoder", "lstm"]
    flags += ["--hidden-size", "16", "--batch-size", "32"]
    flags += ["--embeddings", str(glove), "--freeze-embeddings"]
    assert main([*flags, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(words)} of {len(vocab) - 4} vocabulary words found" in printed
    assert "1 malformed line(s)" in printed
    # Re-running the command resumes; without --freeze-embeddings it is another model.
    assert main([*flags[:-1], "--epochs", "2"]) != 0
    assert "different architecture (freeze_embeddings: True -> False)" in capsys.readouterr().err
    assert main([*flags, "--epochs", "2"]) == 0
    glove.rename(tmp_path / "gone.txt")  # caption/evaluate/the app never need it again
    provenance = read_checkpoint(out / BEST_CHECKPOINT)["embeddings"]
    assert provenance["file"] == glove.name and provenance["dim"] == 12
    assert provenance["found"] == len(words) and str(tmp_path) not in str(provenance)
    last = read_checkpoint(out / "last.pth")
    assert last["epoch"] == 2 and last["embeddings"] == provenance
    for checkpoint in (BEST_CHECKPOINT, "last.pth"):  # frozen through both epochs
        model, _ = load_model(out / checkpoint, vocab)
        assert model.config.embed_size == 12 and model.config.freeze_embeddings
        table = model.word_embedding().weight
        for word in words:
            assert torch.allclose(table[vocab.stoi[word]], torch.tensor(vectors[word]), atol=1e-6)


def test_resume_needs_only_the_checkpoint_not_the_file(tiny_data, tiny_run, tmp_path, capsys):
    """A run started with `--embeddings F --freeze-embeddings` resumes (train, then run-all)
    with the file gone and no embedding flags: width, vectors and freezing come from
    last.pth. Another file named on resume is a one-line error; with no checkpoint to resume,
    --freeze-embeddings still needs a file."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("*.pth", "history.json"))
    vocab = Vocabulary.load(out / "vocab.pkl")
    gen = torch.Generator().manual_seed(3)
    vectors = {w: torch.randn(8, generator=gen).tolist() for w in vocab.itos[4:]}
    glove = write_glove(tmp_path / "glove.8d.txt", vectors)
    other = write_glove(tmp_path / "other.8d.txt", vectors)
    flags = ["train", "--data", str(tiny_data), "--out", str(out), "--decoder", "lstm"]
    flags += ["--hidden-size", "16", "--batch-size", "32"]
    assert main([*flags, "--embeddings", str(glove), "--freeze-embeddings", "--epochs", "1"]) == 0
    glove.unlink()
    capsys.readouterr()
    assert main([*flags, "--embeddings", str(other), "--epochs", "2"]) != 0
    err = capsys.readouterr().err
    assert "trained from embeddings glove.8d.txt, not other.8d.txt" in err
    assert main([*flags, "--epochs", "2"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "learned from glove.8d.txt (file not read)" in printed
    assert "1 epoch(s) done" in printed
    run_all = ["run-all", "--data", str(tiny_data), "--out", str(out), "--decoder", "lstm"]
    run_all += ["--encoder", "efficientnet_lite0", "--threshold", "2", "--epochs", "3"]
    run_all += ["--hidden-size", "16", "--batch-size", "32", "--beam", "1", "--meteor", "none"]
    assert main(run_all) == 0, capsys.readouterr().err
    assert "2 epoch(s) done" in capsys.readouterr().out
    last = read_checkpoint(out / "last.pth")
    assert last["epoch"] == 3 and last["embeddings"]["file"] == glove.name
    model, _ = load_model(out / "last.pth", vocab)
    assert model.config.embed_size == 8 and model.config.freeze_embeddings
    assert not model.word_embedding().weight.requires_grad
    for word in vocab.itos[4:]:  # frozen through all three epochs
        assert torch.allclose(model.word_embedding().weight[vocab.stoi[word]],
                              torch.tensor(vectors[word]), atol=1e-6)  # fmt: skip
    fresh = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "fresh")]
    shutil.copytree(tiny_run, tmp_path / "fresh", ignore=shutil.ignore_patterns("*.pth"))
    assert main([*fresh, "--freeze-embeddings", "--epochs", "1"]) != 0
    assert "--freeze-embeddings needs --embeddings FILE" in capsys.readouterr().err


def test_config_round_trip_keeps_the_flag():
    config = ModelConfig(vocab_size=10, freeze_embeddings=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(replace(config, freeze_embeddings=False).to_dict()) != config


def test_run_all_passes_the_file_to_the_attention_decoder(tiny_data, tmp_path, capsys):
    """`run-all --decoder attention --embeddings F`: a grid cache, the width from the file,
    and evaluation that reads the checkpoint alone."""
    out = tmp_path / "run"
    words = ["a", "dog", "in", "the", "grass", "man", "red"]
    gen = torch.Generator().manual_seed(2)
    vectors = {w: torch.randn(10, generator=gen).tolist() for w in words}
    glove = write_glove(tmp_path / "g.10d.txt", vectors)
    flags = ["run-all", "--data", str(tiny_data), "--out", str(out), "--decoder", "attention"]
    flags += ["--encoder", "efficientnet_lite0", "--threshold", "2", "--epochs", "1"]
    flags += ["--hidden-size", "16", "--beam", "1", "--meteor", "none"]
    assert main([*flags, "--embeddings", str(glove)]) == 0, capsys.readouterr().err
    assert "embeddings g.10d.txt: 10-d" in capsys.readouterr().out
    glove.unlink()
    model, _ = load_model(out / BEST_CHECKPOINT)
    assert model.config.decoder == "attention" and model.word_embedding().weight.shape[1] == 10
    assert not model.config.freeze_embeddings and model.word_embedding().weight.requires_grad


def test_ddp_keeps_frozen_vectors_frozen(tiny_data, tiny_run, tmp_path):
    """Two CPU processes (gloo) via launch_training, as notebook 03 starts DDP: the frozen
    table reaches every process's optimiser untouched, and the checkpoint keeps the file's
    rows."""
    from storyteller.pipeline import launch_training

    out = tmp_path / "ddp"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("*.pth", "history.json"))
    vocab = Vocabulary.load(out / "vocab.pkl")
    gen = torch.Generator().manual_seed(4)
    vectors = {w: torch.randn(8, generator=gen).tolist() for w in vocab.itos[4:]}
    glove = write_glove(tmp_path / "glove.8d.txt", vectors)
    model = {"decoder": "lstm", "hidden_size": 16, "freeze_embeddings": True}
    train = TrainConfig(num_epochs=1, batch_size=32)
    launch_training(
        2, tiny_data, out, train, model, device="cpu", log=lambda _: None, embeddings=glove
    )
    table = load_model(out / BEST_CHECKPOINT, vocab)[0].word_embedding().weight
    assert table.shape == (len(vocab), 8)
    for word, values in vectors.items():
        assert torch.allclose(table[vocab.stoi[word]], torch.tensor(values), atol=1e-6)

import json

import pytest
import torch

from storyteller import pipeline
from storyteller.checkpoint import load_model, read_checkpoint, save_checkpoint, strip_module_prefix
from storyteller.config import ModelConfig, TrainConfig
from storyteller.errors import StorytellerError
from storyteller.model import CaptionModel
from storyteller.runtime import torch_save_atomic
from storyteller.vocab import Vocabulary

SMALL = {"hidden_size": 64, "embed_size": 32}
quiet = lambda _: None  # noqa: E731


class _Interrupt(Exception):
    pass


def _fresh_run(tiny_data, tiny_run, tmp_path):
    """A run folder sharing the tiny run's features, splits and vocab, without a model."""
    for name in ("features", "splits.json", "vocab.pkl"):
        src, dst = tiny_run / name, tmp_path / name
        if src.is_dir():
            dst.mkdir(parents=True)
            for f in src.iterdir():
                (dst / f.name).write_bytes(f.read_bytes())
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    return tmp_path


def test_checkpoint_is_a_plain_state_dict_with_configs(tiny_run):
    checkpoint = torch.load(tiny_run / "best_model.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert checkpoint["model_config"]["encoder"] == "efficientnet_lite0"
    assert checkpoint["model_config"]["hidden_size"] == 64
    assert checkpoint["train_config"]["num_epochs"] == 2
    vocab = Vocabulary.load(tiny_run / "vocab.pkl")
    assert checkpoint["vocab_fingerprint"] == vocab.fingerprint
    assert {"optimizer", "epoch", "history", "best_val_loss"} <= set(checkpoint)
    model, _ = load_model(tiny_run / "best_model.pth", vocab)  # rebuilt from the file alone
    assert isinstance(model, CaptionModel) and not model.training
    history = json.loads((tiny_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert (tiny_run / "loss_curve.png").stat().st_size > 1000


def test_dataparallel_prefix_never_saved_and_stripped_on_load(tmp_path):
    model = CaptionModel(ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4))
    save_checkpoint(tmp_path / "a.pth", torch.nn.DataParallel(model))
    assert not any(k.startswith("module.") for k in read_checkpoint(tmp_path / "a.pth")["model"])
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert strip_module_prefix(prefixed).keys() == model.state_dict().keys()


def test_wrong_vocab_and_broken_files_are_refused(tiny_run, tmp_path):
    with pytest.raises(StorytellerError, match="different vocabulary"):
        load_model(tiny_run / "best_model.pth", Vocabulary(["zebra"], 1))
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(StorytellerError, match="not a loadable"):
        read_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(StorytellerError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(StorytellerError, match="not a storyteller checkpoint"):
        read_checkpoint(tmp_path / "other.pth")


def test_pickled_module_checkpoints_are_refused(tmp_path):
    model = CaptionModel(ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4))
    torch.save(model, tmp_path / "module.pth")  # the counter-example: a whole pickled module
    with pytest.raises(StorytellerError, match="not a loadable"):
        read_checkpoint(tmp_path / "module.pth")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "best_model.pth"
    torch_save_atomic({"version": 1}, path)

    def crash(obj, f):
        open(f, "wb").write(b"half")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        torch_save_atomic({"version": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pth"]


def test_interrupted_training_resumes_and_matches_uninterrupted(tiny_data, tiny_run, tmp_path):
    config = TrainConfig(num_epochs=3, batch_size=32, patience=10)
    straight = _fresh_run(tiny_data, tiny_run, tmp_path / "straight")
    pipeline.train_step(tiny_data, straight, config, SMALL, log=quiet)

    run = _fresh_run(tiny_data, tiny_run, tmp_path / "interrupted")

    def die_after_first_epoch(record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        pipeline.train_step(
            tiny_data, run, config, SMALL, on_epoch=die_after_first_epoch, log=quiet
        )
    assert read_checkpoint(run / "last.pth")["epoch"] == 1
    messages = []
    result = pipeline.train_step(tiny_data, run, config, SMALL, log=messages.append)
    assert "resuming" in messages[0] and [h["epoch"] for h in result.history] == [1, 2, 3]
    expected = json.loads((straight / "history.json").read_text())
    assert [h["val_loss"] for h in result.history] == pytest.approx(
        [h["val_loss"] for h in expected], rel=1e-4
    )
    # A finished run re-run does nothing more.
    again = pipeline.train_step(tiny_data, run, config, SMALL, log=quiet)
    assert len(again.history) == 3


def test_resume_refuses_another_architecture(tiny_data, tiny_run, tmp_path):
    run = _fresh_run(tiny_data, tiny_run, tmp_path)
    pipeline.train_step(tiny_data, run, TrainConfig(num_epochs=1, batch_size=32), SMALL, log=quiet)
    with pytest.raises(StorytellerError, match="different architecture.*hidden_size"):
        pipeline.train_step(
            tiny_data,
            run,
            TrainConfig(num_epochs=2),
            {"hidden_size": 32, "embed_size": 32},
            log=quiet,
        )
    result = pipeline.train_step(
        tiny_data,
        run,
        TrainConfig(num_epochs=1),
        {"hidden_size": 32, "embed_size": 32},
        resume=False,
        log=quiet,
    )
    assert len(result.history) == 1


def test_early_stopping(tiny_data, tiny_run, tmp_path):
    run = _fresh_run(tiny_data, tiny_run, tmp_path)
    # A learning rate this large makes validation loss stop improving at once.
    result = pipeline.train_step(
        tiny_data,
        run,
        TrainConfig(num_epochs=30, lr=5.0, patience=2, batch_size=32),
        SMALL,
        log=quiet,
    )
    assert result.stopped_early and result.epochs_run < 30

import contextlib
import errno
import io
import json
from pathlib import Path

import pytest
import torch

from storyteller import pipeline
from storyteller.config import ModelConfig, TrainConfig
from storyteller.data.vocab import Vocabulary
from storyteller.errors import StorytellerError
from storyteller.models import DECODERS, LSTMDecoder, build_model, register_decoder
from storyteller.models.checkpoint import (
    load_model,
    read_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from storyteller.runtime import torch_save_atomic, write_json
from storyteller.training import train as train_module
from storyteller.training.state import TrainingState, restore_rng_states, restore_scaler
from storyteller.training.train import make_batch_loss, mean_extra_losses, parallelize, train_epoch

SMALL = {"decoder": "lstm", "hidden_size": 64, "embed_size": 32}
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
    assert isinstance(model, LSTMDecoder) and not model.training
    history = json.loads((tiny_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert (tiny_run / "loss_curve.png").stat().st_size > 1000


def test_dataparallel_prefix_never_saved_and_stripped_on_load(tmp_path):
    model = LSTMDecoder(
        ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4, decoder="lstm")
    )
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
    model = LSTMDecoder(
        ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4, decoder="lstm")
    )
    torch.save(model, tmp_path / "module.pth")  # the counter-example: a whole pickled module
    with pytest.raises(StorytellerError, match="not a loadable"):
        read_checkpoint(tmp_path / "module.pth")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "best_model.pth"
    torch_save_atomic({"version": 1}, path)

    def crash(obj, file):
        file.write(b"half")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        torch_save_atomic({"version": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pth"]


@pytest.mark.parametrize("full_disk", [0, 1024], indirect=True, ids=["no room", "1 KB left"])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, full_disk, monkeypatch):
    path = tmp_path / "best_model.pth"
    torch.save({"version": 1}, path)
    with pytest.raises(StorytellerError) as error:
        torch_save_atomic({"version": 2, "weights": torch.zeros(10_000)}, path)
    assert str(error.value).startswith(f"could not write {path}: no space left on device;")
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pth"]

    def over_quota(*_, **__):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(Path, "write_text", over_quota)
    with pytest.raises(StorytellerError, match=r"write .*history.json: disk quota exceeded"):
        write_json(tmp_path / "history.json", [])


def test_json_with_nan_is_refused_naming_the_file(tmp_path):
    with pytest.raises(StorytellerError, match=r"metrics.json not written: .*nan"):
        write_json(tmp_path / "metrics.json", {"greedy": {"test_loss": float("nan")}})
    assert not list(tmp_path.iterdir())


def _diverge_in_epoch(monkeypatch, diverging: int) -> None:
    """Make training blow up in epoch ``diverging``: its weights turn NaN, as a learning rate
    far too large does, and so do its training and validation losses."""
    real = train_module.train_epoch

    def train_epoch(network, state, *args, **kwargs):
        loss, extra = real(network, state, *args, **kwargs)
        if state.epoch + 1 == diverging:
            with torch.no_grad():
                for parameter in state.model.parameters():
                    parameter.fill_(float("nan"))
            loss = float("nan")
        return loss, extra

    monkeypatch.setattr(train_module, "train_epoch", train_epoch)


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_diverging_run_stops_naming_the_epoch_and_saves_nothing_of_it(
    tiny_data, tiny_run, tmp_path, monkeypatch
):
    run = _fresh_run(tiny_data, tiny_run, tmp_path)
    _diverge_in_epoch(monkeypatch, 2)
    config = TrainConfig(num_epochs=3, batch_size=32)
    with pytest.raises(
        StorytellerError, match="training diverged at epoch 2: train loss nan"
    ) as error:
        pipeline.train_step(tiny_data, run, config, SMALL, log=quiet)
    assert f"{run / 'last.pth'} still holds epoch 1" in str(error.value)
    assert "\n" not in str(error.value) and "--lr" in str(error.value)
    for name in ("last.pth", "best_model.pth"):
        checkpoint = read_checkpoint(run / name)
        assert checkpoint["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert [h["epoch"] for h in _strict_json(run / "history.json")] == [1]


def test_no_resume_removes_the_earlier_runs_model_before_it_trains(
    tiny_data, tiny_run, tmp_path, monkeypatch
):
    run = _fresh_run(tiny_data, tiny_run, tmp_path)
    earlier = ("last.pth", "best_model.pth", "history.json", "loss_curve.png")
    for name in earlier:
        (run / name).write_bytes((tiny_run / name).read_bytes())
    _diverge_in_epoch(monkeypatch, 1)
    messages = []
    with pytest.raises(StorytellerError, match="diverged at epoch 1: .*no checkpoint written"):
        pipeline.train_step(
            tiny_data, run, TrainConfig(num_epochs=2, batch_size=32), SMALL, resume=False,
            log=messages.append,
        )  # fmt: skip
    assert f"--no-resume: removed the earlier run's {', '.join(earlier)} from {run}" in messages
    assert not any((run / name).exists() for name in earlier)


def _straight_and_interrupted(tiny_data, tiny_run, tmp_path, config: TrainConfig):
    """An uninterrupted run's history, and a run folder whose training died after epoch 1."""
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
    return json.loads((straight / "history.json").read_text()), run


def test_interrupted_training_resumes_and_matches_uninterrupted(tiny_data, tiny_run, tmp_path):
    config = TrainConfig(num_epochs=3, batch_size=32, patience=10)
    expected, run = _straight_and_interrupted(tiny_data, tiny_run, tmp_path, config)
    messages = []
    result = pipeline.train_step(tiny_data, run, config, SMALL, log=messages.append)
    assert "resuming" in messages[0] and [h["epoch"] for h in result.history] == [1, 2, 3]
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
            {"decoder": "lstm", "hidden_size": 32, "embed_size": 32},
            log=quiet,
        )
    result = pipeline.train_step(
        tiny_data,
        run,
        TrainConfig(num_epochs=1),
        {"decoder": "lstm", "hidden_size": 32, "embed_size": 32},
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


# --------------------------------------------------------------------------------------------
# Resume across devices. CI has no GPU, so a checkpoint "written on a GPU" is made the way
# CUDA code writes one: every tensor stored with the location "cuda:0", the random states of
# two GPUs, and the gradient scaler of a mixed-precision run.
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _storages_tagged(location: str):
    """``torch.save`` inside this block records every tensor as living on ``location``."""
    import torch.serialization as serialization

    def tag(storage):
        return location

    serialization.register_package(-100, tag, lambda storage, where: None)
    try:
        yield
    finally:
        serialization._package_registry[:] = [
            entry for entry in serialization._package_registry if entry[1] is not tag
        ]


def _as_if_written_on_two_gpus(path):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["cuda_rng_states"] = [torch.randint(0, 255, (16,), dtype=torch.uint8)] * 2
    checkpoint["scaler"] = {
        "scale": 32768.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 7,
    }
    with _storages_tagged("cuda:0"):
        torch.save(checkpoint, path)


def test_checkpoint_written_on_gpus_resumes_on_the_cpu(tiny_data, tiny_run, tmp_path):
    config = TrainConfig(num_epochs=3, batch_size=32, patience=10)
    expected, run = _straight_and_interrupted(tiny_data, tiny_run, tmp_path, config)
    _as_if_written_on_two_gpus(run / "last.pth")
    if not torch.cuda.is_available():  # the file really is GPU-shaped: plain torch.load fails
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(run / "last.pth", weights_only=True)

    messages = []
    result = pipeline.train_step(tiny_data, run, config, SMALL, device="cpu", log=messages.append)
    assert any("written on 2 GPU(s) and resumes on the CPU" in m for m in messages)
    assert any("resuming from" in m for m in messages)
    # The CPU random state and the data order came back: the run repeats the uninterrupted one.
    assert [h["val_loss"] for h in result.history] == pytest.approx(
        [h["val_loss"] for h in expected], rel=1e-4
    )


def _gpu_checkpoint_states(count: int) -> dict:
    return {
        "rng_state": torch.get_rng_state(),
        "cuda_rng_states": [torch.full((16,), i, dtype=torch.uint8) for i in range(count)],
    }


def test_gpu_random_states_come_back_onto_as_many_gpus(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    cuda = torch.device("cuda")
    messages = []
    restore_rng_states(_gpu_checkpoint_states(2), cuda, log=messages.append)
    assert [s[0].item() for s in restored] == [0, 1] and not messages
    assert all(s.device.type == "cpu" and s.dtype == torch.uint8 for s in restored)

    restored.clear()
    restore_rng_states(_gpu_checkpoint_states(4), cuda, log=messages.append)  # 4 GPUs wrote it
    assert not restored and "4 GPU(s) but 2 are visible" in messages[-1]
    restore_rng_states({"rng_state": torch.get_rng_state()}, cuda, log=messages.append)
    assert not restored and "written on the CPU" in messages[-1]


def test_random_states_are_cpu_bytes_wherever_they_were_loaded():
    """The CUDA failure: a state mapped off the CPU (or to another dtype) must still restore."""
    generator = torch.Generator().manual_seed(3)
    saved = generator.get_state()
    expected = torch.rand(4, generator=generator)
    state = TrainingState.create(
        ModelConfig(vocab_size=10, feature_dim=4, decoder="lstm"),
        TrainConfig(),
        torch.device("cpu"),
    )
    checkpoint = {
        **state.checkpoint_extra(TrainConfig(), Vocabulary(["a"], 1), torch.device("cpu")),
        "model": state.model.state_dict(),
        "generator_state": saved.to(torch.int64),  # not a ByteTensor any more
    }
    state.restore(checkpoint, torch.device("cpu"), log=quiet)
    assert torch.equal(torch.rand(4, generator=state.generator), expected)


def test_gradient_scaler_resumes_only_what_it_has():
    messages = []
    enabled = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)  # stands in for CUDA
    restore_scaler(enabled, {}, log=messages.append)  # a CPU checkpoint resumed with AMP on
    assert enabled.get_scale() == 1024.0 and "without mixed precision" in messages[0]
    gpu_state = {**torch.amp.GradScaler("cpu", init_scale=512.0).state_dict()}
    restore_scaler(enabled, gpu_state, log=messages.append)
    assert enabled.get_scale() == 512.0
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # a GPU checkpoint resumed on the CPU
    restore_scaler(disabled, gpu_state, log=messages.append)
    assert not disabled.is_enabled() and len(messages) == 1


def test_one_process_with_several_gpus_wraps_in_dataparallel(monkeypatch):
    model = LSTMDecoder(
        ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4, decoder="lstm")
    )
    cuda = torch.device("cuda")
    messages = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    wrapped = parallelize(model, TrainConfig(), cuda, log=messages.append)
    assert isinstance(wrapped, torch.nn.DataParallel) and "2 GPUs" in messages[0]
    assert parallelize(model, TrainConfig(data_parallel=False), cuda, log=quiet) is model
    assert parallelize(model, TrainConfig(), torch.device("cpu"), log=quiet) is model
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parallelize(model, TrainConfig(), cuda, log=quiet) is model


# --------------------------------------------------------------------------------------------
# Decoders through training: built by the registry, their extra losses minimised and reported
# but never validated, their optimiser their own, and last.pth from before decoders had names
# --------------------------------------------------------------------------------------------


class _Penalised(LSTMDecoder):
    """The LSTM plus an extra loss term worth 100 that has no gradient: it must appear in the
    history as ``train_penalty`` and nowhere else, and must not change what is learned."""

    def forward(self, features, captions):
        logits, _ = super().forward(features, captions)  # (B, T, V)
        return logits, {"penalty": 100.0 + 0.0 * logits.sum()}


class _SGD(LSTMDecoder):
    """The LSTM with another recipe (as a transformer will bring AdamW and warm-up)."""

    def configure_optimizer(self, train_config, extra_groups=()):
        optimizer = torch.optim.SGD(
            [{"params": self.parameters()}, *extra_groups], lr=train_config.lr
        )
        return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)


@pytest.fixture
def test_decoders():
    register_decoder("penalised")(_Penalised)
    register_decoder("sgd")(_SGD)
    yield
    DECODERS.pop("penalised", None)
    DECODERS.pop("sgd", None)


def test_extra_losses_are_added_to_what_is_minimised(test_decoders):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4, decoder="penalised")
    )
    batch_loss = make_batch_loss(torch.device("cpu"), False, pad_id=0, label_smoothing=0.0)
    terms = batch_loss(model, torch.randn(2, 4), torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]]))
    assert terms.extra["penalty"].item() == 100.0 and terms.cross_entropy.item() < 100
    assert terms.total.item() == pytest.approx(terms.cross_entropy.item() + 100.0)
    # nn.DataParallel gathers each GPU's scalar into a vector: the term is their mean.
    gathered = mean_extra_losses({"penalty": torch.tensor([0.25, 0.75]), "none": torch.tensor(2.0)})
    assert {k: v.item() for k, v in gathered.items()} == {"penalty": 0.5, "none": 2.0}


def test_extra_losses_are_reported_but_not_validated(tiny_data, tiny_run, tmp_path, test_decoders):
    config = TrainConfig(num_epochs=2, batch_size=32)
    plain = pipeline.train_step(
        tiny_data, _fresh_run(tiny_data, tiny_run, tmp_path / "lstm"), config, SMALL, log=quiet
    )
    run = _fresh_run(tiny_data, tiny_run, tmp_path / "penalised")
    result = pipeline.train_step(
        tiny_data, run, config, {**SMALL, "decoder": "penalised"}, log=quiet
    )
    assert [h["train_penalty"] for h in result.history] == [100.0, 100.0]
    assert "train_penalty" not in plain.history[0]
    for key in ("train_loss", "val_loss", "val_perplexity"):  # cross-entropy, as for the LSTM
        assert [h[key] for h in result.history] == [h[key] for h in plain.history], key
    model, checkpoint = load_model(run / "best_model.pth")  # rebuilt through the registry
    assert type(model) is _Penalised and checkpoint["model_config"]["decoder"] == "penalised"


def test_training_takes_the_optimiser_from_the_decoder(test_decoders):
    config = ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4, decoder="lstm")
    cpu = torch.device("cpu")
    state = TrainingState.create(config, TrainConfig(lr=0.1), cpu)
    assert type(state.model) is LSTMDecoder and isinstance(state.optimizer, torch.optim.Adam)
    config.decoder = "sgd"
    state = TrainingState.create(config, TrainConfig(lr=0.1), cpu)
    assert type(state.model) is _SGD and isinstance(state.optimizer, torch.optim.SGD)


def test_last_checkpoint_from_before_decoders_had_names_resumes(tiny_data, tiny_run, tmp_path):
    config = TrainConfig(num_epochs=2, batch_size=32, patience=10)
    run = _fresh_run(tiny_data, tiny_run, tmp_path)

    def die_after_first_epoch(record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        pipeline.train_step(
            tiny_data, run, config, SMALL, on_epoch=die_after_first_epoch, log=quiet
        )
    checkpoint = torch.load(run / "last.pth", weights_only=True)
    del checkpoint["model_config"]["decoder"], checkpoint["model_config"]["decoder_options"]
    torch.save(checkpoint, run / "last.pth")  # as the code before the registry wrote it
    messages = []
    result = pipeline.train_step(tiny_data, run, config, SMALL, log=messages.append)
    assert "resuming" in messages[0] and [h["epoch"] for h in result.history] == [1, 2]
    assert read_checkpoint(run / "last.pth")["model_config"]["decoder"] == "lstm"


# --------------------------------------------------------------------------------------------
# Schedules: the LSTMs' per epoch on the validation loss, the transformer's per batch
# --------------------------------------------------------------------------------------------

TRANSFORMER = {
    "decoder": "transformer",
    "decoder_options": {"d_model": 16, "heads": 2, "ff_dim": 16, "warmup_steps": 4},
}


def _epoch_of_batches(state: TrainingState, grid: bool, batches: int = 6) -> None:
    """``batches`` optimiser steps of ``train_epoch`` on random 2-caption batches."""
    torch.manual_seed(0)
    shape = (2, 3, 4) if grid else (2, 4)  # (B, P, D) or (B, D)
    loader = [(torch.randn(*shape), torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]]))] * batches
    batch_loss = make_batch_loss(torch.device("cpu"), False, pad_id=0, label_smoothing=0.0)
    train_epoch(state.model, state, loader, batch_loss, TrainConfig(), torch.device("cpu"))


def _through_checkpoint(value):
    """``value`` through torch.save and a weights-only torch.load, as last.pth holds it."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_transformer_learning_rate_warms_up_batch_by_batch_then_decays():
    config = ModelConfig(vocab_size=10, feature_dim=4, **TRANSFORMER)
    state = TrainingState.create(config, TrainConfig(lr=0.01), torch.device("cpu"))
    assert isinstance(state.optimizer, torch.optim.AdamW) and state.schedule_per_batch
    lrs = [state.optimizer.param_groups[0]["lr"]]  # before the first batch: lr / warmup
    for _ in range(8):
        _epoch_of_batches(state, grid=True, batches=1)
        lrs.append(state.optimizer.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # linear warm-up
    assert lrs[4] == pytest.approx(0.01 * (4 / 5) ** 0.5)  # then inverse square root
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    # The validation loss does not move a per-batch schedule.
    state.end_epoch(1.0, 9.0, 0.0, patience=5)
    assert state.optimizer.param_groups[0]["lr"] == lrs[-1] and state.epoch == 1
    # Resume: the schedule's step count comes back from a weights-only checkpoint.
    saved = _through_checkpoint(state.scheduler.state_dict())
    fresh = TrainingState.create(config, TrainConfig(lr=0.01), torch.device("cpu"))
    fresh.scheduler.load_state_dict(saved)
    fresh.scheduler.step()  # the next batch
    state.scheduler.step()
    assert fresh.optimizer.param_groups[0]["lr"] == state.optimizer.param_groups[0]["lr"]


def test_lstm_schedule_is_still_per_epoch_on_the_validation_loss():
    config = ModelConfig(vocab_size=10, feature_dim=4, embed_size=4, hidden_size=4, decoder="lstm")
    state = TrainingState.create(config, TrainConfig(lr=0.1, lr_patience=0), torch.device("cpu"))
    assert not state.schedule_per_batch
    before = state.scheduler.state_dict()
    _epoch_of_batches(state, grid=False)
    assert state.scheduler.state_dict() == before  # batches leave it alone
    assert state.optimizer.param_groups[0]["lr"] == 0.1
    state.end_epoch(1.0, 2.0, 0.0, patience=5)
    assert state.optimizer.param_groups[0]["lr"] == 0.1  # the first loss is the best so far
    state.end_epoch(1.0, 3.0, 0.0, patience=5)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # a plateau: halved

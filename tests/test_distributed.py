"""DistributedDataParallel on the CPU: two processes with the gloo backend under torchrun.

The same code runs with NCCL on GPUs (Kaggle's T4 x2); what these tests check does not depend
on the backend: one set of files written by rank 0, the one-process validation loss, and a
resume after a process is killed that repeats the uninterrupted run.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ddp_kill_worker import CONFIG, MODEL
from test_train import _fresh_run

from storyteller.config import train_flags
from storyteller.errors import StorytellerError
from storyteller.models.checkpoint import read_checkpoint
from storyteller.pipeline import launch_training
from storyteller.training.distributed import (
    DistContext,
    context_from_env,
    launch,
    process_device,
    session,
)
from storyteller.training.state import restore_rng_states, save_rng_states

KILL_WORKER = Path(__file__).with_name("ddp_kill_worker.py")
# Two processes see the same global batch of 32 in a different order (DistributedSampler) and
# average per-process token means: after two epochs on the tiny sample the validation loss
# measured 0.1-0.3 % away from one process's.
SINGLE_VS_DDP_REL = 0.02


def test_context_from_env_reads_torchrun_variables():
    assert context_from_env({}) == DistContext(0, 1, 0)
    context = context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (context.rank, context.world_size, context.local_rank) == (3, 4, 1)
    assert context.enabled and not context.is_main
    with pytest.raises(StorytellerError, match="RANK 4 of 4"):
        context_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(StorytellerError, match="malformed"):
        context_from_env({"WORLD_SIZE": "two"})


def test_one_process_context_needs_no_process_group():
    context = DistContext()
    assert context.sum([1.5, 2.0], device=None) == [1.5, 2.0]
    assert context.gather("x") == ["x"]
    context.barrier()  # nothing to wait for


@pytest.fixture(scope="module")
def ddp_run_all(tiny_data, tmp_path_factory):
    """`run-all` under torchrun with 2 CPU processes, the tiny run's recipe."""
    out = tmp_path_factory.mktemp("ddp-run-all")
    lines = []
    args = ["run-all", "--data", str(tiny_data), "--out", str(out)]
    args += ["--encoder", "efficientnet_lite0", "--threshold", "2", "--meteor", "none"]
    args += ["--epochs", "2", "--batch-size", "32", "--embed-size", "32", "--hidden-size", "64"]
    args += ["--decoder", "lstm"]  # the tiny run's captioner, to compare with
    launch(2, args + ["--device", "cpu"], log=lines.append)
    return out, lines


def test_ddp_run_all_writes_one_run_like_one_process(ddp_run_all, tiny_run):
    out, lines = ddp_run_all
    assert any("DistributedDataParallel over 2 processes" in line for line in lines)
    # Rank 0 alone logs and writes: one line per epoch, no stray temporary files.
    assert sum(line.lstrip().startswith("epoch   1/2") for line in lines) == 1
    assert not list(out.glob(".*.tmp"))
    ddp = json.loads((out / "history.json").read_text())
    single = json.loads((tiny_run / "history.json").read_text())
    assert [h["epoch"] for h in ddp] == [1, 2]
    assert [h["val_loss"] for h in ddp] == pytest.approx(
        [h["val_loss"] for h in single], rel=SINGLE_VS_DDP_REL
    )
    checkpoint = read_checkpoint(out / "last.pth")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rng_states"]) == 2
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"greedy", "beam5"} <= set(metrics)


def test_ddp_training_resumes_after_a_kill_and_matches_uninterrupted(tiny_data, tiny_run, tmp_path):
    flags = ["--data", str(tiny_data), "--device", "cpu", *train_flags(CONFIG, MODEL)]
    straight = _fresh_run(tiny_data, tiny_run, tmp_path / "straight")
    launch(2, ["train", "--out", str(straight), *flags], log=lambda _: None)

    run = _fresh_run(tiny_data, tiny_run, tmp_path / "killed")
    killed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(KILL_WORKER), str(tiny_data), str(run)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode != 0  # rank 0 died by SIGKILL; torchrun ended the other
    assert read_checkpoint(run / "last.pth")["epoch"] == 1

    lines = []  # resumed the way notebook 03 starts DDP: launch_training from Python
    result = launch_training(2, tiny_data, run, CONFIG, MODEL, device="cpu", log=lines.append)
    # the processes read the configs from a JSON file, not from a command line rebuilt from them
    assert lines[0].startswith("$ torchrun --standalone --nproc_per_node 2 -m storyteller.pipeline")
    assert lines[0].endswith("train.json")
    assert any("resuming from" in line and "1 epoch(s) done" in line for line in lines)
    expected = json.loads((straight / "history.json").read_text())
    assert result.best_checkpoint == run / "best_model.pth"
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["val_loss"] for h in result.history] == pytest.approx(
        [h["val_loss"] for h in expected], rel=1e-4
    )


def test_failed_launch_says_so_with_its_last_lines(tmp_path):
    with pytest.raises(StorytellerError, match="distributed run failed.*error:"):
        launch(1, ["train", "--out", str(tmp_path / "nothing-here")], log=lambda _: None)
    with pytest.raises(StorytellerError, match="at least 1"):
        launch(0, ["train"])


# --------------------------------------------------------------------------------------------
# The GPU-only branches, on the CPU: CI has no GPU, so torch.cuda is stood in for.
# --------------------------------------------------------------------------------------------


def test_each_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert process_device(DistContext(1, 2, 1), "cuda") == torch.device("cuda", 1)
    assert process_device(DistContext(), "cuda") == torch.device("cuda")  # one process
    assert process_device(DistContext(0, 2, 0), "cpu") == torch.device("cpu")  # gloo lane
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StorytellerError, match="only 1 are visible"):
        process_device(DistContext(1, 2, 1), "cuda")


@dataclass(frozen=True)
class _TwoProcesses(DistContext):
    """Rank ``rank`` of 2 whose gather returns what each rank would send (no process group)."""

    sent: tuple = ()

    def gather(self, obj) -> list:
        return list(self.sent) or [obj, obj]


def test_each_process_gets_back_its_own_gpu_random_state(monkeypatch):
    gpu_states = {
        0: torch.full((16,), 10, dtype=torch.uint8),
        1: torch.full((16,), 11, dtype=torch.uint8),
    }
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: gpu_states[device.index])
    per_rank = [
        save_rng_states(torch.device("cuda", rank), _TwoProcesses(rank, 2, rank))[
            "rank_rng_states"
        ][0]
        for rank in (0, 1)
    ]
    checkpoint = save_rng_states(
        torch.device("cuda", 0), _TwoProcesses(0, 2, 0, sent=tuple(per_rank))
    )
    assert checkpoint["world_size"] == 2 and checkpoint["cuda_rng_states"] == []

    restored = {}
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: restored.update({device.index: state})
    )
    messages = []
    restore_rng_states(checkpoint, torch.device("cuda", 1), _TwoProcesses(1, 2, 1), messages.append)
    assert restored[1][0].item() == 11 and restored[1].device.type == "cpu" and not messages
    # Another process count: nothing restored, and said so.
    restore_rng_states(checkpoint, torch.device("cuda", 0), DistContext(), messages.append)
    assert "written by 2 training process(es), this run has 1" in messages[0]


def test_session_under_torchrun_on_gpus_pins_the_gpu_then_joins_nccl(monkeypatch):
    import torch.distributed as dist

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("gpu", device)))
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend, timeout: calls.append((backend, timeout))
    )
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("left"))
    with session("cuda") as (context, device):
        assert context == DistContext(1, 2, 1) and device == torch.device("cuda", 1)
    assert calls[0] == ("gpu", torch.device("cuda", 1))  # before NCCL starts
    assert calls[1][0] == "nccl" and calls[1][1].total_seconds() == 120 * 60
    assert calls[2] == "left"

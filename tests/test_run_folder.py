"""Run folders in shared use: one writer at a time, no stale temporary files, the umask's
permissions, and a folder that cannot be written refused before any work."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import cli

from storyteller import pipeline, runlock, runtime
from storyteller.config import TrainConfig
from storyteller.data.vocab import Vocabulary
from storyteller.errors import StorytellerError
from storyteller.run_folder import ARTEFACT_SUBFOLDERS, LOCK_FILE
from storyteller.runlock import run_folder
from storyteller.runtime import atomic_path, torch_save_atomic, write_json
from storyteller.training.distributed import DistContext, hold_run_folder

TINY_MODEL = {"hidden_size": 64, "embed_size": 32, "decoder": "lstm"}
REPO = Path(__file__).resolve().parents[1]


def _quiet(_: str) -> None:
    pass


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run folder (features, vocabulary, a model) to write into."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time: what a refused step must not
    change."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _hold_in_another_process(out: Path) -> subprocess.Popen:
    """A process that holds ``out`` until it is killed (it says ``held`` once it does)."""
    code = (
        "import sys, time\n"
        "from storyteller.runlock import run_folder\n"
        "with run_folder(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_steps_on_a_folder_another_process_holds_are_refused_at_once_naming_it(tiny_data, run_copy):
    holder = _hold_in_another_process(run_copy)
    try:
        before = _snapshot(run_copy)
        result = cli(
            "train", "--data", str(tiny_data), "--out", str(run_copy), "--epochs", "1",
            "--hidden-size", "64", "--embed-size", "32", "--decoder", "lstm", "--device", "cpu",
        )  # fmt: skip
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {run_copy}/ is in use by pid {holder.pid} (python -c")
        assert f" on {socket.gethostname()}): wait for it or use another --out" in lines[0]
        with pytest.raises(StorytellerError, match=f"in use by pid {holder.pid} "):
            pipeline.features_step(tiny_data, run_copy, "efficientnet_lite0", log=_quiet)
        with pytest.raises(StorytellerError, match=f"in use by pid {holder.pid} "):
            pipeline.run_all(tiny_data, run_copy, "efficientnet_lite0", log=_quiet)
        assert _snapshot(run_copy) == before  # refused before any work: nothing written
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait()
    with run_folder(run_copy, log=_quiet):  # the kernel dropped the dead holder's lock
        pass


def _locked_elsewhere(folder: Path) -> bool:
    """Whether a new lock on ``folder``'s lock file (as another process would take) fails."""
    with open(folder / LOCK_FILE, "rb") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        return False


def test_training_holds_its_folder_while_it_runs_and_frees_it_after(tiny_data, run_copy):
    held_at_epochs = []
    pipeline.train_step(
        tiny_data,
        run_copy,
        TrainConfig(num_epochs=3, batch_size=32),  # resumes the tiny run's 2 epochs
        TINY_MODEL,
        on_epoch=lambda record: held_at_epochs.append(_locked_elsewhere(run_copy)),
        log=_quiet,
    )
    assert held_at_epochs == [True]
    assert not _locked_elsewhere(run_copy)
    assert (run_copy / LOCK_FILE).read_text() == ""  # nobody named once released


def test_nested_steps_enter_their_folder_again_and_other_threads_are_refused(tmp_path):
    refusals = []

    def other_thread():
        try:
            with run_folder(tmp_path, log=_quiet):
                pass
        except StorytellerError as exc:
            refusals.append(str(exc))

    with run_folder(tmp_path, log=_quiet):
        with run_folder(tmp_path, log=_quiet):  # run-all -> train: no deadlock
            assert _locked_elsewhere(tmp_path)
        assert _locked_elsewhere(tmp_path)  # the inner step left the outer one's lock alone
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=30)
    assert not _locked_elsewhere(tmp_path)
    assert len(refusals) == 1
    assert f"is in use by pid {os.getpid()} (another thread of this process)" in refusals[0]


def test_run_all_nests_its_steps_in_one_hold(tiny_data, run_copy):
    results = pipeline.run_all(
        tiny_data,
        run_copy,
        "efficientnet_lite0",
        TrainConfig(num_epochs=3, batch_size=32),
        TINY_MODEL,
        threshold=2,
        beam_sizes=(1,),
        meteor="none",
        device="cpu",
        log=_quiet,
    )
    assert "greedy" in results
    assert not _locked_elsewhere(run_copy)


def test_a_refusal_on_rank_0_stops_every_rank(tmp_path, monkeypatch):
    """Under torchrun rank 0 alone locks; the others raise its refusal instead of waiting."""

    class Rank1(DistContext):
        def gather(self, obj):
            return ["outputs/ is in use by pid 1 (...)", obj]

    with pytest.raises(StorytellerError, match=r"^outputs/ is in use by pid 1 "):
        with hold_run_folder(tmp_path, _quiet, Rank1(rank=1, world_size=2)):
            pass
    assert not (tmp_path / LOCK_FILE).exists()  # rank 1 never touched the lock


def _leftover_of(target: Path, nbytes: int) -> Path:
    """A file named exactly as ``atomic_path`` names its temporary file for ``target``, as a
    kill in the middle of the write leaves it."""
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        name = tmp.name
        raise KeyboardInterrupt  # the write stops; atomic_path removes its file
    leftover = target.parent / name
    leftover.write_bytes(b"\0" * nbytes)
    return leftover


def test_stale_temp_files_are_removed_when_a_step_takes_the_folder(tmp_path):
    out = tmp_path / "run"
    stale = [
        _leftover_of(out / "best_model.pth", 1_500_000),
        _leftover_of(out / "features" / "features.json", 500_000),
    ]
    kept = [out / ".notes.tmp", out / "keep.tmp", out / ".best_model.pth.tmp"]
    kept += [out / "Images" / ".a.jpg.abcdefgh.tmp"]  # not an artefact folder of a run
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not atomic_path's")
    lines = []
    with run_folder(out, ARTEFACT_SUBFOLDERS, log=lines.append):
        pass
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert lines == [
        f"removed 2 temporary file(s) (2.0 MB) that an interrupted write left in {out}/"
    ]
    with run_folder(out, ARTEFACT_SUBFOLDERS, log=lines.append):
        pass
    assert len(lines) == 1  # nothing left to say


def test_without_fcntl_nothing_is_locked_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)
    leftover = _leftover_of(tmp_path / "vocab.pkl", 10)
    lines = []
    with run_folder(tmp_path, log=lines.append):
        pass
    assert len(lines) == 1
    assert lines[0].startswith(f"warning: {tmp_path}/ is not locked (this system has no fcntl)")
    assert leftover.exists()  # removing it is only safe under the lock


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
@pytest.mark.parametrize("proc", [True, False], ids=["proc-status", "set-and-restore"])
def test_artefacts_get_the_umasks_permissions(tmp_path, monkeypatch, umask, mode, proc):
    if not proc:  # a system without /proc/self/status (macOS): read by setting it back
        monkeypatch.setattr(runtime, "_PROC_STATUS", str(tmp_path / "no-such-file"))
    previous = os.umask(umask)
    try:
        assert runtime.current_umask() == umask
        write_json(tmp_path / "metrics.json", {"bleu4": 0.1})
        torch_save_atomic({"weights": torch.zeros(2)}, tmp_path / "best_model.pth")
        Vocabulary.build(["a dog runs"], threshold=1).save(tmp_path / "vocab.pkl")
        assert os.umask(umask) == umask  # reading it left it as it was
    finally:
        os.umask(previous)
    for name in ("metrics.json", "best_model.pth", "vocab.pkl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_run_folder_under_a_file_is_refused_before_any_work(tiny_data, tmp_path):
    """A path no one can create, root included."""
    (tmp_path / "some_file").write_text("")
    out = tmp_path / "some_file" / "sub"
    result = cli("train", "--data", str(tiny_data), "--out", str(out), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write to the run folder {out}: Not a directory; fix its permissions "
        "or use another --out"
    ]
    for step in (pipeline.evaluate_step, pipeline.vocab_step):
        with pytest.raises(StorytellerError, match=f"^cannot write to the run folder {out}: "):
            step(tiny_data, out, log=_quiet)


def _chmod_binds() -> bool:
    """Whether a folder without write permission refuses this process (not root's, which
    ignores the bits unless it lacks CAP_DAC_OVERRIDE)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o555)
        try:
            Path(folder, "probe").touch()
        except PermissionError:
            return True
        finally:
            os.chmod(folder, 0o755)
        return False


@pytest.mark.skipif(not _chmod_binds(), reason="chmod does not bind root (the test above does)")
def test_a_read_only_run_folder_is_refused_before_any_epoch(tiny_data, run_copy):
    epochs = []
    run_copy.chmod(0o555)
    try:
        with pytest.raises(StorytellerError, match=f"^cannot write to the run folder {run_copy}"):
            pipeline.train_step(
                tiny_data,
                run_copy,
                TrainConfig(num_epochs=3, batch_size=32),
                TINY_MODEL,
                on_epoch=epochs.append,
                log=_quiet,
            )
        with pytest.raises(StorytellerError, match=f"^cannot write to the run folder {run_copy}"):
            pipeline.evaluate_step(tiny_data, run_copy, (1,), meteor="none", log=_quiet)
    finally:
        run_copy.chmod(0o755)
    assert epochs == []


def test_every_file_a_run_writes_is_named_in_one_module(tiny_data, run_copy):
    """The run folder's files and folders are named in one module:
    everything features, vocabulary, training and evaluation leave there is one of its names,
    and ``RunPaths`` points inside the folder at those names."""
    from storyteller import run_folder

    pipeline.evaluate_step(tiny_data, run_copy, (1,), meteor="none", log=_quiet)
    named = {
        value for key, value in vars(run_folder).items() if key.isupper() and isinstance(value, str)
    }
    written = {
        path.relative_to(run_copy).as_posix()
        for path in run_copy.rglob("*")
        if path.parent == run_copy or path.parent.name != run_folder.ATTENTION_MAPS_DIR
    }
    assert written - {run_folder.FEATURES_DIR} <= named
    assert set(run_folder.RUN_ARTEFACTS) <= written  # every artefact the steps write is there
    paths = run_folder.RunPaths(run_copy)
    fields = ("features_index", "splits", "vocab", "checkpoint", "last_checkpoint", "history")
    for field in (*fields, "metrics", "test_captions", "baseline"):
        assert getattr(paths, field).is_file(), field


def test_a_full_disk_is_one_line_naming_what_could_not_be_written(
    run_copy, full_disk, monkeypatch, capsys
):
    """Not ``unexpected RuntimeError: [enforce fail at inline_container.cc:672]``; a write
    outside the atomic ones is named by the run folder."""
    from storyteller.cli import main

    model = ["--decoder", "lstm", "--hidden-size", "64", "--embed-size", "32"]
    argv = ["train", "--out", str(run_copy), "--epochs", "3", *model, "--batch-size", "32"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: could not write {run_copy}{os.sep}"), err
    assert ".pth: no space left on device; free some space there" in err
    assert pipeline.TrainResult.from_run(run_copy).epochs_run == 2  # the last good epoch

    def over_quota(*_, **__):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(pipeline, "vocab_step", over_quota)
    assert main(["vocab", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not write into {run_copy}: disk quota exceeded;"), err

"""Run folders in shared use: one writer at a time, no stale temporary files, the umask's
permissions, and a folder that cannot be written refused before any work (issue 10, items 5
and 8)."""

from __future__ import annotations

import os

import pytest
import torch

from storyteller import runtime
from storyteller.runtime import torch_save_atomic, write_json
from storyteller.vocab import Vocabulary


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

"""Several training processes, one per GPU (``DistributedDataParallel``), and how to start them.

``torchrun`` starts the processes and tells each one who it is through environment variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); :func:`session` reads them, joins the process
group (NCCL on GPUs, gloo on the CPU) and pins each process to its own GPU. Outside torchrun
it is a no-op, so the same ``train`` command runs as one process or as many::

    torchrun --standalone --nproc_per_node 2 -m storyteller train --data ... --out ...
    torchrun --nnodes 2 --node_rank 0 --rdzv_endpoint HOST:29500 --nproc_per_node 2 \\
        -m storyteller train ...                          # several machines (shared --out)

Rank 0 alone writes checkpoints, logs and metrics; every rank computes and the losses are
summed over all of them, so the files look exactly like a one-process run's.

:func:`launch` starts the same command from Python (a notebook cell) as a child ``torchrun``
and streams its lines into the cell.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import StorytellerError
from ..runtime import get_device

#: How long a process waits for the others at a barrier: rank 0 may extract features or build
#: the vocabulary (``run-all``) while the others wait, so far longer than torch's default.
TIMEOUT_ENV = "STORYTELLER_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120


@dataclass(frozen=True)
class DistContext:
    """Who this process is among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when there are several processes (under torchrun)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for alone)."""
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over every process (float64, so sums stay exact)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """``obj`` from every process, in rank order."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


SINGLE_PROCESS = DistContext()


def context_from_env(environ: dict | None = None) -> DistContext:
    """The :class:`DistContext` that torchrun's variables describe (one process without them)."""
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise StorytellerError(f"malformed torchrun environment ({exc})") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise StorytellerError(f"malformed torchrun environment: RANK {rank} of {world_size}")
    return DistContext(rank, world_size, local_rank)


def process_device(context: DistContext, preferred: str | None = None) -> torch.device:
    """This process's device: its own GPU (``cuda:LOCAL_RANK``) under torchrun on GPUs."""
    device = get_device(preferred)
    if context.enabled and device.type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise StorytellerError(
                f"process {context.rank} wants GPU {context.local_rank}, but only "
                f"{torch.cuda.device_count()} are visible: --nproc_per_node must not exceed "
                "the GPUs of a machine"
            )
        device = torch.device("cuda", context.local_rank)
    return device


@contextlib.contextmanager
def session(preferred_device: str | None = None) -> Iterator[tuple[DistContext, torch.device]]:
    """Join the process group when started by torchrun; yield (context, this process's device).

    One process (no torchrun): yields rank 0 of 1 and ``get_device(preferred_device)``.
    """
    context = context_from_env()
    device = process_device(context, preferred_device)
    if not context.enabled:
        yield context, device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL starts: one GPU per process
    minutes = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_MIN)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=minutes)
    )
    try:
        yield context, device
    finally:
        dist.destroy_process_group()


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The ``torchrun`` command line (one machine) for ``python -m storyteller ARGS``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "storyteller",
        *args,
    ]


def launch(
    nproc: int, args: list[str], cwd: str | Path | None = None, log: Callable[[str], None] = print
) -> None:
    """Run ``python -m storyteller ARGS`` as ``nproc`` processes under torchrun, streaming its
    output to ``log`` line by line (the way a notebook cell shows it).

    A child torchrun rather than forking the notebook's kernel: a kernel that has touched CUDA
    cannot be forked, and spawned children's output would not reach the cell.

    Raises:
        StorytellerError: the run failed; the message gives the processes' own ``error:``
            line (the CLI's one-line errors), else the run's last lines.
    """
    if nproc < 1:
        raise StorytellerError(f"the number of processes must be at least 1, got {nproc}")
    command = torchrun_command(nproc, args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # torchrun would set 1 thread per process with a warning; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    log("$ torchrun --standalone --nproc_per_node " + f"{nproc} -m storyteller " + " ".join(args))
    tail: list[str] = []
    errors: list[str] = []
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            log(line)
            tail = (tail + [line])[-5:]
            if line.startswith("error:") and line not in errors:
                errors.append(line)
    if process.returncode:
        said = errors[:1] or tail
        raise StorytellerError(
            f"the distributed run failed (exit status {process.returncode}): " + " | ".join(said)
        )


def launch_training(
    nproc: int,
    data: str | Path,
    out: str | Path,
    train_config,
    model_overrides: dict | None = None,
    resume: bool = True,
    device: str | None = None,
    log: Callable[[str], None] = print,
    embeddings: str | Path | None = None,
    fine_tune_encoder: int = 0,
    encoder: str | None = None,
):
    """Train with ``nproc`` processes (DDP) from Python: ``python -m storyteller train`` under
    torchrun with the flags these configs map to; returns the :class:`TrainResult` read back
    from the run folder (the same as :func:`storyteller.pipeline.train_step` returns).
    ``fine_tune_encoder``/``encoder``: as ``train --fine-tune-encoder N --encoder NAME``."""
    from ..config import train_flags
    from .train import TrainResult

    args = ["train", "--data", str(data), "--out", str(out)]
    args += train_flags(train_config, model_overrides, resume)
    args += ["--device", device] if device else []
    args += ["--embeddings", str(embeddings)] if embeddings else []
    args += ["--fine-tune-encoder", str(fine_tune_encoder)] if fine_tune_encoder else []
    args += ["--encoder", encoder] if encoder else []
    launch(nproc, args, log=log)
    return TrainResult.from_run(out)

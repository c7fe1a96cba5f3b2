"""Several training processes, one per GPU (``DistributedDataParallel``), and how to start them.

:func:`session` joins the process group torchrun's variables describe (a no-op outside it), so
the same command runs as one process or many; rank 0 alone writes, and the losses are summed
over every rank, so the files look exactly like a one-process run's. :func:`launch` starts a
child torchrun from Python (a notebook cell) and streams its lines.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
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
from ..progress import Log
from ..run_folder import ARTEFACT_SUBFOLDERS
from ..runlock import run_folder
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
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
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
    """Join the process group when started by torchrun (NCCL on GPUs, gloo on the CPU);
    yield (context, this process's device)."""
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


def torchrun_command(nproc: int, args: list[str], module: str = "storyteller") -> list[str]:
    """The ``torchrun`` command line (one machine) for ``python -m MODULE ARGS``."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, f"--nproc_per_node={nproc}", "-m", module, *args]


def launch(
    nproc: int,
    args: list[str],
    cwd: str | Path | None = None,
    log: Log = print,
    module: str = "storyteller",
) -> None:
    """Run ``python -m MODULE ARGS`` as ``nproc`` processes under torchrun, streaming its
    output to ``log``; a failure says the processes' first ``error:`` line, else the last ones.
    A child torchrun rather than forking the kernel: a kernel that has touched CUDA cannot be
    forked, and spawned children's output would not reach the cell."""
    if nproc < 1:
        raise StorytellerError(f"the number of processes must be at least 1, got {nproc}")
    command = torchrun_command(nproc, args, module)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # torchrun would set 1 thread per process with a warning; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    log(f"$ torchrun --standalone --nproc_per_node {nproc} -m {module} " + " ".join(args))
    tail: list[str] = []
    errors: list[str] = []
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "bufsize": 1}
    with subprocess.Popen(command, cwd=cwd, env=env, **pipe) as process:
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


@contextlib.contextmanager
def hold_run_folder(
    out: str | Path, log: Log = print, context: DistContext = SINGLE_PROCESS
) -> Iterator[None]:
    """Hold ``out`` for writing while the block runs. Under torchrun rank 0 alone takes the
    lock and every process learns whether it could: a refused run fails on every rank at once
    instead of leaving the others waiting at a barrier."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if context.is_main:
            try:
                stack.enter_context(run_folder(out, ARTEFACT_SUBFOLDERS, log))
            except StorytellerError as exc:
                refusal = str(exc)
        refusals = [r for r in context.gather(refusal) if r]
        if refusals:
            raise StorytellerError(refusals[0])
        yield


def writes_run_folder(step: Callable) -> Callable:
    """Make a step hold its run folder (its ``out`` argument) before doing anything, so a busy
    or read-only folder is refused before any work; see :func:`hold_run_folder`."""
    signature = inspect.signature(step)

    @functools.wraps(step)
    def holding(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        given = arguments.arguments
        with hold_run_folder(given["out"], given["log"], given.get("context", SINGLE_PROCESS)):
            return step(*args, **kwargs)

    return holding

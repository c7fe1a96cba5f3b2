"""How long the command line takes to answer before any work: ``--help``, a command that fails
on a missing dataset folder, and one that fails for want of a story backend, side by side with
``python -c "import torch"`` (what every command would pay if it imported torch up front).

    python bench/startup.py [--repeat 7]

Each command runs ``--repeat`` times in a fresh interpreter, in turns (one of each, then the
next round), so a busy machine slows them alike; the median wall time of each is printed with
its ratio to ``import torch``. The machine's load average is printed too: on shared CPUs these
times move with it, the ratios much less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def commands(folder: str) -> dict[str, list[str]]:
    python = [sys.executable]
    return {
        "import torch (reference)": [*python, "-c", "import torch"],
        "storyteller --help": [*python, "-m", "storyteller", "--help"],
        "vocab --data <missing folder>": [
            *python,
            *("-m", "storyteller", "vocab", "--data", os.path.join(folder, "missing")),
            *("--out", os.path.join(folder, "out")),
        ],
        "story --backend hosted (no token)": [
            *python,
            *("-m", "storyteller", "story", "--caption", "a dog runs", "--backend", "hosted"),
        ],
    }


def run_once(argv: list[str], env: dict[str, str], expect_ok: bool) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if (done.returncode == 0) != expect_ok:  # each must end the way it is meant to
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs of each command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        # No token anywhere, so the hosted backend fails as on a fresh machine.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "STORYTELLER_"))}
        env["HF_HOME"] = os.path.join(folder, "hf")
        runs = commands(folder)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, argv in runs.items():
                ok = name.startswith(("import", "storyteller --help"))
                times[name].append(run_once(argv, env, expect_ok=ok))
    reference = statistics.median(times["import torch (reference)"])
    print(
        f"torch {torch.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), "
        f"load average {os.getloadavg()[0]:.1f}, median of {args.repeat} runs each"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:36s} {median:6.2f} s  (min {min(values):.2f}, max {max(values):.2f})  "
            f"{median / reference:.2f}x import torch"
        )


if __name__ == "__main__":
    main()

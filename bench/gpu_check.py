"""The GPU lane in one command: what CI (no GPU) cannot see, run and measured on a lent GPU.

    python bench/gpu_check.py                      # everything, on ../shared/data/flickr8k-1k
    python bench/gpu_check.py --steps tests,resume # a part
    python bench/gpu_check.py --quick --device cpu --data DIR   # the script itself, on a CPU

Steps, each a row of the table printed at the end (and ``OUT/gpu_check.json``):

* ``tests``: the tests that touch a device, with ``pytest --device DEVICE``;
* ``run-all``: the whole chain on the data with the offline encoder, 30 epochs (BLEU-4);
* ``resume``: ``train`` killed with SIGKILL after its second epoch, then run again: it must
  resume and give the uninterrupted run's validation losses;
* ``notebooks``: notebooks 01-05 on the data (``STORYTELLER_DATA_DIR``);
* ``train-speed``: seconds per epoch on Flickr30k-sized random data, batch 64 and 128;
* ``extraction``: ResNet50 (random weights: the machine may have no internet) forward pass
  alone against full extraction from the JPEGs, decoded on the GPU and with PIL;
* ``decoding``: greedy and beam-5 captions for 100 test images.

Exit status 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_run import flickr30k_sized  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "flickr8k-1k"
STEPS = ("tests", "run-all", "resume", "notebooks", "train-speed", "extraction", "decoding")
DEVICE_TESTS = (
    "tests/test_train.py",
    "tests/test_distributed.py",
    "tests/test_model_decoding.py",
    "tests/test_features.py",
    "tests/test_vocab.py",
    "tests/test_text_data.py",
    "tests/test_serving.py",
    "tests/test_app.py",
    "tests/test_real_photos.py",
)
Row = tuple[str, str, float]  # (what, result, seconds)


class Check:
    """The settings every step reads, and the CLI they run."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.data = Path(args.data)
        self.out = Path(args.out)
        self.quick = args.quick
        self.epochs = 2 if args.quick else 30
        self.run = self.out / "run"

    def cli(self, *args: str, env: dict | None = None, log: str | None = None, **kwargs):
        """``python -m storyteller ARGS`` on this device; output kept in ``OUT/LOG``."""
        result = subprocess.run(
            [sys.executable, "-m", "storyteller", *args, "--device", self.device],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            **kwargs,
        )
        if log:
            (self.out / log).write_text(result.stdout + result.stderr)
        if result.returncode:
            raise RuntimeError(_last_error(result.stdout + result.stderr))
        return result

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def _last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:300]


def _timed(fn: Callable[[], str]) -> tuple[str, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


def step_tests(check: Check) -> list[Row]:
    def run() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider"]
            + ["--device", check.device.split(":")[0], *DEVICE_TESTS],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        (check.out / "tests.log").write_text(result.stdout + result.stderr)
        summary = [
            line for line in result.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)
        ]
        if result.returncode:
            raise RuntimeError((summary or [_last_error(result.stdout)])[-1].strip("= "))
        return (summary or ["no summary"])[-1].strip("= ")

    return [("device tests (pytest --device)", *_timed(run))]


def step_run_all(check: Check) -> list[Row]:
    def run() -> str:
        check.cli(
            "run-all", "--data", str(check.data), "--out", str(check.run),
            "--encoder", "efficientnet_lite0", "--epochs", str(check.epochs), log="run-all.log",
        )  # fmt: skip
        metrics = json.loads((check.run / "metrics.json").read_text())
        return (
            f"BLEU-4 {metrics['greedy']['bleu4']:.4f} greedy / {metrics['beam5']['bleu4']:.4f} "
            f"beam 5, {len(json.loads((check.run / 'history.json').read_text()))} epochs"
        )

    return [("run-all (efficientnet_lite0)", *_timed(run))]


def _copy_prepared(run: Path, dest: Path) -> Path:
    """A run folder with the run's features, vocabulary and split, and no model."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copytree(run / "features", dest / "features")
    for name in ("vocab.pkl", "splits.json"):
        shutil.copy2(run / name, dest / name)
    return dest


def step_resume(check: Check) -> list[Row]:
    epochs, kill_after = 8, 2
    flags = ["--data", str(check.data), "--epochs", str(epochs), "--patience", "100"]

    def run() -> str:
        if not (check.run / "features").is_dir():
            raise RuntimeError("needs the run-all step's features first")
        straight = _copy_prepared(check.run, check.out / "resume-straight")
        check.cli("train", "--out", str(straight), *flags, log="resume-straight.log")
        killed = _copy_prepared(check.run, check.out / "resume-killed")
        process = subprocess.Popen(
            [sys.executable, "-m", "storyteller", "train", "--out", str(killed), *flags]
            + ["--device", check.device],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        history = killed / "history.json"
        while process.poll() is None:
            if history.is_file() and len(json.loads(history.read_text() or "[]")) >= kill_after:
                process.send_signal(signal.SIGKILL)  # the way a Kaggle session dies
                break
            time.sleep(0.01)
        process.wait()
        if process.returncode != -signal.SIGKILL:
            raise RuntimeError("training finished before it could be killed")
        done = len(json.loads(history.read_text()))
        resumed = check.cli("train", "--out", str(killed), *flags, log="resume-killed.log")
        if "resuming from" not in resumed.stdout:
            raise RuntimeError("the second run did not resume")
        expected = [h["val_loss"] for h in json.loads((straight / "history.json").read_text())]
        got = [h["val_loss"] for h in json.loads(history.read_text())]
        if len(got) != len(expected):
            raise RuntimeError(f"{len(got)} epochs after resume, {len(expected)} uninterrupted")
        worst = max(abs(a - b) / abs(b) for a, b in zip(got, expected, strict=True))
        verdict = "matches" if worst <= 1e-4 else "DIFFERS from"
        return (
            f"killed after epoch {done}, resumed; {verdict} the uninterrupted run "
            f"(max rel. val-loss diff {worst:.1e})"
        )

    return [("kill -9 and resume (train)", *_timed(run))]


def step_notebooks(check: Check) -> list[Row]:
    def run() -> str:
        cwd = check.out / "notebooks"
        env = {"STORYTELLER_DATA_DIR": str(check.data), "STORYTELLER_DEVICE": check.device}
        args = ["notebooks", "run", "--cwd", str(cwd)] + (["--smoke"] if check.quick else [])
        result = subprocess.run(
            [sys.executable, "-m", "storyteller", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env},
        )
        (check.out / "notebooks.log").write_text(result.stdout + result.stderr)
        if result.returncode:
            raise RuntimeError(_last_error(result.stdout + result.stderr))
        run = cwd / "outputs" / ("smoke" if check.quick else "")  # --smoke has its own folder
        metrics = json.loads((run / "metrics.json").read_text())
        space = (run / "space" / "app.py").is_file()
        return (
            f"01-05 ran; BLEU-4 {metrics['greedy']['bleu4']:.4f} / {metrics['beam5']['bleu4']:.4f}"
            + ("; Space folder built" if space else "")
        )

    return [("notebooks 01-05", *_timed(run))]


def step_train_speed(check: Check) -> list[Row]:
    from storyteller.config import ModelConfig, TrainConfig
    from storyteller.training.train import train_model

    images = 400 if check.quick else 31_783
    cache, dataset, splits, vocab = flickr30k_sized(images)
    captions = sum(len(dataset.captions[name]) for name in splits["train"])
    rows = []
    for batch in (64, 128):

        def run(batch: int = batch) -> str:
            config = TrainConfig(num_epochs=2, batch_size=batch)
            with tempfile.TemporaryDirectory() as out:
                result = train_model(
                    cache, dataset, splits, vocab, out,
                    ModelConfig(vocab_size=len(vocab), feature_dim=cache.dim), config,
                    torch.device(check.device), resume=False, log=lambda _: None,
                )  # fmt: skip
            seconds = result.history[-1]["seconds"]
            return f"{seconds:.1f} s/epoch, {captions / seconds:,.0f} captions/s (2nd epoch)"

        rows.append((f"train {images:,} images x 5, batch {batch}", *_timed(run)))
    return rows


def step_extraction(check: Check) -> list[Row]:
    from storyteller.data.captions import load_dataset
    from storyteller.features.cache import FeatureExtractor, extract_features
    from storyteller.features.encoders import build_encoder

    device = torch.device(check.device)
    encoder = build_encoder("resnet50", pretrained=False)
    extractor = FeatureExtractor("resnet50", device, encoder)
    batch = 8 if check.quick else 64
    pixels = torch.randn(batch, 3, 224, 224, device=device)  # (B, 3, H, W), already there
    for _ in range(3):
        extractor.encode_batch(pixels)  # warm-up: cuDNN picks its kernels
    check.sync()
    rounds = 2 if check.quick else 20
    started = time.perf_counter()
    for _ in range(rounds):
        extractor.encode_batch(pixels)
    check.sync()
    forward = batch * rounds / (time.perf_counter() - started)
    precision = "fp16 autocast" if device.type == "cuda" else "fp32"
    rows: list[Row] = [(f"ResNet50 forward alone ({precision})", f"{forward:,.0f} img/s", 0.0)]

    dataset = load_dataset(check.data)
    names = sorted(dataset.images)
    ways = [("device", 4), ("cpu", 4), ("cpu", 8)] if device.type == "cuda" else [("cpu", 1)]
    for decode_on, workers in ways:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            extract_features(
                dataset.image_dir, names, out, "resnet50", num_workers=workers,
                device=device, encoder=encoder, decode_on=decode_on,
            )  # fmt: skip
            seconds = time.perf_counter() - started
        rate = len(names) / seconds
        decoder = "decode_jpeg on the GPU" if decode_on == "device" else "PIL"
        rows.append(
            (
                f"extraction of {len(names)} images, {decoder}, {workers} workers",
                f"{rate:,.0f} img/s ({rate / forward:.0%} of the forward pass)",
                seconds,
            )
        )
    return rows


def step_decoding(check: Check) -> list[Row]:
    from storyteller.decoding import beam_search, greedy_decode
    from storyteller.models.checkpoint import load_model

    device = torch.device(check.device)
    model, _ = load_model(check.run / "best_model.pth", device=device)
    features = torch.randn(100, model.config.feature_dim, device=device)  # (100, feature_dim)
    rows = []
    for name, decode in (
        ("greedy", lambda: greedy_decode(model, features)),
        ("beam 5", lambda: beam_search(model, features, beam_size=5)),
    ):
        decode()  # warm-up
        times = []
        for _ in range(5):
            check.sync()
            started = time.perf_counter()
            decode()
            check.sync()
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        rows.append((f"decode 100 images, {name}", f"{median * 1000:.0f} ms (median of 5)", median))
    return rows


STEP_FUNCTIONS = {
    "tests": step_tests,
    "run-all": step_run_all,
    "resume": step_resume,
    "notebooks": step_notebooks,
    "train-speed": step_train_speed,
    "extraction": step_extraction,
    "decoding": step_decoding,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a dataset folder")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated: {STEPS}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEP_FUNCTIONS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    args.out = args.out or tempfile.mkdtemp(prefix="gpu-check-")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    check = Check(args)

    device = torch.device(args.device)
    hardware = (
        torch.cuda.get_device_name(device) + f" x{torch.cuda.device_count()}"
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores)"
    )
    print(f"gpu_check on {hardware}, torch {torch.__version__}; data {check.data}; out {check.out}")
    rows: list[Row] = []
    failed = 0
    for step in steps:
        print(f"... {step}", flush=True)
        try:
            rows += STEP_FUNCTIONS[step](check)
        except Exception as exc:  # one failed step is a row, the others still run
            failed += 1
            rows.append((step, f"FAILED: {type(exc).__name__}: {exc}", 0.0))
    width = max(len(what) for what, _, _ in rows)
    print(f"\n{'what':<{width}}  {'seconds':>8}  result")
    for what, result, seconds in rows:
        print(f"{what:<{width}}  {seconds:>8.1f}  {result}")
    report = {"hardware": hardware, "torch": torch.__version__, "rows": rows}
    (check.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

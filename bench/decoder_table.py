"""Every captioner on the same data, several seeds each: quality, training time and caption
latency, as one table with the mean and spread over seeds.

    python bench/decoder_table.py --data ../shared/data/flickr8k-1k --out outputs/decoders \
        [--seeds 0 1 2] [--epochs 30] [--variants lstm attention-bahdanau ...]

The grid features (EfficientNet-Lite0 offline, one cache: the pooled vector the LSTM reads is
the grid's mean), the vocabulary and the 80/10/10 split (seed 0) are made once in
``OUT/shared`` and every run reads them, so the runs differ only in the decoder and the
training seed (initial weights, batch order, dropout). Each run is a run folder
``OUT/<variant>-seed<k>`` (``best_model.pth``, ``metrics.json``, ...; ``features`` is a link
to the shared cache) plus ``bench.json`` with its timings; a finished run is reused, so an
interrupted table resumes where it stopped. The table goes to stdout, ``OUT/table.md`` and
``OUT/table.json``.

Timings are wall clock on whatever machine runs this; run nothing else beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from storyteller.config import TrainConfig
from storyteller.data.captions import find_image_dir
from storyteller.features.cache_format import load_feature_cache
from storyteller.inference import Captioner
from storyteller.pipeline import (
    evaluate_step,
    features_step,
    load_splits,
    resolve_data,
    train_step,
    vocab_step,
)
from storyteller.run_folder import RunPaths
from storyteller.runtime import write_json

#: name -> the model overrides ``train``/``run-all`` would get from the CLI flags.
VARIANTS = {
    "lstm": {"decoder": "lstm"},
    "attention-bahdanau": {"decoder": "attention", "decoder_options": {"attention": "bahdanau"}},
    "attention-luong": {"decoder": "attention", "decoder_options": {"attention": "luong"}},
    "transformer": {"decoder": "transformer"},
}
#: The table's score columns: metrics.json key -> header.
SCORES = {
    "bleu1": "BLEU-1",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "cider": "CIDEr-D",
    "distinct_captions": "distinct",
    "recall_at_5": "R@5",
}
DECODINGS = {"greedy": "greedy", "beam5": "beam 5"}


def prepare_shared(data: Path, out: Path, encoder: str) -> Path:
    """The grid cache, vocabulary and split every run shares (made once)."""
    shared = out / "shared"
    features_step(data, shared, encoder, layout="grid", log=print)
    vocab_step(data, shared, threshold=5, seed=0, log=print)
    return shared


def link_run(shared: Path, run: Path) -> None:
    """A run folder that reads the shared cache and holds its own copy of the vocabulary and
    split (so the folder is a complete run for ``evaluate``, ``caption`` or the app)."""
    run.mkdir(parents=True, exist_ok=True)
    src, dst = RunPaths(shared), RunPaths(run)
    if not dst.features.exists():
        dst.features.symlink_to(src.features.resolve(), target_is_directory=True)
    for name in (src.vocab, src.splits):
        if not (run / name.name).exists():
            shutil.copy2(name, run / name.name)


def latencies(data: Path, run: Path, images: int) -> dict[str, float]:
    """Median milliseconds to caption one photo, file to words (CNN included), one photo at a
    time, greedy and beam 5, with the run's captioner on the first ``images`` test photos."""
    paths = RunPaths(run)
    cache = load_feature_cache(paths.features)
    image_dir = find_image_dir(resolve_data(data, log=lambda _: None))
    photos = [image_dir / n for n in load_splits(run)["test"] if n in cache][:images]
    captioner = Captioner.from_files(paths.checkpoint, paths.vocab, torch.device("cpu"))
    result = {}
    for name, beam_size in (("greedy", 1), ("beam5", 5)):
        captioner.caption(photos[:1], beam_size=beam_size)  # warm-up: first-call allocations
        times = []
        for photo in photos:
            started = time.perf_counter()
            captioner.caption([photo], beam_size=beam_size)
            times.append(time.perf_counter() - started)
        result[name] = round(1000 * statistics.median(times), 1)
    return result


def epoch_times(history: list[dict]) -> dict:
    """Per-epoch times from history.json (resumed epochs too): the median is robust to an
    epoch slowed by another job, the sum is what the run took."""
    seconds = [h["seconds"] for h in history]
    return {
        "train_seconds": round(sum(seconds), 1),
        "epoch_seconds_median": round(statistics.median(seconds), 1),
        "epochs_run": len(history),
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
    }


def run_one(data: Path, shared: Path, out: Path, variant: str, seed: int, args) -> dict:
    """Train and evaluate one (variant, seed), or read the finished run's record."""
    run = out / f"{variant}-seed{seed}"
    record_path = run / "bench.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if "epoch_seconds_median" not in record:  # written by an earlier version of this script
            record.update(epoch_times(json.loads((run / "history.json").read_text())))
            write_json(record_path, record)
        return record
    link_run(shared, run)
    print(f"\n=== {variant}, seed {seed} -> {run}", flush=True)
    result = train_step(
        data, run, TrainConfig(num_epochs=args.epochs, seed=seed), VARIANTS[variant], device="cpu"
    )
    metrics = evaluate_step(data, run, (1, 5), meteor=args.meteor, device="cpu")
    record = {
        "variant": variant,
        "seed": seed,
        **epoch_times(result.history),
        "best_val_loss": round(result.best_val_loss, 4),
        "latency_ms": latencies(data, run, args.latency_images),
        "metrics": {name: {k: metrics[name][k] for k in SCORES} for name in DECODINGS},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    write_json(record_path, record)
    return record


def quiet_timings(data: Path, shared: Path, out: Path, variants: list[str], args) -> dict:
    """Training seconds per epoch and caption latency for each variant, measured one after
    the other on an otherwise idle machine (``--timings``): the runs' own timings are taken
    while other runs or jobs share the CPU. Two epochs from scratch (the median of their
    times) in ``OUT/timing-<variant>``, then the latency of the seed's finished run."""
    timings = {}
    for variant in variants:
        scratch = out / f"timing-{variant}"
        shutil.rmtree(scratch, ignore_errors=True)
        link_run(shared, scratch)
        config = TrainConfig(num_epochs=2, seed=0)
        history = train_step(data, scratch, config, VARIANTS[variant], device="cpu").history
        run = out / f"{variant}-seed{args.seeds[0]}"
        timings[variant] = {
            "epoch_seconds": statistics.median(h["seconds"] for h in history),
            "latency_ms": latencies(data, run, args.latency_images),
        }
        shutil.rmtree(scratch)
        print(f"{variant}: {timings[variant]}", flush=True)
    write_json(out / "timings.json", timings)
    return timings


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(
    records: list[dict], variants: list[str], timings: dict | None = None
) -> tuple[str, dict]:
    """Markdown rows (mean ± std over seeds) and the same numbers as data; with ``timings``
    (:func:`quiet_timings`), its s/epoch and latency replace the runs' own."""
    header = [
        "decoder", "decoding", *SCORES.values(), "val ppl", "epochs", "s/epoch", "latency"
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary: dict = {}
    for variant in variants:
        runs = [r for r in records if r["variant"] == variant]
        if not runs:
            continue
        seeds = [r["seed"] for r in runs]
        epochs_m, epochs_s = mean_spread([r["epochs_run"] for r in runs])
        epoch_m, epoch_s = mean_spread([r["epoch_seconds_median"] for r in runs])
        ppl_m, ppl_s = mean_spread([math.exp(r["best_val_loss"]) for r in runs])
        summary[variant] = {
            "seeds": seeds,
            "epochs": [epochs_m, epochs_s],
            "epoch_seconds": [epoch_m, epoch_s],
            "val_perplexity": [ppl_m, ppl_s],
        }
        for decoding, label in DECODINGS.items():
            cells = [f"`{variant}`", label]
            summary[variant][decoding] = {}
            for key in SCORES:
                m, s = mean_spread([r["metrics"][decoding][key] for r in runs])
                summary[variant][decoding][key] = [m, s]
                cells.append(f"{m:.3f} ± {s:.3f}")
            quiet = (timings or {}).get(variant)
            if quiet:
                latency = f"{quiet['latency_ms'][decoding]:.0f} ms"
                per_epoch = f"{quiet['epoch_seconds']:.0f}"
                summary[variant][decoding]["latency_ms"] = quiet["latency_ms"][decoding]
            else:
                lat_m, lat_s = mean_spread([r["latency_ms"][decoding] for r in runs])
                summary[variant][decoding]["latency_ms"] = [lat_m, lat_s]
                latency = f"{lat_m:.0f} ± {lat_s:.0f} ms"
                per_epoch = f"{epoch_m:.0f} ± {epoch_s:.0f}"
            cells += [
                f"{ppl_m:.1f} ± {ppl_s:.1f}",
                f"{epochs_m:.0f} ± {epochs_s:.0f}",
                per_epoch,
                latency,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="dataset folder (Images/ + captions)")
    parser.add_argument("--out", default="outputs/decoders")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="at most; early stopping ends most")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--meteor", default="auto", choices=["auto", "java", "nltk", "none"])
    parser.add_argument("--latency-images", type=int, default=20)
    parser.add_argument(
        "--timings",
        action="store_true",
        help="after the runs, time an epoch and a caption of each variant one at a time "
        "(run it with the machine otherwise idle; the table then shows these timings)",
    )
    args = parser.parse_args()

    out, data = Path(args.out), resolve_data(args.data)
    shared = prepare_shared(data, out, args.encoder)
    records = []
    # Seed-major order: an interrupted table has every decoder at the same number of seeds
    # (within a seed, in the order given; the table lists them in VARIANTS order).
    for seed in args.seeds:
        for variant in args.variants:
            records.append(run_one(data, shared, out, variant, seed, args))
    variants = [v for v in VARIANTS if v in args.variants]
    timings = None
    if args.timings:
        timings = quiet_timings(data, shared, out, variants, args)
    elif (out / "timings.json").is_file():
        timings = json.loads((out / "timings.json").read_text())
    markdown, summary = table(records, variants, timings)
    note = (
        f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), mean ± std; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; test split of "
        f"{len(load_splits(shared)['test'])} images; latency = one photo, file to words, "
        f"median of {args.latency_images}; epochs = epochs run (early stopping), s/epoch = "
        "median training epoch"
        + ("; s/epoch and latency timed one variant at a time (--timings)" if timings else "")
    )
    (out / "table.md").write_text(markdown + "\n\n" + note + "\n")
    write_json(out / "table.json", {"note": note, "summary": summary, "runs": records})
    print("\n" + markdown + "\n\n" + note)


if __name__ == "__main__":
    sys.exit(main())

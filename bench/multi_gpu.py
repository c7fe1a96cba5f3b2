"""Two GPUs, three ways: one GPU, ``nn.DataParallel`` and ``DistributedDataParallel``.

Trains the seed LSTM on Flickr30k-sized random data (31,783 images x 5 captions, 2048-d
features, a 5,156-word vocabulary: what ResNet50 + Flickr30k give) and prints, measured side
by side in one run, the seconds per epoch and captions per second of each way, and their
ratios to one GPU. Each GPU gets ``--batch-size`` captions per step (the notebooks' sizing:
64 per GPU), so the global batch grows with the GPUs.

    python bench/multi_gpu.py                        # every GPU visible (Kaggle T4 x2: 2)
    python bench/multi_gpu.py --device cpu --images 400 --epochs 1   # the script itself, on a CPU

On a CPU it compares one process with two gloo processes (DataParallel needs GPUs): it checks
the script, not the speed of anything that matters. Peers report that DataParallel gains
little for recurrent models and DDP is the faster choice; this measures it on your GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_run import flickr30k_sized  # noqa: E402

from storyteller.config import ModelConfig, TrainConfig  # noqa: E402
from storyteller.training.distributed import session, torchrun_command  # noqa: E402
from storyteller.training.train import train_model  # noqa: E402

RESULT_MARK = "RESULT "


def train_once(args, device, data_parallel: bool, context=None) -> dict:
    """Train ``args.epochs`` epochs; the last epoch's seconds (the first warms cuDNN up)."""
    from storyteller.training.distributed import SINGLE_PROCESS

    context = context or SINGLE_PROCESS
    cache, dataset, splits, vocab = flickr30k_sized(args.images, seed=0)
    gpus = (
        context.world_size
        if context.enabled
        else (torch.cuda.device_count() if data_parallel and device.type == "cuda" else 1)
    )
    config = TrainConfig(
        num_epochs=args.epochs, batch_size=args.batch_size * gpus, data_parallel=data_parallel
    )
    model = ModelConfig(vocab_size=len(vocab), feature_dim=cache.dim)
    with tempfile.TemporaryDirectory() as out:
        result = train_model(
            cache,
            dataset,
            splits,
            vocab,
            out,
            model,
            config,
            device,
            resume=False,
            log=lambda _: None,
            context=context,
        )
    seconds = result.history[-1]["seconds"]
    captions = sum(len(dataset.captions[name]) for name in splits["train"])
    return {
        "gpus": gpus,
        "batch": config.batch_size,
        "seconds": seconds,
        "captions_per_s": captions / seconds,
        "val_loss": result.history[-1]["val_loss"],
    }


def run_ddp(args, nproc: int) -> dict:
    """This script again under torchrun, one process per GPU; rank 0 prints its result."""
    import subprocess

    command = torchrun_command(nproc, [])[:-2]  # python -m torch.distributed.run ... (no -m)
    command += [
        str(Path(__file__).resolve()),
        "--worker",
        "--images",
        str(args.images),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device or "",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise SystemExit(f"the DDP run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=31_783, help="Flickr30k has 31,783")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    parser.add_argument("--batch-size", type=int, default=64, help="captions per GPU per step")
    parser.add_argument("--device", default=None, help="cuda (default when visible) or cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one of the torchrun processes
        with session(args.device or None) as (context, device):
            result = train_once(args, device, data_parallel=False, context=context)
        if context.is_main:
            print(RESULT_MARK + json.dumps(result), flush=True)
        return

    with session(args.device or None) as (_, device):
        pass
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    name = torch.cuda.get_device_name(0) if gpus else f"CPU ({os.cpu_count()} cores)"
    print(
        f"{args.images} images x 5 captions, {args.epochs} epoch(s), last timed; "
        f"{gpus or 'no'} GPU(s): {name}; torch {torch.__version__}"
    )
    rows = {"one device": train_once(args, device, data_parallel=False)}
    if gpus > 1:
        rows["DataParallel"] = train_once(args, device, data_parallel=True)
    else:
        print("DataParallel: skipped (needs 2 or more GPUs)")
    nproc = gpus if gpus > 1 else 2
    if gpus == 1:
        print("DDP: skipped (needs 2 or more GPUs)")
    else:
        rows[f"DDP ({nproc} processes)"] = run_ddp(args, nproc)
    base = rows["one device"]["captions_per_s"]
    print(
        f"{'mode':<22} {'devices':>7} {'batch':>6} {'s/epoch':>8} {'captions/s':>11} "
        f"{'vs one':>7} {'val loss':>9}"
    )
    for mode, r in rows.items():
        print(
            f"{mode:<22} {r['gpus']:>7} {r['batch']:>6} {r['seconds']:>8.2f} "
            f"{r['captions_per_s']:>11.0f} {r['captions_per_s'] / base:>6.2f}x "
            f"{r['val_loss']:>9.4f}"
        )


if __name__ == "__main__":
    main()

"""Caption latency per image through the running app: greedy vs beam 5, side by side.

    python bench/app_latency.py --run outputs/flickr8k-1k \
        --images ../shared/data/flickr8k-1k/Images --n 50

Starts ``app.py`` as its own process on loopback (model from ``--run``), sends ``--n`` photos
one at a time through ``gradio_client`` (``/caption``), each with greedy decoding and with
beam search (alternating which goes first), and prints p50/p95 latency per image for both and
the beam/greedy ratio. For comparison it also times the same work in-process (decode the file,
encode, decode words: no HTTP, no queue), so the app's own overhead is visible.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def start_app(run_dir: Path, log: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "STORYTELLER_RUN_DIR": str(run_dir),
        "STORYTELLER_PRELOAD_STORY": "0",  # the story model would compete for the CPU
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"app.py did not start in {timeout}s:\n{log.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="outputs", help="run folder (best_model.pth, vocab.pkl)")
    parser.add_argument("--images", required=True, help="a folder of photos (JPEG/PNG)")
    parser.add_argument("--n", type=int, default=50, help="photos to send (default 50)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    args = parser.parse_args()

    import torch
    from gradio_client import Client, handle_file

    from storyteller.inference import Captioner
    from storyteller.serving import caption_upload, find_model_files

    photos = sorted(
        p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )[: args.n + args.warmup]
    if len(photos) < args.n + args.warmup:
        raise SystemExit(f"need {args.n + args.warmup} photos in {args.images}")
    run_dir = Path(args.run).resolve()
    files = find_model_files(run_dir, env={"STORYTELLER_RUN_DIR": str(run_dir)})
    decodings = {"greedy": ("greedy", 1), f"beam {args.beam}": ("beam", args.beam)}

    log = Path(tempfile.gettempdir()) / "storyteller-app-latency.log"
    process, url = start_app(run_dir, log)
    try:
        client = Client(url, verbose=False)
        served: dict[str, list[float]] = {name: [] for name in decodings}
        for i, photo in enumerate(photos):
            order = list(decodings.items())
            if i % 2:
                order.reverse()  # neither decoding always runs on a warm cache
            for name, (decoding, width) in order:
                started = time.perf_counter()
                client.predict(handle_file(photo), decoding, width, api_name="/caption")
                if i >= args.warmup:
                    served[name].append(time.perf_counter() - started)
    finally:
        process.terminate()
        process.wait(timeout=30)

    # The same photos in this process: the model's own time, without HTTP and the queue.
    captioner = Captioner.from_files(files.checkpoint, files.vocab)
    local: dict[str, list[float]] = {name: [] for name in decodings}
    for i, photo in enumerate(photos):
        for name, (_, width) in decodings.items():
            result = caption_upload(captioner, photo, width)
            if i >= args.warmup:
                local[name].append(result.ms / 1000)

    config = captioner.model.config
    print(
        f"{args.n} photos from {args.images}; model {config.encoder} + LSTM "
        f"{config.hidden_size} ({len(captioner.vocab)} words) from {files.checkpoint}; "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'decoding':<10} {'app p50':>9} {'app p95':>9} {'in-process p50':>15} {'p95':>8}")
    for name in decodings:
        print(
            f"{name:<10} {percentile(served[name], 50) * 1000:7.0f}ms "
            f"{percentile(served[name], 95) * 1000:7.0f}ms "
            f"{percentile(local[name], 50) * 1000:13.0f}ms {percentile(local[name], 95) * 1000:6.0f}ms"
        )
    greedy, beam = (statistics.median(served[name]) for name in decodings)
    print(f"beam {args.beam} / greedy (app p50): {beam / greedy:.2f}x")


if __name__ == "__main__":
    main()

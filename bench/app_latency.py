"""Caption latency per image through the running app: greedy vs beam 5, side by side.

    python bench/app_latency.py --run outputs/flickr8k-1k \
        --images ../shared/data/flickr8k-1k/Images --n 50

Starts ``app.py`` as its own process on loopback (model from ``--run``), sends ``--n`` photos
one at a time through ``gradio_client`` (``/caption``), each with greedy decoding and with
beam search (alternating which goes first), and prints p50/p95 latency per image for both and
the beam/greedy ratio. Two more columns show where the time goes:

* ``http``: the same requests as plain HTTP (Gradio's documented curl API: upload, call,
  read the event stream), which is what a browser waits for; ``gradio_client`` adds its own
  polling (it checks for new messages every 50 ms);
* ``in-process``: the same photos captioned in this process (open the file, encode, decode
  words): the model's own time, without HTTP and the queue.
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


def caption_over_http(http, url: str, photo: Path, decoding: str, width: int) -> str:
    """One caption through Gradio's REST API: upload, call, then read the event stream."""
    with open(photo, "rb") as f:
        uploaded = http.post(url + "gradio_api/upload", files={"files": f}).json()[0]
    data = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, decoding, width]
    event = http.post(url + "gradio_api/call/caption", json={"data": data}).json()["event_id"]
    with http.stream("GET", url + f"gradio_api/call/caption/{event}") as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                if kind == "error":
                    raise RuntimeError(f"{photo}: {line}")
                return line[5:].strip()
    raise RuntimeError(f"{photo}: the event stream ended without a result")


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

    import httpx
    import torch
    from gradio_client import Client, handle_file

    from storyteller.inference import Captioner
    from storyteller.serving.server import caption_upload, configured_threads, find_model_files

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
        http = httpx.Client(timeout=60)
        served: dict[str, list[float]] = {name: [] for name in decodings}
        raw: dict[str, list[float]] = {name: [] for name in decodings}
        for i, photo in enumerate(photos):
            order = list(decodings.items())
            if i % 2:
                order.reverse()  # neither decoding always runs on a warm cache
            for name, (decoding, width) in order:
                started = time.perf_counter()
                client.predict(handle_file(photo), decoding, width, api_name="/caption")
                middle = time.perf_counter()
                caption_over_http(http, url, photo, decoding, width)
                if i >= args.warmup:
                    served[name].append(middle - started)
                    raw[name].append(time.perf_counter() - middle)
    finally:
        process.terminate()
        process.wait(timeout=30)

    # The same photos in this process: the model's own time, without HTTP and the queue
    # (with the app's torch threads).
    if configured_threads():
        torch.set_num_threads(configured_threads())
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
    print(
        f"{'decoding':<10} {'gradio_client p50':>18} {'p95':>7} {'http p50':>9} {'p95':>7} "
        f"{'in-process p50':>15} {'p95':>7}"
    )

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:.0f} ms"

    for name in decodings:
        print(
            f"{name:<10} {ms(served[name], 50):>18} {ms(served[name], 95):>7} "
            f"{ms(raw[name], 50):>9} {ms(raw[name], 95):>7} "
            f"{ms(local[name], 50):>15} {ms(local[name], 95):>7}"
        )
    for label, times in (("gradio_client", served), ("http", raw), ("in-process", local)):
        greedy, beam = (statistics.median(times[name]) for name in decodings)
        print(f"beam {args.beam} / greedy, p50 {label}: {beam / greedy:.2f}x")


if __name__ == "__main__":
    main()

"""The offline story backend (Gemma 3 270M on the CPU): first load (GGUF conversion), later
load (from the cache), and the time to write a ~90-token story, measured in one run.

    python bench/story_offline.py [--tokens 90] [--cache DIR] [--threads N]

Without ``--cache`` it converts into a fresh temporary cache, so the first-load time includes
the conversion; with ``--cache`` an existing cache is reused. It also counts how many of each
caption's content words the model's own text (after the forced first sentence) mentions.
The machine's load average is printed, because shared CPUs slow generation a lot.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from storyteller.story import StoryOptions, StorySession, content_words
from storyteller.story.backends.gemma_cache import ensure_offline_model
from storyteller.story.backends.offline import OfflineBackend
from storyteller.story.prompts import as_sentence

CAPTIONS = [
    "a black dog is running through the snow",
    "a little girl in a pink dress climbs the stairs",
    "two children play with a ball on the beach",
    "a man rides a bicycle down a city street",
    "a boy jumps into a swimming pool",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=90, help="new tokens per story")
    parser.add_argument("--cache", help="cache root to reuse (default: a fresh temporary one)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's, one per core)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import torch

    print(
        f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = args.cache or tmp
        started = time.perf_counter()
        ensure_offline_model(root)
        first = time.perf_counter() - started
        started = time.perf_counter()
        backend = OfflineBackend(device="cpu", root=root)
        later = time.perf_counter() - started
        print(f"first load (conversion if not cached): {first:.1f} s")
        print(f"later load (from the cache): {later:.1f} s")

        times, rates, kept = [], [], []
        for seed, caption in enumerate(CAPTIONS):
            session = StorySession(backend, StoryOptions(seed=seed, max_new_tokens=args.tokens))
            started = time.perf_counter()
            for _ in session.start(caption):
                pass
            elapsed = time.perf_counter() - started
            own = session.story[len(as_sentence(caption)) :]
            tokens = len(backend.tokenizer(own, add_special_tokens=False)["input_ids"])
            words = content_words(caption)
            found = [w for w in words if w in own.lower()]
            times.append(elapsed)
            rates.append(tokens / elapsed)
            kept.append((len(found), len(words)))
            print(f"\n[{elapsed:.1f} s, {tokens} tokens kept] {session.story}")
        print(
            f"\nstory of up to {args.tokens} new tokens: median {statistics.median(times):.1f} s "
            f"(min {min(times):.1f}, max {max(times):.1f}); "
            f"{statistics.median(rates):.1f} kept tokens/s"
        )
        print(
            "caption content words in the model's own text (after the first sentence): "
            f"{sum(k for k, _ in kept)} of {sum(n for _, n in kept)}"
        )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

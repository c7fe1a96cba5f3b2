"""Does a steering line change the next part? The offline model (Gemma 3 270M, a base model),
the prompt before and after issue 12, item 5, side by side in one run.

    python bench/steering.py [--seeds 0 1 2] [--tokens 60] [--threads N]

Each of :data:`STEERS` steers each story of :data:`STORIES` (a caption and a fixed first
paragraph, so only the steered turn is generated), once with the old prompt (the line as a
``Then:`` cue, no hero) and once with the new one (the line opens the next part, the hero is
named). Per seed it reports, for each prompt:

* ``mentions``: the share of steered turns whose *model-written* text (our forced opening left
  out) has one of the steering line's content words (stop words removed, lower case, a crude
  stem: ``storms`` / ``stormy`` -> ``storm``);
* ``shown``: the same share over the whole turn the reader sees (the new prompt's opening
  is the line itself, so it is 1.0 by construction; the old prompt's turn is all model text);
* ``mixed``: the share of turns whose model-written text uses both ``he``-words and
  ``she``-words (the he/she flip), for a story whose first paragraph uses neither.

Then the mean and spread (min-max) over the seeds. Sampling as the app samples
(temperature 0.8, top-p 0.95, top-k 64), seeded; the machine's load only changes the time.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from dataclasses import dataclass

from storyteller.story import StoryOptions, StoryPrompt, content_words
from storyteller.story.backends.offline import OfflineBackend
from storyteller.story.prompts import FEW_SHOT, Completion, flatten, trim_story

STEERS = (
    "a storm breaks over the hills",
    "a stranger knocks on the door",
    "the lights go out",
    "a dragon lands nearby",
    "a treasure map is found",
    "the river floods the valley",
    "a bell rings from the tower",
    "the ground starts to shake",
)
#: (caption, the story's first paragraph: no he/she, so the model's pronoun choice shows)
STORIES = (
    (
        "a black dog runs through the snow",
        "A black dog runs through the snow. The dog follows a trail of small footprints "
        "toward the dark trees at the edge of the field, ears up and tail high.",
    ),
    (
        "a child plays with a ball on the beach",
        "A child plays with a ball on the beach. The waves roll in slowly, and the ball "
        "bounces toward a row of old wooden boats pulled up on the sand.",
    ),
)

#: The few-shot text of the prompt before the change: no Hero lines, no forced opening after
#: the ``Then:`` cue, the man unnamed.
BEFORE_FEW_SHOT = re.sub(r" Hero: [^\n]*\)\.", "", FEW_SHOT)
for new_text, old_text in (
    ("Story goes on: He meets a kitten. Under", "Story goes on: Under"),
    ("Below Tom,", "Below him,"),
    ("Story goes on: Tom pulls", "Story goes on: He pulls"),
):
    assert new_text in BEFORE_FEW_SHOT, new_text
    BEFORE_FEW_SHOT = BEFORE_FEW_SHOT.replace(new_text, old_text)


@dataclass(frozen=True)
class BeforePrompt(StoryPrompt):
    """A steered turn as the offline model was asked before: a ``Then:`` cue, nothing forced."""

    def completion(self, options: StoryOptions, max_story_chars: int = 1500) -> Completion:
        story = flatten(trim_story(self.story, max_story_chars))
        header = BEFORE_FEW_SHOT + f"Genre: {options.genre}. Tone: {options.tone}.\nStory:"
        return Completion(f"{header} {story}\nThen: {self.instruction}\nStory goes on:")


HE = {"he", "him", "his", "himself"}
SHE = {"she", "her", "hers", "herself"}


def stem(word: str) -> str:
    """A crude stem, enough to match ``storm`` / ``storms`` / ``stormy``, ``floods`` /
    ``flooded``, ``shake`` / ``shaking``."""
    for suffix in ("ing", "ed", "es", "s", "y", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def stems(text: str) -> set[str]:
    return {stem(w) for w in re.findall(r"[a-z]+", text.lower())}


def steered_turn(backend, prompt: StoryPrompt, options: StoryOptions) -> tuple[str, str]:
    """(the whole turn's text, the model-written part: the turn without its forced opening)."""
    text = "".join(backend.stream(prompt, options)).strip()
    opening = prompt.completion(options).opening
    return text, text[len(opening) :] if opening and text.startswith(opening) else text


def measure(backend, seed: int, tokens: int) -> dict[str, dict[str, float]]:
    counts = {name: {"mentions": 0, "shown": 0, "mixed": 0, "n": 0} for name in ("old", "new")}
    for caption, story in STORIES:
        for line in STEERS:
            wanted = {stem(w) for w in content_words(line)}
            options = StoryOptions(length="short", seed=seed, max_new_tokens=tokens)
            for name, kind in (("old", BeforePrompt), ("new", StoryPrompt)):
                shown, own = steered_turn(backend, kind("steer", (caption,), story, line), options)
                words = set(re.findall(r"[a-z]+", own.lower()))
                row = counts[name]
                row["n"] += 1
                row["mentions"] += bool(wanted & stems(own))
                row["shown"] += bool(wanted & stems(shown))
                row["mixed"] += bool(words & HE and words & SHE)
                print(f"  seed {seed} {name}: {line!r} -> {own[:70]!r}", flush=True)
    return {
        name: {k: v / row["n"] for k, v in row.items() if k != "n"} for name, row in counts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tokens", type=int, default=60, help="new tokens per steered turn")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    backend = OfflineBackend(device="cpu")
    print(f"model loaded in {time.perf_counter() - started:.0f} s ({backend.describe()})")
    turns = len(STORIES) * len(STEERS)
    results = []
    for seed in args.seeds:
        started = time.perf_counter()
        result = measure(backend, seed, args.tokens)
        results.append(result)
        took = time.perf_counter() - started
        print(
            f"seed {seed} ({turns} steered turns per prompt, {took:.0f} s): "
            + "; ".join(
                f"{name} " + ", ".join(f"{k} {v:.2f}" for k, v in row.items())
                for name, row in result.items()
            )
        )
    print(f"\nover seeds {args.seeds} ({turns} turns each): mean (min-max)")
    print(f"{'':8}{'mentions':>20}{'shown':>20}{'mixed he/she':>20}")
    for name in ("old", "new"):
        cells = []
        for key in ("mentions", "shown", "mixed"):
            values = [r[name][key] for r in results]
            cells.append(f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"{name:8}" + "".join(f"{c:>20}" for c in cells))
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

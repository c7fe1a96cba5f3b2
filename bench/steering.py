"""Does a steering line change the next part? The offline model (Gemma 3 270M, a base model),
a plain ``Then:`` cue beside the backend's prompt, side by side in one run.

    python bench/steering.py [--draws 3] [--tokens 60] [--stories 1] [--threads N]

Each of :data:`STEERS` steers each story of :data:`STORIES` (a caption and a fixed first
paragraph, so only the steered turn is generated), with the plain "old" prompt (the line as a
``Then:`` cue, no hero) and with the backend's "new" one (the line opens the next part, the hero is
named). The model's raw text goes through the backend's own cleaner. Per draw it reports, for
each prompt:

* ``mentions``: the share of steered turns whose *model-written* text (our forced opening left
  out) has one of the steering line's content words (stop words removed, lower case, a crude
  stem: ``storms`` / ``stormy`` -> ``storm``);
* ``shown``: the same share over the whole turn the reader sees (the new prompt's opening
  is the line itself, so it is 1.0 by construction; the old prompt's turn is all model text);
* ``mixed``: the share of turns whose model-written text uses both ``he``-words and
  ``she``-words (the he/she flip), for a story whose first paragraph uses neither;
* ``empty``: the share of turns where the model wrote no finished sentence of its own (the
  session draws those again; it must be rare).

Then the mean and spread (min-max) over the draws. Sampling as the app samples (temperature
0.8, top-p 0.95, top-k 64, the same repetition penalty and paragraph-end rule), seeded with
``--seed``; no time limit (this measures the prompt, not the machine's load).

To fit a loaded 2-core CPU (8 minutes for 8 lines x 3 draws x 2 prompts at 60 tokens), each
prompt is one batched ``generate``: every line x draw is a row, and the text the rows share
(the few-shot examples and the story) is read once and its cache repeated for every row; the
rows' own tails (``Then: ...``) are left-padded to one length between the two, masked out.
The draws are the rows of one seeded batch (independent samples, as separate seeds give).
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
from storyteller.story.cleaning import turn_cleaner
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

#: The few-shot text of the plain-cue prompt: no Hero lines, no forced opening after
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
    """A steered turn asked with a plain ``Then:`` cue, nothing forced."""

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


def encode(tokenizer, texts: list[str], pad_id: int):
    """Token ids for ``texts`` that share a first part: (the shared part's ids ``(1, P)``,
    every text as ids ``(rows, P + T)`` with its own tail left-padded to ``T``, the mask).

    The shared part ends before the last ``\nThen:`` of the first text; each text must
    tokenize to the shared ids plus its tail's ids, as it does whole (checked)."""
    import torch

    shared = texts[0][: texts[0].rindex("\nThen:")]
    head = tokenizer(shared, add_special_tokens=True)["input_ids"]
    tails = []
    for text in texts:
        assert text.startswith(shared), "the prompts do not share their story"
        tail = tokenizer(text[len(shared) :], add_special_tokens=False)["input_ids"]
        assert head + tail == tokenizer(text)["input_ids"], "tokens differ at the join"
        tails.append(tail)
    width = max(map(len, tails))
    rows = [head + [pad_id] * (width - len(t)) + t for t in tails]
    mask = [[1] * len(head) + [0] * (width - len(t)) + [1] * len(t) for t in tails]
    # (1, P), (rows, P + T), (rows, P + T)
    return torch.tensor([head]), torch.tensor(rows), torch.tensor(mask)


def generate_rows(backend, texts: list[str], tokens: int, seed: int) -> list[str]:
    """The raw text the model writes after each of ``texts``, sampled as the backend does."""
    import torch
    from transformers import LogitsProcessorList

    from storyteller.story.backends.local import _GeneratedRepetitionPenalty, _NoEndBefore

    model, pad_id = backend.model, backend.tokenizer.pad_token_id
    head, ids, mask = encode(backend.tokenizer, texts, pad_id)
    with torch.inference_mode():
        cache = model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(ids.shape[0])  # the shared part, once per row
        length = ids.shape[1]
        processors = [
            _GeneratedRepetitionPenalty(length, backend.repetition_penalty),
            _NoEndBefore(length, tokens // 3, backend._end_token_ids()),
        ]
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=cache,  # generate reads only the rows' tails
            max_new_tokens=tokens,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            top_k=64,
            logits_processor=LogitsProcessorList(processors),
            pad_token_id=pad_id,
        )  # (rows, P + T + new tokens)
    return backend.tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)


def cleaned(prompt: StoryPrompt, completion: Completion, raw: str) -> str:
    """What the backend streams for ``raw`` after our opening: the model's own finished text."""
    cleaner = turn_cleaner(prompt.story, completion.opening, completion.stop, completion.joins)
    return (cleaner.feed(raw) + cleaner.finish()).strip()


def score(rows: list[tuple[str, str, str]]) -> dict[str, float]:
    """Shares over ``rows`` of (steering line, the whole turn shown, the model's own text)."""
    counts = {"mentions": 0, "shown": 0, "mixed": 0, "empty": 0}
    for line, shown, own in rows:
        wanted = {stem(w) for w in content_words(line)}
        words = set(re.findall(r"[a-z]+", own.lower()))
        counts["mentions"] += bool(wanted & stems(own))
        counts["shown"] += bool(wanted & stems(shown))
        counts["mixed"] += bool(words & HE and words & SHE)
        counts["empty"] += not own
    return {k: v / len(rows) for k, v in counts.items()}


def measure(backend, args) -> dict[str, list[dict[str, float]]]:
    """For each prompt, one score per draw (every story x line of that draw)."""
    options = StoryOptions(length="short", max_new_tokens=args.tokens)
    results = {}
    for name, kind in (("old", BeforePrompt), ("new", StoryPrompt)):
        started = time.perf_counter()
        cases = [
            kind("steer", (caption,), story, line)
            for caption, story in STORIES[: args.stories]
            for line in STEERS
        ]
        completions = [c.completion(options) for c in cases]
        texts = [c.text for c in completions] * args.draws  # row = draw x case
        by_story = {}
        for caption, _ in STORIES[: args.stories]:  # one batch per story: a shared part each
            rows = [i for i, c in enumerate(cases * args.draws) if c.captions[0] == caption]
            raws = generate_rows(backend, [texts[i] for i in rows], args.tokens, args.seed)
            by_story.update(zip(rows, raws, strict=True))
        draws = []
        for draw in range(args.draws):
            rows = []
            for i, (case, completion) in enumerate(zip(cases, completions, strict=True)):
                raw = by_story[draw * len(cases) + i]
                own = cleaned(case, completion, raw)
                shown = f"{completion.opening} {own}".strip()
                rows.append((case.instruction, shown, own))
                print(f"  {name} draw {draw}: {case.instruction!r} -> {own[:70]!r}", flush=True)
            draws.append(score(rows))
        results[name] = draws
        took = time.perf_counter() - started
        print(f"{name} prompt: {len(texts)} steered turns in {took:.0f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=3, help="samples per line and prompt")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch's sampling")
    parser.add_argument("--tokens", type=int, default=60, help="new tokens per steered turn")
    parser.add_argument("--stories", type=int, default=1, choices=range(1, len(STORIES) + 1))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    backend = OfflineBackend(device="cpu")
    print(f"model loaded in {time.perf_counter() - started:.0f} s ({backend.describe()})")
    results = measure(backend, args)
    turns = args.stories * len(STEERS)
    keys = ("mentions", "shown", "mixed", "empty")
    print(f"\nover {args.draws} draws ({turns} steered turns each): mean (min-max)")
    print(f"{'':8}" + "".join(f"{k:>18}" for k in keys))
    for name, draws in results.items():
        cells = []
        for key in keys:
            values = [d[key] for d in draws]
            cells.append(f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"{name:8}" + "".join(f"{c:>18}" for c in cells))
    print(f"total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

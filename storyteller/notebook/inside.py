"""Look inside the captioner: the tensors of one training step, beam search step by step, and
the code that computes them.

The notebooks' "look inside" cells (03 and 04) call these, so what a student reads is the
package's own model and search run on real photos, not a simplified copy:

* :func:`forward_shapes` runs one teacher-forced forward pass (what training does for every
  batch) and names each tensor with its shape: features, captions, the decoder's state, word
  embeddings, logits and the loss;
* :func:`beam_steps` runs :func:`storyteller.decoding.beam_search` for a few steps and keeps
  what each step chose, with the log-probabilities it chose by;
* :func:`show_source` shows the package's own source of a decoder's methods, a training step
  or the search, with :func:`with_helpers` adding the functions they call.
"""

from __future__ import annotations

import ast
import inspect
import math
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from ..data.captions import find_image_dir, load_dataset
from ..data.vocab import PAD_ID, Vocabulary
from ..decoding import BeamStep, beam_search
from ..inference import Captioner
from ..models import CaptionDecoder
from ..runtime import unwrap
from .report import in_notebook

#: One row of :func:`forward_shapes`: a name, the tensor's shape, what it is.
Row = tuple[str, tuple[int, ...], str]
#: The folder that holds the ``storyteller`` package: source paths are shown relative to it.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def photo_batch(
    captioner: Captioner, data_dir: str | Path, photos: Sequence[str], max_length: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as training sees it, for ``photos`` of ``data_dir``: their features, made by
    the captioner's own encoder (the one notebook 01 cached them with, or the fine-tuned one),
    and each photo's first caption as word ids.

    Returns features (B, feature_dim) or (B, P, feature_dim) and captions (B, T), ``<start>``
    first and ``<pad>`` after ``<end>``, both on the model's device."""
    dataset = load_dataset(data_dir, check_images=False)
    image_dir = find_image_dir(Path(data_dir))
    device = captioner.extractor.device
    features = captioner.extractor([image_dir / name for name in photos])  # (B, ...)
    ids = [
        torch.tensor(captioner.vocab.encode(dataset.captions[name][0], max_length))
        for name in photos
    ]
    captions = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=PAD_ID)  # (B, T)
    return features.to(device), captions.to(device)


def _state_rows(state) -> list[Row]:
    """Every tensor of a decoder state (a tuple field: one row per tensor)."""
    rows = []
    for f in fields(state):
        value = getattr(state, f.name)
        tensors = value if isinstance(value, (tuple, list)) else [value]
        for i, tensor in enumerate(t for t in tensors if isinstance(t, torch.Tensor)):
            name = f"state.{f.name}" + (f"[{i}]" if len(tensors) > 1 else "")
            rows.append((name, tuple(tensor.shape), "what the decoder knows before word 1"))
    return rows


@torch.no_grad()
def forward_shapes(
    model: CaptionDecoder, features: torch.Tensor, captions: torch.Tensor
) -> list[Row]:
    """One teacher-forced forward pass, as training runs it, with each tensor's shape.

    features: (B, feature_dim) or (B, P, feature_dim); captions: (B, T) word ids. The decoder
    reads every word but the last and must predict every word but ``<start>``; the word
    embeddings are caught on their way in (a forward hook on the model's embedding table)."""
    model = unwrap(model).eval()
    inputs, targets = captions[:, :-1], captions[:, 1:]  # (B, T-1) each: next word
    layout = "one vector per photo" if features.dim() == 2 else "a grid of regions per photo"
    rows: list[Row] = [
        ("features", tuple(features.shape), f"the CNN's output: {layout}"),
        ("captions", tuple(captions.shape), f"word ids: <start> ... <end>, then <pad> = {PAD_ID}"),
        ("inputs", tuple(inputs.shape), "captions without the last word: what it reads"),
        ("targets", tuple(targets.shape), "captions without <start>: what it must predict"),
    ]
    rows += _state_rows(model.init_state(features))
    embedded: list[torch.Tensor] = []
    hook = model.word_embedding().register_forward_hook(lambda m, i, out: embedded.append(out))
    try:
        logits, extra = model(features, inputs)  # (B, T-1, V), {name: scalar}
    finally:
        hook.remove()
    vocab_size = logits.size(-1)
    rows.append(("embeddings", tuple(embedded[0].shape), "one learned vector per input word"))
    rows.append(("logits", tuple(logits.shape), "a score for every word of the vocabulary"))
    loss = nn.functional.cross_entropy(
        logits.float().reshape(-1, vocab_size), targets.reshape(-1), ignore_index=PAD_ID
    )
    rows.append(
        (
            "loss",
            (),
            f"{loss.item():.3f}: next-word cross-entropy, padding ignored "
            f"(guessing uniformly: ln {vocab_size} = {math.log(vocab_size):.3f})",
        )
    )
    rows += [
        (f"loss.{name}", (), f"{value.item():.4f}: the decoder's own term")
        for name, value in extra.items()
    ]
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    """Rows as an aligned table: name, shape, what it is."""
    shapes = [str(shape) if shape else "scalar" for _, shape, _ in rows]
    name_width = max(len(name) for name, _, _ in rows)
    shape_width = max(len(s) for s in shapes)
    return "\n".join(
        f"{name:<{name_width}}  {shape:<{shape_width}}  {what}"
        for (name, _, what), shape in zip(rows, shapes, strict=True)
    )


def beam_steps(
    model: CaptionDecoder,
    features: torch.Tensor,
    vocab: Vocabulary,
    beam_size: int = 3,
    steps: int = 3,
    length_penalty: float = 0.7,
) -> list[list[tuple[str, float, float]]]:
    """The first ``steps`` steps of beam search for one photo, features (1, ...): for each
    step, the ``beam_size`` hypotheses it kept, best first, as (words so far, log-probability
    of the newest word, total log-probability)."""
    if features.size(0) != 1:
        raise ValueError(f"beam_steps shows one photo, got a batch of {features.size(0)}")
    seen: list[BeamStep] = []
    beam_search(model, features, beam_size, steps, length_penalty, on_step=seen.append)
    return [
        [
            (" ".join(vocab.itos[i] for i in history), float(word), float(total))
            for history, word, total in zip(
                step.history[0].tolist(), step.word_log_probs[0], step.scores[0], strict=True
            )
        ]
        for step in seen
    ]


def format_beam_steps(steps: list[list[tuple[str, float, float]]], vocab_size: int) -> str:
    """:func:`beam_steps` as text: what each step chose from, and what it kept."""
    lines = []
    for t, kept in enumerate(steps, start=1):
        beams = 1 if t == 1 else len(kept)  # all beams start from <start>: one is expanded
        lines.append(
            f"step {t}: {beams} hypothesis(es) x {vocab_size} words -> kept the best {len(kept)}"
        )
        width = max(len(words) for words, _, _ in kept)
        lines += [
            f"  {words:<{width}}  log p(new word) {word:7.3f}   total {total:7.3f}"
            for words, word, total in kept
        ]
    return "\n".join(lines)


def _listing(obj) -> str:
    """``obj``'s source under a comment naming it and where it is (file:line)."""
    obj = inspect.unwrap(obj)  # a decorated function: its own source, not the decorator's
    lines, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj)).resolve()
    where = path.relative_to(_SOURCE_ROOT) if path.is_relative_to(_SOURCE_ROOT) else path
    heading = f"# {obj.__module__}.{obj.__qualname__}  ({where.as_posix()}:{start})\n"
    return heading + textwrap.dedent("".join(lines))


def show_source(*objects) -> None:
    """Show the source of functions, methods or classes, each under its qualified name and
    file:line: highlighted Python in Jupyter, plain text anywhere else."""
    listings = [_listing(obj) for obj in objects]
    if not in_notebook():
        print("\n".join(listings), end="")
        return
    from IPython.display import Code, display

    display(*(Code(listing, language="python") for listing in listings))


def _calls(function: Callable) -> list[Callable]:
    """The functions of ``function``'s own module that it calls, in source order: by name, or
    on ``self`` for a method (imported functions and layers such as ``self.embed`` are left
    out)."""
    function = inspect.unwrap(function)
    module = sys.modules[function.__module__]
    # a method's class (its qualified name less the method's), or the module for a function
    owner = getattr(module, function.__qualname__.rpartition(".")[0], module)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    found = []
    for call in sorted(
        (node for node in ast.walk(tree) if isinstance(node, ast.Call)),
        key=lambda node: (node.lineno, node.col_offset),
    ):
        if isinstance(call.func, ast.Name):  # helper(...)
            found.append(getattr(module, call.func.id, None))
        elif isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "self":
            found.append(getattr(owner, call.func.attr, None))  # self.helper(...)
    return [f for f in found if inspect.isfunction(f) and f.__module__ == module.__name__]


def with_helpers(*functions: Callable, skip: Iterable[Callable] = ()) -> list[Callable]:
    """``functions``, each followed by what it calls in the package (depth first, each once):
    what a student needs to read them. ``skip``: functions shown already, neither repeated nor
    followed."""
    seen = list(skip)
    start = len(seen)

    def visit(function: Callable) -> None:
        if function not in seen:
            seen.append(function)
            for called in _calls(function):
                visit(called)

    for function in functions:
        visit(function)
    return seen[start:]

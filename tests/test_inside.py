"""The notebooks' "look inside" views (``storyteller.notebook.inside``) tell the truth about the model:
the shapes are those of the decoder's own forward pass and the loss is training's loss; the
beam-search steps are those of ``beam_search`` itself."""

from __future__ import annotations

import inspect
import json
import re
import textwrap

import pytest
import torch

from storyteller.config import ModelConfig
from storyteller.data.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocabulary
from storyteller.decoding import beam_search
from storyteller.inference import Captioner
from storyteller.models import DECODERS, build_model, decoder_class
from storyteller.notebook import inside
from storyteller.notebook.settings import smoke_model
from storyteller.training.train import make_batch_loss, train_epoch

VOCAB = Vocabulary([f"w{i}" for i in range(26)], threshold=1)  # 30 ids with the specials
FEATURE_DIM, GRID_CELLS, BATCH, LENGTH = 12, 6, 3, 7


def _model(decoder: str):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=len(VOCAB), feature_dim=FEATURE_DIM, decoder=decoder, **smoke_model(decoder)
    )
    return build_model(config).eval()


def _features(decoder: str, batch: int) -> torch.Tensor:
    grid = decoder_class(decoder).feature_layout == "grid"
    return torch.randn(batch, *((GRID_CELLS,) if grid else ()), FEATURE_DIM)


def _captions() -> torch.Tensor:
    captions = torch.randint(4, len(VOCAB), (BATCH, LENGTH))  # (B, T) real words
    captions[:, 0] = START_ID
    captions[0, -1] = END_ID
    captions[1:, -2], captions[1:, -1] = END_ID, PAD_ID  # shorter captions, padded
    return captions


@pytest.mark.parametrize("decoder", DECODERS)
def test_forward_shapes_names_every_tensor_and_the_training_loss(decoder):
    model, features, captions = _model(decoder), _features(decoder, BATCH), _captions()
    rows = {
        name: (shape, what)
        for name, shape, what in inside.forward_shapes(model, features, captions)
    }
    vocab, steps = len(VOCAB), LENGTH - 1
    assert rows["features"][0] == tuple(features.shape)
    assert rows["captions"][0] == (BATCH, LENGTH)
    assert rows["inputs"][0] == rows["targets"][0] == (BATCH, steps)
    assert rows["embeddings"][0][:2] == (BATCH, steps)
    assert rows["logits"][0] == (BATCH, steps, vocab)
    state = [name for name in rows if name.startswith("state.")]
    assert state, "the decoder's state before the first word is shown"
    # the loss shown is what training minimises for this batch
    loss = make_batch_loss(torch.device("cpu"), False, PAD_ID, 0.0)(model, features, captions)
    assert rows["loss"][1].startswith(f"{loss.cross_entropy.item():.3f}: next-word")
    assert sorted(n for n in rows if n.startswith("loss.")) == [
        f"loss.{n}" for n in sorted(loss.extra)
    ]
    table = inside.format_rows(inside.forward_shapes(model, features, captions))
    assert re.search(rf"^logits +\({BATCH}, {steps}, {vocab}\) +a score", table, re.M)
    assert re.search(r"^loss +scalar +\d", table, re.M)


@pytest.mark.parametrize("decoder", DECODERS)
def test_beam_steps_are_the_searchs_own_steps(decoder):
    model, features = _model(decoder), _features(decoder, 1)
    steps = inside.beam_steps(model, features, VOCAB, beam_size=3, steps=3)
    assert [len(kept) for kept in steps] == [3, 3, 3]
    # step 1 keeps the three likeliest first words (never <pad>, <start>, <unk> or <end>)
    first, _ = model.step(torch.tensor([START_ID]), model.init_state(features))  # (1, V)
    first[0, [PAD_ID, START_ID, UNK_ID, END_ID]] = float("-inf")
    top = first[0].topk(3)
    assert [words for words, _, _ in steps[0]] == [VOCAB.itos[i] for i in top.indices.tolist()]
    assert [word for _, word, _ in steps[0]] == pytest.approx(top.values.tolist(), abs=1e-5)
    # each total adds the new word's log-probability to its parent's total
    totals = {words: total for words, _, total in steps[1]}
    for words, word, total in steps[2]:
        assert total == pytest.approx(totals[words.rsplit(" ", 1)[0]] + word, abs=1e-4)
    # the best after the last step is what beam_search returns when stopped there
    best = beam_search(model, features, 3, max_length=3)[0][0]
    assert steps[-1][0][2] == pytest.approx(best.log_prob, abs=1e-5)
    assert VOCAB.decode(best.ids) == VOCAB.decode(VOCAB.stoi[w] for w in steps[-1][0][0].split())
    text = inside.format_beam_steps(steps, len(VOCAB))
    assert text.startswith(f"step 1: 1 hypothesis(es) x {len(VOCAB)} words -> kept the best 3")
    with pytest.raises(ValueError, match="one photo, got a batch of 2"):
        inside.beam_steps(model, _features(decoder, 2), VOCAB)


def test_photo_batch_reads_real_photos_and_their_first_captions(tiny_data, tiny_run):
    captioner = Captioner.from_files(
        tiny_run / "best_model.pth", tiny_run / "vocab.pkl", torch.device("cpu")
    )
    photos = json.loads((tiny_run / "splits.json").read_text())["train"][:4]
    features, captions = inside.photo_batch(captioner, tiny_data, photos)
    assert features.shape == (4, captioner.model.config.feature_dim)
    assert captions.shape[0] == 4 and (captions[:, 0] == START_ID).all()
    assert (captions == END_ID).sum(dim=1).tolist() == [1, 1, 1, 1]
    rows = inside.forward_shapes(captioner.model, features, captions)
    assert dict((n, s) for n, s, _ in rows)["logits"] == (
        4,
        captions.size(1) - 1,
        len(captioner.vocab),
    )


class _Lesson:
    """What :func:`inside.with_helpers` follows: calls on ``self`` and to this module."""

    def outer(self):
        return self._inner() + _helper() + len("builtins and imports are left out")

    def _inner(self):
        return _helper()


def _helper():
    return 1


def test_show_source_prints_the_packages_own_source_outside_jupyter(capsys):
    method = decoder_class("attention").step
    inside.show_source(beam_search, method)
    printed = capsys.readouterr().out
    for obj, name in ((beam_search, "beam_search"), (method, "AttentionDecoder.step")):
        source = inspect.getsource(obj)  # a method's is indented, shown flush left
        lines, start = inspect.getsourcelines(inspect.unwrap(obj))
        path = inspect.getsourcefile(inspect.unwrap(obj)).replace("\\", "/")
        heading = f"# {obj.__module__}.{name}  ({path[path.rindex('storyteller/') :]}:{start})"
        assert f"{heading}\n{textwrap.dedent(source)}" in printed
    assert printed.index("def beam_search(") < printed.index("def step(")


def test_show_source_in_jupyter_is_highlighted_python(monkeypatch):
    display = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(inside, "in_notebook", lambda: True)
    monkeypatch.setattr(display, "display", lambda *objects: shown.extend(objects))
    inside.show_source(_helper, _Lesson)
    assert [type(code) for code in shown] == [display.Code, display.Code]
    assert all(code.language == "python" for code in shown)
    assert shown[0].data.endswith("def _helper():\n    return 1\n")
    assert shown[1].data.splitlines()[1] == "class _Lesson:"


def test_with_helpers_follows_calls_depth_first_each_once():
    assert inside.with_helpers(_Lesson.outer) == [_Lesson.outer, _Lesson._inner, _helper]
    assert inside.with_helpers(_Lesson.outer, skip=[_Lesson._inner]) == [_Lesson.outer, _helper]
    assert inside.with_helpers(_helper, _Lesson._inner) == [_helper, _Lesson._inner]


@pytest.mark.parametrize("decoder", DECODERS)
def test_notebook_03s_views_of_every_decoder(decoder, capsys):
    """What notebook 03 shows for each DECODER: the state, init_state and step with what they
    call, then forward with what is not shown yet; the training step."""
    cls = decoder_class(decoder)
    one_word = inside.with_helpers(cls.init_state, cls.step)
    assert one_word[0] is cls.init_state and cls.step in one_word
    teacher_forcing = inside.with_helpers(cls.forward, skip=one_word)
    assert teacher_forcing[0] is cls.forward and not set(teacher_forcing) & set(one_word)
    state = type(_model(decoder).init_state(_features(decoder, 1)))
    inside.show_source(state, *one_word, *teacher_forcing)
    printed = capsys.readouterr().out
    assert f"class {state.__name__}(DecoderState):" in printed
    headings = [line for line in printed.splitlines() if line.startswith("# storyteller.")]
    assert len(headings) == 1 + len(one_word) + len(teacher_forcing)
    assert inside.with_helpers(make_batch_loss, train_epoch)[0] is make_batch_loss
    assert train_epoch in inside.with_helpers(make_batch_loss, train_epoch)

"""The decoder protocol, checked on every captioner in ``CASES``, plus the registry, the
generic decoder state and checkpoints from before there was a choice of decoder.

A new decoder joins by adding a :class:`Case` (a small config and the shape of one image's
features); ``test_every_registered_decoder_is_tested`` fails until it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import pytest
import torch

from storyteller.config import ModelConfig, Strategy, TrainConfig
from storyteller.data.vocab import END_ID, PAD_ID, START_ID, Vocabulary
from storyteller.decoding import beam_search, decode_with_attention, greedy_decode
from storyteller.errors import StorytellerError
from storyteller.models import (
    DECODERS,
    AttentionDecoder,
    CaptionDecoder,
    DecoderState,
    LSTMDecoder,
    TransformerDecoder,
    batch_field,
    build_model,
    decoder_class,
    register_decoder,
    resolve_config,
)
from storyteller.models.attention import doubly_stochastic_penalty
from storyteller.models.checkpoint import load_model, save_checkpoint
from storyteller.training.train import make_batch_loss

VOCAB = 30
FEATURE_DIM = 12


GRID_CELLS = 6  # positions of a grid decoder's features (7 x 7 = 49 for the real CNNs)


def _feature_shape(decoder: str) -> tuple[int, ...]:
    """One image's features as the decoder says it reads them (its ``feature_layout``)."""
    layout = decoder_class(decoder).feature_layout
    return {"pooled": (FEATURE_DIM,), "grid": (GRID_CELLS, FEATURE_DIM)}[layout]


@dataclass
class Case:
    """One decoder to check: its config (besides vocab_size and feature_dim); the shape of its
    features comes from the decoder's own ``feature_layout``."""

    id: str
    config: dict

    def model(self, device) -> CaptionDecoder:
        torch.manual_seed(0)
        config = ModelConfig(vocab_size=VOCAB, feature_dim=FEATURE_DIM, **self.config)
        return build_model(config).to(device).eval()

    def features(self, batch: int, device) -> torch.Tensor:
        shape = _feature_shape(self.config["decoder"])
        return torch.randn(batch, *shape, device=device)  # (B, FEATURE_DIM) or (B, P, FEATURE_DIM)


CASES = [
    Case("lstm", {"decoder": "lstm", "embed_size": 16, "hidden_size": 24}),
    Case(
        "lstm-2-layers-image-every-step",
        {
            "decoder": "lstm",
            "embed_size": 8,
            "hidden_size": 16,
            "num_layers": 2,
            "inject": "init+input",
        },
    ),
    Case(
        "attention-bahdanau",
        {
            "decoder": "attention",
            "embed_size": 8,
            "hidden_size": 16,
            "decoder_options": {"attention": "bahdanau", "attention_dim": 10},
        },
    ),
    Case(
        "attention-luong",
        {
            "decoder": "attention",
            "embed_size": 8,
            "hidden_size": 16,
            "decoder_options": {"attention": "luong"},
        },
    ),
    Case(
        "transformer-learned",
        {
            "decoder": "transformer",
            "decoder_options": {"d_model": 16, "heads": 2, "ff_dim": 24, "decoder_layers": 2},
        },
    ),
    Case(
        "transformer-sinusoidal-2-encoder-layers",
        {
            "decoder": "transformer",
            "feature_norm": False,
            "decoder_options": {
                "d_model": 12,
                "heads": 3,
                "ff_dim": 16,
                "encoder_layers": 2,
                "decoder_layers": 1,
                "positions": "sinusoidal",
            },
        },
    ),
]


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def case(request) -> Case:
    return request.param


def _captions(batch: int, length: int, device) -> torch.Tensor:
    """(B, T) word ids that start with <start> and use only real words after it."""
    captions = torch.randint(4, VOCAB, (batch, length), device=device)
    captions[:, 0] = START_ID
    return captions


# --------------------------------------------------------------------------------------------
# The protocol, on every decoder
# --------------------------------------------------------------------------------------------


def test_every_registered_decoder_is_tested():
    assert set(DECODERS) <= {case.config["decoder"] for case in CASES}


def test_teacher_forced_logits_equal_step_by_step(case, device):
    model = case.model(device)
    features, captions = case.features(3, device), _captions(3, 6, device)
    with torch.no_grad():
        logits, extra = model(features, captions)  # (B, T, V), {name: scalar}
        assert logits.shape == (3, 6, VOCAB)
        assert all(value.dim() == 0 for value in extra.values())
        state = model.init_state(features)
        for t in range(captions.size(1)):
            log_probs, state = model.step(captions[:, t], state)  # (B, V)
            assert log_probs.dtype == torch.float32
            expected = torch.log_softmax(logits[:, t].float(), dim=-1)
            assert torch.allclose(log_probs, expected, atol=1e-5), f"step {t}"


def test_padding_does_not_change_real_positions(case, device):
    model = case.model(device)
    features = case.features(2, device)
    captions = _captions(2, 7, device)
    short = captions[:1, :4]  # the first caption alone, 4 words
    padded = captions.clone()
    padded[0, 4:] = PAD_ID  # the same caption padded to the batch's length
    with torch.no_grad():
        alone, _ = model(features[:1], short)  # (1, 4, V)
        batched, _ = model(features, padded)  # (2, 7, V)
        unpadded, _ = model(features, captions)
    assert torch.allclose(batched[:1, :4], alone, atol=1e-5)
    assert torch.allclose(batched[1], unpadded[1], atol=1e-5)  # its neighbour is unaffected


def test_beam_width_one_equals_greedy(case, device):
    model = case.model(device)
    features = case.features(5, device)
    greedy = greedy_decode(model, features, max_length=10)
    beam = beam_search(model, features, beam_size=1, max_length=10, length_penalty=0.0)
    assert [hyps[0].ids for hyps in beam] == greedy


def test_batched_beam_equals_one_image_at_a_time(case, device):
    model = case.model(device)
    features = case.features(4, device)
    batched = beam_search(model, features, beam_size=3, max_length=8, n_best=3)
    for i in range(4):
        single = beam_search(model, features[i : i + 1], beam_size=3, max_length=8, n_best=3)[0]
        assert [h.ids for h in single] == [h.ids for h in batched[i]]
        assert [h.score for h in single] == pytest.approx([h.score for h in batched[i]], abs=1e-5)


def _batch_fields(state: DecoderState) -> dict[str, tuple[int, list[torch.Tensor]]]:
    """Every batch field that holds something: name -> (row dimension, its tensors)."""
    out = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if "batch_dim" in f.metadata and value is not None:
            tensors = list(value) if isinstance(value, (tuple, list)) else [value]
            out[f.name] = (f.metadata["batch_dim"], tensors)
    return out


def test_state_select_and_repeat_interleave_on_every_field(case, device):
    model = case.model(device)
    with torch.no_grad():
        state = model.init_state(case.features(3, device))
        tokens = torch.tensor([START_ID] * 3, device=device)
        _, state = model.step(tokens, state)  # a state after a step, extras included
    assert _batch_fields(state), "a decoder state with no batch field cannot follow its rows"
    repeated = state.repeat_interleave(2)
    rows = torch.tensor([2, 0, 2], device=device)
    chosen = state.select(rows)
    assert type(repeated) is type(state) and type(chosen) is type(state)
    for name, (dim, tensors) in _batch_fields(state).items():
        _, got_repeated = _batch_fields(repeated)[name]
        _, got_chosen = _batch_fields(chosen)[name]
        for tensor, rep, sel in zip(tensors, got_repeated, got_chosen, strict=True):
            assert tensor.size(dim) == 3, f"{name}: dim {dim} does not run over the rows"
            assert torch.equal(rep, tensor.repeat_interleave(2, dim=dim)), name
            assert torch.equal(sel, tensor.index_select(dim, rows)), name


def test_declared_row_dimensions_are_the_real_ones(case, device):
    """Stepping a reordered state gives the reordered step: a field declared with the wrong
    row dimension would mix images up here."""
    model = case.model(device)
    rows = torch.tensor([1, 1, 0, 2], device=device)
    tokens = torch.tensor([START_ID, 5, 6], device=device)
    with torch.no_grad():
        state = model.init_state(case.features(3, device))
        _, state = model.step(tokens, state)  # a state after a step, extras included
        log_probs, after = model.step(tokens, state)
        log_probs_chosen, after_chosen = model.step(tokens[rows], state.select(rows))
    assert torch.allclose(log_probs_chosen, log_probs[rows], atol=1e-6)
    for name, (_, tensors) in _batch_fields(after.select(rows)).items():
        for expected, got in zip(tensors, _batch_fields(after_chosen)[name][1], strict=True):
            assert torch.allclose(got, expected, atol=1e-6), name


def test_rebuilt_from_its_checkpoint(case, device, tmp_path):
    model = case.model(device)
    save_checkpoint(tmp_path / "model.pth", model)
    loaded, _ = load_model(tmp_path / "model.pth", device=device)
    assert type(loaded) is type(model) and loaded.config == model.config
    features, captions = case.features(2, device), _captions(2, 5, device)
    with torch.no_grad():
        assert torch.equal(loaded(features, captions)[0], model(features, captions)[0])


def test_default_optimiser_is_the_seed_recipe(case):
    train_config = TrainConfig(lr=3e-4, lr_factor=0.25, lr_patience=2)
    model = case.model("cpu")
    optimizer, scheduler = model.configure_optimizer(train_config)
    group = optimizer.param_groups[0]
    assert group.get("initial_lr", group["lr"]) == 3e-4  # the peak, under a warm-up schedule
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )
    if type(model).configure_optimizer is CaptionDecoder.configure_optimizer:
        assert isinstance(optimizer, torch.optim.Adam)
        assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        assert (scheduler.factor, scheduler.patience) == (0.25, 2)


# --------------------------------------------------------------------------------------------
# The attention decoder: what it adds to the protocol
# --------------------------------------------------------------------------------------------

ATTENTION_CASES = [case for case in CASES if case.config["decoder"] == "attention"]


@pytest.fixture(params=ATTENTION_CASES, ids=[case.id for case in ATTENTION_CASES])
def attention_case(request) -> Case:
    return request.param


def test_attention_declares_the_grid_and_describes_itself(attention_case):
    model = attention_case.model("cpu")
    assert type(model) is AttentionDecoder and model.feature_layout == "grid"
    assert LSTMDecoder.feature_layout == CaptionDecoder.feature_layout == "pooled"
    kind = attention_case.config["decoder_options"]["attention"].capitalize()
    assert model.describe() == f"LSTM 16 + {kind} attention"
    assert model.config.decoder_options["alpha_c"] == 1.0  # stored complete
    with pytest.raises(ValueError, match="reads the CNN grid"):
        model.init_state(torch.randn(2, FEATURE_DIM))  # a pooled vector


def test_attention_weights_sum_to_one_over_the_grid_at_every_step(attention_case, device):
    model = attention_case.model(device)
    features, captions = attention_case.features(3, device), _captions(3, 5, device)
    with torch.no_grad():
        state = model.init_state(features)
        assert state.attention.shape == (3, 0, GRID_CELLS)
        for t in range(captions.size(1)):
            _, state = model.step(captions[:, t], state)
            assert state.attention.shape == (3, t + 1, GRID_CELLS)  # (N, t, P)
    assert (state.attention >= 0).all()
    sums = state.attention.sum(dim=-1)  # (N, T)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


def test_attention_gate_is_between_zero_and_one(attention_case, device):
    model = attention_case.model(device)
    with torch.no_grad():
        state = model.init_state(attention_case.features(4, device))
        h = torch.randn(4, model.config.hidden_size, device=device) * 3  # (N, hidden)
        context, alpha, beta = model.attend(h, state.features, state.keys)
        ungated = model._affine(torch.bmm(alpha.unsqueeze(1), state.features).squeeze(1))
    assert beta.shape == (4, 1) and ((beta > 0) & (beta < 1)).all()
    assert torch.allclose(context, beta * ungated, atol=1e-6)


def test_attention_reads_the_layernormed_grid_with_its_affine_applied_after_pooling(
    attention_case, device
):
    """The grid is carried without the LayerNorm's scale and shift, which are applied to the
    mean and to each context instead: the same numbers as normalising every position in full
    (the weights sum to 1), checked with a scale and shift far from their initial 1 and 0."""
    model = attention_case.model(device)
    with torch.no_grad():
        model.feature_norm.weight.normal_(1.0, 0.5)
        model.feature_norm.bias.normal_(0.0, 0.5)
        features = attention_case.features(3, device)
        full = model.feature_norm(features)  # (N, P, D): LayerNorm with its affine
        state = model.init_state(features)
        assert not state.features.requires_grad  # nothing to write back into per step
        expected_h = torch.tanh(model.init_h(full.mean(dim=1)))
        assert torch.allclose(state.h, expected_h, atol=1e-5)
        assert torch.allclose(state.keys, model.score.keys(full), atol=1e-5)
        context, alpha, beta = model.attend(state.h, state.features, state.keys)
        expected = beta * torch.bmm(alpha.unsqueeze(1), full).squeeze(1)  # (N, D)
    assert torch.allclose(context, expected, atol=1e-5)


def test_attention_teacher_forcing_runs_each_caption_to_its_own_end(attention_case, device):
    """Training sorts the batch by caption length and stops each row after its last word:
    every caption's real positions match it run alone, in the caller's row order, the
    positions after it are zeros (their targets are padding), and the gradient reaches the
    parameters as before."""
    model = attention_case.model(device)
    features = attention_case.features(4, device)
    captions = _captions(4, 8, device)
    ends = [3, 8, 5, 1]  # real inputs per row (row 1 is full length, row 3 only <start>)
    for row, end in enumerate(ends):
        if end < 8:
            captions[row, end] = END_ID
            captions[row, end + 1 :] = PAD_ID
    with torch.no_grad():
        batched, _ = model(features, captions)  # (4, 8, V)
        for row, end in enumerate(ends):
            alone, _ = model(features[row : row + 1], captions[row : row + 1, :end])
            assert torch.allclose(batched[row, :end], alone[0], atol=1e-5), f"row {row}"
            assert (batched[row, end:] == 0).all()
    model.train()
    logits, extra = model(features, captions)
    (logits.sum() + extra["attention_penalty"]).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        if name != "score.v.bias":  # a shift of every score: the softmax cannot see it
            assert parameter.grad.abs().sum() > 0, name


def test_doubly_stochastic_penalty_is_zero_only_for_even_coverage():
    even = torch.full((2, GRID_CELLS, GRID_CELLS), 1.0 / GRID_CELLS, requires_grad=True)
    mask = torch.ones(2, GRID_CELLS, dtype=torch.bool)  # P steps, each 1/P on every position
    penalty = doubly_stochastic_penalty(even, mask)  # (B,)
    assert torch.allclose(penalty, torch.zeros(2), atol=1e-10)
    penalty.sum().backward()
    assert torch.allclose(even.grad, torch.zeros_like(even), atol=1e-6)  # a minimum
    staring = torch.zeros(2, GRID_CELLS, GRID_CELLS)
    staring[:, :, 0] = 1.0  # every step looks at the same position
    assert (doubly_stochastic_penalty(staring, mask) > 0).all()
    # Padded steps are not attention paid: half the steps masked leaves coverage at 1/2.
    half = mask.clone()
    half[:, GRID_CELLS // 2 :] = False
    assert torch.allclose(doubly_stochastic_penalty(even.detach(), half), torch.full((2,), 0.25))


def test_attention_penalty_leaves_out_padded_steps(attention_case, device):
    model = attention_case.model(device)
    features = attention_case.features(1, device)
    short = _captions(1, 4, device)  # <start> w w w
    padded = torch.cat(
        [short, torch.tensor([[END_ID, PAD_ID, PAD_ID]], device=device)], dim=1
    )  # a full caption's input ends with <end>, whose target is padding
    with torch.no_grad():
        _, alone = model(features, short)
        _, batched = model(features, padded)
    assert alone["attention_penalty"] > 0
    assert torch.allclose(alone["attention_penalty"], batched["attention_penalty"], atol=1e-6)
    model.options.alpha_c = 0.5  # the penalty's weight
    with torch.no_grad():
        _, halved = model(features, short)
    assert torch.allclose(halved["attention_penalty"], alone["attention_penalty"] / 2)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_decoding_returns_one_attention_row_per_word(attention_case, device, beam_size):
    model = attention_case.model(device)
    features = attention_case.features(4, device)
    decoded = decode_with_attention(model, features, Strategy(beam_size, max_length=8))
    if beam_size == 1:
        expected = greedy_decode(model, features, max_length=8)
    else:
        expected = [h[0].ids for h in beam_search(model, features, beam_size, max_length=8)]
    assert [ids for ids, _ in decoded] == expected
    for ids, attention in decoded:
        assert attention.shape == (len(ids), GRID_CELLS)  # (words, P)
        assert torch.allclose(attention.sum(-1), torch.ones(len(ids)), atol=1e-5)
    # Row by row, the weights are those the step that chose the word computed.
    ids, attention = decoded[0]
    with torch.no_grad():
        state = model.init_state(features[:1])
        tokens = [START_ID, *ids]
        for t in range(len(ids)):
            _, state = model.step(torch.tensor([tokens[t]], device=device), state)
    assert torch.allclose(attention, state.attention[0].cpu(), atol=1e-5)


def test_decode_with_attention_refuses_a_decoder_that_does_not_attend(device):
    model = CASES[0].model(device)
    with pytest.raises(StorytellerError, match="'lstm' decoder does not attend"):
        decode_with_attention(model, CASES[0].features(2, device), Strategy(max_length=4))


def test_a_few_steps_lower_the_attention_decoders_loss(attention_case, device):
    """Cross-entropy plus the penalty, as training's batch loss adds them, goes down on a tiny
    random batch (the loader does not serve grids yet, so no train_model run)."""
    model = attention_case.model(device)
    torch.manual_seed(1)
    features, captions = attention_case.features(4, device), _captions(4, 7, device)
    batch_loss = make_batch_loss(torch.device(device), False, PAD_ID, label_smoothing=0.0)
    optimizer, _ = model.configure_optimizer(TrainConfig(lr=1e-2))
    with torch.no_grad():
        before = batch_loss(model, features, captions)
    assert set(before.extra) == {"attention_penalty"}
    assert torch.allclose(before.total, before.cross_entropy + before.extra["attention_penalty"])
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        batch_loss(model, features, captions).total.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = batch_loss(model, features, captions)
    assert after.total < 0.7 * before.total


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_attention_learns_to_look_where_each_word_is(attention):
    """A task only attention solves: each photo is a grid of 6 positions, each holding one of 4
    word prototypes plus its position's own marker; the caption is the word at position 0,
    then the word at position 3. After training, each word is right and its weights peak on
    its position (uniform would give 1/6 everywhere), penalty included."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    prototypes, markers = torch.randn(4, 12), torch.randn(6, 12)  # (words, D), (P, D)

    def batch(n):
        words = torch.randint(0, 4, (n, 6), generator=generator)  # (n, P)
        noise = 0.1 * torch.randn(n, 6, 12, generator=generator)
        features = prototypes[words] + markers + noise  # (n, P, D)
        captions = torch.stack(  # (n, 4): <start>, word at 0, word at 3, <end>
            [
                torch.full((n,), START_ID),
                4 + words[:, 0],
                4 + words[:, 3],
                torch.full((n,), END_ID),
            ],
            dim=1,
        )
        return features, captions

    config = ModelConfig(
        vocab_size=8, feature_dim=12, embed_size=8, hidden_size=32, dropout=0.0,
        decoder="attention", decoder_options={"attention": attention},
    )  # fmt: skip
    model = build_model(config)
    optimizer, _ = model.configure_optimizer(TrainConfig(lr=1e-2))
    batch_loss = make_batch_loss(torch.device("cpu"), False, PAD_ID, label_smoothing=0.0)
    for _ in range(150):
        optimizer.zero_grad()
        batch_loss(model, *batch(32)).total.backward()
        optimizer.step()
    model.eval()
    features, captions = batch(200)
    with torch.no_grad():
        state = model.init_state(features)
        first, state = model.step(captions[:, 0], state)
        second, state = model.step(captions[:, 1], state)
    assert (first.argmax(-1) == captions[:, 1]).float().mean() > 0.95
    assert (second.argmax(-1) == captions[:, 2]).float().mean() > 0.95
    assert state.attention[:, 0, 0].mean() > 0.4 and state.attention[:, 1, 3].mean() > 0.4


# --------------------------------------------------------------------------------------------
# The transformer decoder: what it adds to the protocol
# --------------------------------------------------------------------------------------------

TRANSFORMER_CASES = [case for case in CASES if case.config["decoder"] == "transformer"]


@pytest.fixture(params=TRANSFORMER_CASES, ids=[case.id for case in TRANSFORMER_CASES])
def transformer_case(request) -> Case:
    return request.param


def test_transformer_declares_the_grid_and_describes_itself():
    model = TRANSFORMER_CASES[0].model("cpu")
    assert type(model) is TransformerDecoder and model.feature_layout == "grid"
    assert model.describe() == "Transformer 2x16, 2 heads"
    assert model.config.decoder_options["warmup_steps"] == 500  # stored complete
    default = build_model(ModelConfig(vocab_size=VOCAB, feature_dim=8, decoder="transformer"))
    assert default.describe() == "Transformer 2x256, 4 heads"
    with pytest.raises(ValueError, match="reads the CNN grid"):
        model.init_state(torch.randn(2, FEATURE_DIM))  # a pooled vector
    with pytest.raises(ValueError, match="more than grid_positions 64"):
        model.init_state(torch.randn(1, 65, FEATURE_DIM))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"d_model": 10, "heads": 4}, "does not divide"),
        ({"positions": "rotary"}, "'learned' or 'sinusoidal'"),
    ],
)
def test_transformer_refuses_impossible_options(options, message):
    with pytest.raises(StorytellerError, match="the 'transformer' decoder: .*" + message):
        build_model(ModelConfig(vocab_size=VOCAB, decoder="transformer", decoder_options=options))


def test_transformer_state_carries_the_grid_once_and_the_prefix(transformer_case, device):
    model = transformer_case.model(device)
    captions = _captions(2, 4, device)
    with torch.no_grad():
        state = model.init_state(transformer_case.features(2, device))
        d_model = model.options.d_model
        assert state.memory.shape == (2, GRID_CELLS, d_model) and state.tokens.shape == (2, 0)
        memory = state.memory
        for t in range(captions.size(1)):
            _, state = model.step(captions[:, t], state)
        assert state.memory is memory  # encoded once per image, not per word
        assert torch.equal(state.tokens, captions)  # (N, t): positions and padding mask
        assert [cache.shape for cache in state.layers] == [(2, 4, d_model)] * len(
            model.decoder.layers
        )  # (N, t, d_model) per layer


def test_transformer_rerunning_the_prefix_equals_the_cache(transformer_case, device):
    """The plain form (the decoder rerun over the prefix every step) gives what teacher
    forcing and the cached form give: the cache is an optimisation, not another model."""
    model = transformer_case.model(device)
    features, captions = transformer_case.features(3, device), _captions(3, 6, device)
    cached = beam_search(model, features, beam_size=3, max_length=8, n_best=3)
    model.incremental = False
    with torch.no_grad():
        logits, _ = model(features, captions)  # (B, T, V)
        state = model.init_state(features)
        assert state.layers is None
        for t in range(captions.size(1)):
            log_probs, state = model.step(captions[:, t], state)  # (B, V)
            expected = torch.log_softmax(logits[:, t].float(), dim=-1)
            assert torch.allclose(log_probs, expected, atol=1e-5), f"step {t}"
    rerun = beam_search(model, features, beam_size=3, max_length=8, n_best=3)
    for got, want in zip(rerun, cached, strict=True):
        assert [h.ids for h in got] == [h.ids for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)


def test_transformer_words_see_only_earlier_words(transformer_case, device):
    """Changing a later word leaves every earlier position's logits as they were."""
    model = transformer_case.model(device)
    features, captions = transformer_case.features(1, device), _captions(1, 6, device)
    changed = captions.clone()
    changed[0, 4] = (captions[0, 4] + 1 - 4) % (VOCAB - 4) + 4  # another real word
    with torch.no_grad():
        before, _ = model(features, captions)
        after, _ = model(features, changed)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not torch.allclose(before[:, 4], after[:, 4], atol=1e-6)


def test_transformer_optimiser_is_adamw_with_warmup_over_batches():
    model = TRANSFORMER_CASES[0].model("cpu")
    optimizer, scheduler = model.configure_optimizer(TrainConfig(lr=1e-3, weight_decay=0.01))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(
        p.dim() < 2 for p in plain["params"]
    )
    assert decayed["lr"] == pytest.approx(1e-3 / 500)  # the first batch: 1/warmup of the peak


# --------------------------------------------------------------------------------------------
# The generic decoder state
# --------------------------------------------------------------------------------------------


@dataclass
class _ManyKinds(DecoderState):
    first: torch.Tensor = batch_field(dim=0)  # (N, 2)
    layers: torch.Tensor = batch_field(dim=1)  # (L, N)
    caches: tuple = batch_field(dim=0)  # ((N, 3), (N, 1))
    absent: torch.Tensor | None = batch_field(dim=0)
    step: int = 0  # shared by every row
    notes: list = field(default_factory=list)


def test_state_reorders_every_kind_of_field():
    state = _ManyKinds(
        first=torch.arange(6).view(3, 2),
        layers=torch.arange(6).view(2, 3),
        caches=(torch.arange(9).view(3, 3), torch.arange(3).view(3, 1)),
        absent=None,
        step=4,
        notes=["kept"],
    )
    rows = torch.tensor([2, 2, 0])
    chosen = state.select(rows)
    assert chosen.first.tolist() == [[4, 5], [4, 5], [0, 1]]
    assert chosen.layers.tolist() == [[2, 2, 0], [5, 5, 3]]
    assert isinstance(chosen.caches, tuple)
    assert chosen.caches[0].tolist() == [[6, 7, 8], [6, 7, 8], [0, 1, 2]]
    assert chosen.caches[1].tolist() == [[2], [2], [0]]
    assert chosen.absent is None and chosen.step == 4 and chosen.notes == ["kept"]
    repeated = state.repeat_interleave(2)
    assert repeated.first[:, 0].tolist() == [0, 0, 2, 2, 4, 4]
    assert repeated.layers.tolist() == [[0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]
    assert repeated.caches[1].view(-1).tolist() == [0, 0, 1, 1, 2, 2]
    assert state.first.shape == (3, 2)  # the original is left as it was


def test_state_refuses_a_tensor_without_a_row_dimension():
    @dataclass
    class Forgetful(DecoderState):
        h: torch.Tensor = batch_field(dim=0)
        memory: torch.Tensor | None = None  # should have been a batch_field

    Forgetful(torch.zeros(2, 1)).select(torch.tensor([1, 0]))  # nothing in it: fine
    with pytest.raises(TypeError, match="memory.*batch_field"):
        Forgetful(torch.zeros(2, 1), torch.zeros(2, 4)).repeat_interleave(2)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass
class _TinyOptions:
    width: int = 3
    mode: str = "plain"


class _Tiny(LSTMDecoder):
    """An LSTM under another name, with options of its own: a stand-in for a new decoder."""

    options_class = _TinyOptions


@pytest.fixture
def tiny_registered():
    register_decoder("tiny")(_Tiny)
    yield _Tiny
    DECODERS.pop("tiny", None)


def test_the_lstm_is_listed_first_and_built_by_name():
    assert list(DECODERS)[0] == "lstm" and decoder_class("lstm") is LSTMDecoder
    config = ModelConfig(vocab_size=5, feature_dim=4, embed_size=4, hidden_size=4, decoder="lstm")
    model = build_model(config)
    assert type(model) is LSTMDecoder and model.describe() == "LSTM 4"


def test_unknown_decoder_is_a_clear_error():
    with pytest.raises(StorytellerError, match=r"unknown decoder 'gru'.*one of lstm"):
        build_model(ModelConfig(vocab_size=5, decoder="gru"))


def test_registered_decoder_is_built_with_its_options_complete(tiny_registered):
    config = ModelConfig(
        vocab_size=5, feature_dim=4, hidden_size=4, decoder="tiny", decoder_options={"width": 7}
    )
    model = build_model(config)
    assert type(model) is tiny_registered and model.options == _TinyOptions(width=7)
    assert model.config.decoder_options == {"width": 7, "mode": "plain"}  # what is saved
    assert resolve_config(config) == model.config
    assert config.decoder_options == {"width": 7}  # the caller's config is not changed
    with pytest.raises(
        StorytellerError, match=r"unknown decoder 'gru'.*one of lstm, attention, transformer, tiny"
    ):
        decoder_class("gru")


def test_unknown_options_are_refused_with_the_known_ones(tiny_registered):
    with pytest.raises(StorytellerError, match=r"no option depth \(its options: width, mode\)"):
        build_model(ModelConfig(vocab_size=5, decoder="tiny", decoder_options={"depth": 2}))
    with pytest.raises(StorytellerError, match=r"'lstm' decoder has no option width.*none"):
        build_model(ModelConfig(vocab_size=5, decoder="lstm", decoder_options={"width": 2}))


def test_a_name_is_registered_once(tiny_registered):
    register_decoder("tiny")(tiny_registered)  # the same class again: harmless
    with pytest.raises(ValueError, match="already registered"):
        register_decoder("tiny")(LSTMDecoder)


def test_a_decoder_refuses_a_config_for_another():
    with pytest.raises(StorytellerError, match="'lstm' decoder.*asks for 'gru'"):
        LSTMDecoder(ModelConfig(vocab_size=5, decoder="gru"))


# --------------------------------------------------------------------------------------------
# Checkpoints written before there was a choice of decoder
# --------------------------------------------------------------------------------------------

_OLD_MODEL_CONFIG = {  # ModelConfig.to_dict() as the code before the registry wrote it
    "vocab_size": 9,
    "feature_dim": 4,
    "embed_size": 6,
    "hidden_size": 8,
    "num_layers": 1,
    "dropout": 0.5,
    "feature_norm": True,
    "inject": "init",
    "encoder": "efficientnet_lite0",
}


def _old_checkpoint(path, model_config=_OLD_MODEL_CONFIG):
    """A checkpoint in the layout written before decoders had names: the bare LSTM's
    state_dict and a model config with no ``decoder`` key."""
    vocab = Vocabulary([f"w{i}" for i in range(5)], threshold=1)
    assert len(vocab) == model_config["vocab_size"]
    torch.manual_seed(1)
    model = LSTMDecoder(ModelConfig.from_dict(model_config)).eval()
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": dict(model_config),
            "train_config": TrainConfig().to_dict(),
            "vocab_fingerprint": vocab.fingerprint,
            "epoch": 3,
            "best_val_loss": 4.2,
        },
        path,
    )
    return model, vocab


def test_checkpoint_without_a_decoder_loads_as_the_lstm(tmp_path):
    path = tmp_path / "best_model.pth"
    original, vocab = _old_checkpoint(path)
    assert "decoder" not in torch.load(path, weights_only=True)["model_config"]
    model, checkpoint = load_model(path, vocab)
    assert type(model) is LSTMDecoder and checkpoint["epoch"] == 3
    assert model.config.decoder == "lstm" and model.config.decoder_options == {}
    features, captions = torch.randn(2, 4), torch.tensor([[1, 5, 6], [1, 7, 0]])
    with torch.no_grad():
        assert torch.equal(model(features, captions)[0], original(features, captions)[0])
    assert greedy_decode(model, features, 6) == greedy_decode(original, features, 6)


def test_checkpoint_with_an_unknown_decoder_names_the_file_and_the_choices(tmp_path):
    path = tmp_path / "future.pth"
    _, vocab = _old_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_config"]["decoder"] = "diffusion"
    torch.save(checkpoint, path)
    with pytest.raises(
        StorytellerError, match=r"future\.pth: cannot be rebuilt.*'diffusion'.*lstm"
    ):
        load_model(path, vocab)


def test_transformer_grid_table_is_fitted_to_the_cache_grid():
    fit = TransformerDecoder.with_grid
    # 7 x 7 and 8 x 8 keep the default 64: earlier runs' configs (and checkpoints) unchanged
    for grid in ((7, 7), (8, 8)):
        assert fit({}, grid, "c")["decoder_options"]["grid_positions"] == 64
    fitted = fit({"decoder_options": {"d_model": 16}}, (13, 13), "c")
    assert fitted["decoder_options"] == {"d_model": 16, "grid_positions": 169}
    asked = {"decoder_options": {"grid_positions": 200}}
    assert fit(asked, (13, 13), "c") == asked  # enough: kept as asked
    with pytest.raises(StorytellerError, match="grid_positions=64 is less than .* 169 .* of c"):
        fit({"decoder_options": {"grid_positions": 64}}, (13, 13), "c")
    assert LSTMDecoder.with_grid({"hidden_size": 8}, (13, 13), "c") == {"hidden_size": 8}
    # a 169-position model reads a 13 x 13 grid, and a checkpoint of it rebuilds the same size
    config = ModelConfig(VOCAB, FEATURE_DIM, decoder="transformer", **fitted)
    model = build_model(config)
    assert model.init_state(torch.randn(2, 169, FEATURE_DIM)).memory.shape == (2, 169, 16)

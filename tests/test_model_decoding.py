from math import nan

import pytest
import torch
from PIL import Image

from storyteller.config import ModelConfig, Strategy
from storyteller.data.vocab import END_ID, Vocabulary
from storyteller.decoding import (
    beam_search,
    decode,
    generate_captions,
    greedy_decode,
)
from storyteller.errors import StorytellerError
from storyteller.inference import Captioner
from storyteller.models import LSTMDecoder


@pytest.fixture
def model(device):
    """A small seeded model on the test lane's device (``pytest --device``)."""
    torch.manual_seed(0)
    net = LSTMDecoder(
        ModelConfig(vocab_size=30, feature_dim=12, embed_size=16, hidden_size=24, decoder="lstm")
    )
    return net.to(device).eval()


def test_seed_architecture_defaults():
    config = ModelConfig(vocab_size=100, decoder="lstm")
    net = LSTMDecoder(config)
    assert (
        config.feature_dim,
        config.embed_size,
        config.hidden_size,
        config.num_layers,
        config.dropout,
    ) == (2048, 256, 512, 1, 0.5)
    assert net.lstm.hidden_size == 512 and net.embed.embedding_dim == 256


def test_forward_shapes_and_multilayer(model, device):
    logits, _ = model(
        torch.randn(3, 12, device=device), torch.randint(0, 30, (3, 7), device=device)
    )
    assert logits.shape == (3, 7, 30)
    deep = LSTMDecoder(
        ModelConfig(
            vocab_size=30,
            feature_dim=12,
            embed_size=8,
            hidden_size=16,
            num_layers=2,
            decoder="lstm",
        )
    ).to(device)
    state = deep.init_state(torch.randn(4, 12, device=device))
    assert state.h.shape == state.c.shape == (2, 4, 16)
    logits, _ = deep(torch.randn(4, 12, device=device), torch.randint(0, 30, (4, 5), device=device))
    assert logits.shape == (4, 5, 30)


def test_padding_does_not_change_real_positions(model, device):
    features = torch.randn(1, 12, device=device)
    captions = torch.tensor([[1, 5, 6, 2]], device=device)
    padded = torch.tensor([[1, 5, 6, 2, 0, 0, 0]], device=device)
    assert torch.allclose(
        model(features, captions)[0], model(features, padded)[0][:, :4], atol=1e-6
    )


def test_beam_width_one_equals_greedy(model, device):
    features = torch.randn(6, 12, device=device)
    greedy = greedy_decode(model, features, max_length=12)
    beam = [
        h[0].ids
        for h in beam_search(model, features, beam_size=1, max_length=12, length_penalty=0.0)
    ]
    assert beam == greedy


def test_a_strategy_picks_greedy_for_width_one_and_beam_search_above(model, device):
    features = torch.randn(6, 12, device=device)
    greedy = Strategy(beam_size=1, max_length=12)
    assert greedy.greedy and greedy.name == "greedy" and greedy.describe() == "greedy"
    assert decode(model, features, greedy) == greedy_decode(model, features, max_length=12)
    beam = Strategy(beam_size=3, max_length=12, length_penalty=0.5)
    assert not beam.greedy and (beam.name, beam.describe()) == ("beam3", "beam 3")
    expected = [
        h[0].ids
        for h in beam_search(model, features, beam_size=3, max_length=12, length_penalty=0.5)
    ]
    assert decode(model, features, beam) == expected
    assert beam.to_dict() == {"beam_size": 3, "max_length": 12, "length_penalty": 0.5}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"beam_size": 0}, "Strategy.beam_size must be an integer in [1, 10], got 0"),
        ({"beam_size": -2}, "Strategy.beam_size must be an integer in [1, 10], got -2"),
        ({"beam_size": 11}, "Strategy.beam_size must be an integer in [1, 10], got 11"),
        ({"beam_size": 2.5}, "Strategy.beam_size must be an integer in [1, 10], got 2.5"),
        ({"beam_size": True}, "Strategy.beam_size must be an integer in [1, 10], got True"),
        ({"max_length": 0}, "Strategy.max_length must be an integer in [1, 10000], got 0"),
        ({"length_penalty": nan}, "Strategy.length_penalty must be a number in [0, 5], got nan"),
        (
            {"length_penalty": 1e300},
            "Strategy.length_penalty must be a number in [0, 5], got 1e+300",
        ),
    ],
)
def test_a_bad_strategy_is_a_one_line_error(settings, message):
    with pytest.raises(StorytellerError) as error:
        Strategy(**settings)
    assert str(error.value) == message and "\n" not in message


def test_the_captioner_refuses_a_beam_width_below_one_instead_of_going_greedy(tiny_run):
    """``Captioner.caption(beam_size=0)`` used to run greedy without a word."""
    captioner = Captioner.load(tiny_run)
    photo = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.raises(StorytellerError, match=r"beam_size must be an integer in \[1, 10\]"):
        captioner([photo], beam_size=0)


def test_batched_beam_equals_one_image_at_a_time(model, device):
    features = torch.randn(5, 12, device=device)
    batched = beam_search(model, features, beam_size=4, max_length=10, n_best=4)
    for i in range(5):
        single = beam_search(model, features[i : i + 1], beam_size=4, max_length=10, n_best=4)[0]
        assert [h.ids for h in single] == [h.ids for h in batched[i]]
        assert [h.score for h in single] == pytest.approx([h.score for h in batched[i]], abs=1e-5)


def test_n_best_sorted_and_scores_are_consistent(model, device):
    hyps = beam_search(
        model,
        torch.randn(2, 12, device=device),
        beam_size=5,
        max_length=10,
        n_best=5,
        length_penalty=0.0,
    )
    for image in hyps:
        scores = [h.score for h in image]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(t, int) and 0 <= t < 30 for h in image for t in h.ids)
        assert image[0].score == pytest.approx(image[0].log_prob)  # alpha = 0: no normalisation


def test_beam_score_equals_sequence_log_probability(model, device):
    features = torch.randn(1, 12, device=device)
    best = beam_search(model, features, beam_size=3, max_length=8, length_penalty=0.0)[0][0]
    state = model.init_state(features)
    token, total = torch.tensor([1], device=device), 0.0
    sequence = best.ids + ([END_ID] if len(best.ids) < 8 else [])
    for word in sequence:
        log_probs, state = model.step(token, state)
        total += log_probs[0, word].item()
        token = torch.tensor([word], device=device)
    assert best.log_prob == pytest.approx(total, abs=1e-4)


def test_beam_search_finds_higher_likelihood_than_greedy(model, device):
    features = torch.randn(8, 12, device=device)
    greedy = beam_search(model, features, beam_size=1, max_length=10, length_penalty=0.0)
    beam = beam_search(model, features, beam_size=5, max_length=10, length_penalty=0.0)
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].log_prob >= g[0].log_prob - 1e-5


def test_length_penalty_prefers_longer_captions(model, device):
    features = torch.randn(16, 12, device=device)
    short = beam_search(model, features, beam_size=5, max_length=15, length_penalty=0.0)
    long = beam_search(model, features, beam_size=5, max_length=15, length_penalty=2.0)
    mean = lambda hyps: sum(len(h[0].ids) for h in hyps) / len(hyps)  # noqa: E731
    assert mean(long) >= mean(short)


def test_never_empty_and_no_special_tokens(model, device):
    for ids in greedy_decode(model, torch.randn(10, 12, device=device), max_length=6):
        assert 1 <= len(ids) <= 6 and not {0, 1, 2, 3} & set(ids)


def test_generate_captions_chunks(model, device):
    vocab = Vocabulary([f"w{i}" for i in range(26)], threshold=1)
    features = torch.randn(7, 12, device=device)
    beam = Strategy(beam_size=3)
    assert generate_captions(model, features, vocab, beam, batch_size=2) == generate_captions(
        model, features, vocab, beam, batch_size=100
    )


def test_invalid_beam_arguments(model, device):
    with pytest.raises(ValueError):
        beam_search(model, torch.randn(1, 12, device=device), beam_size=2, n_best=3)


@pytest.mark.parametrize("inject", ["init", "init+input"])
def test_variants_decode_consistently(inject, device):
    torch.manual_seed(0)
    config = ModelConfig(
        decoder="lstm",
        vocab_size=30,
        feature_dim=12,
        embed_size=16,
        hidden_size=24,
        feature_norm=True,
        inject=inject,
    )
    net = LSTMDecoder(config).to(device).eval()
    features = torch.randn(3, 12, device=device)
    assert net(features, torch.randint(0, 30, (3, 5), device=device))[0].shape == (3, 5, 30)
    greedy = greedy_decode(net, features, max_length=8)
    assert [h[0].ids for h in beam_search(net, features, 1, 8, length_penalty=0.0)] == greedy
    with pytest.raises(ValueError, match="inject"):
        LSTMDecoder(ModelConfig(vocab_size=5, inject="everywhere", decoder="lstm"))

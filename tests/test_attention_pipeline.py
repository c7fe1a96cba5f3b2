"""The grid captioners through the whole pipeline: the attention captioner (grid features,
training with its penalty, resume, evaluation, the CLI's flags, captioning a new photo) and
the transformer (run-all on the same grid, its per-batch warm-up, captioning a new photo)."""

import json

import pytest
from test_train import SMALL, _Interrupt

from storyteller import pipeline
from storyteller.checkpoint import read_checkpoint
from storyteller.cli import _configs, build_parser, train_flags
from storyteller.config import TrainConfig
from storyteller.errors import StorytellerError
from storyteller.inference import Captioner

ATTENTION = {**SMALL, "decoder": "attention", "decoder_options": {"attention": "luong"}}
quiet = lambda _: None  # noqa: E731


def _run_all(data, out, model_overrides: dict, lr: float = 1e-3):
    """`run-all` on the tiny sample: 2 epochs, small sizes, no METEOR."""
    results = pipeline.run_all(
        data,
        out,
        encoder="efficientnet_lite0",
        train_config=TrainConfig(num_epochs=2, batch_size=32, lr=lr),
        model_overrides=model_overrides,
        threshold=2,
        meteor="none",
        log=quiet,
    )
    return out, results


@pytest.fixture(scope="module")
def attention_run(tiny_data, tmp_path_factory):
    return _run_all(tiny_data, tmp_path_factory.mktemp("attention-run"), ATTENTION)


def test_run_all_extracts_the_grid_and_trains_the_attention_decoder(attention_run):
    out, results = attention_run
    meta = json.loads((out / "features" / "features.json").read_text())
    assert meta["layout"] == "grid" and meta["grid"] == [7, 7]
    checkpoint = read_checkpoint(out / "best_model.pth")
    assert checkpoint["model_config"]["decoder"] == "attention"
    assert checkpoint["model_config"]["decoder_options"]["attention"] == "luong"
    history = json.loads((out / "history.json").read_text())
    assert all(h["train_attention_penalty"] >= 0 for h in history)
    assert {"greedy", "beam5"} <= set(results) and results["greedy"]["distinct_captions"] > 0


def test_attention_captioner_captions_a_new_photo(attention_run, tiny_data):
    out, _ = attention_run
    captioner = Captioner.from_files(out / "best_model.pth", out / "vocab.pkl")
    assert captioner.extractor.layout == "grid"
    photo = sorted((tiny_data / "Images").iterdir())[0]
    caption = captioner([photo], beam_size=3)[0]
    assert isinstance(caption, str) and caption.split()


def test_attention_training_resumes_and_matches_uninterrupted(attention_run, tiny_data, tmp_path):
    out, _ = attention_run
    config = TrainConfig(num_epochs=3, batch_size=32, patience=10)

    def prepared(folder):
        folder.mkdir()
        (folder / "features").mkdir()
        for f in (out / "features").iterdir():
            (folder / "features" / f.name).write_bytes(f.read_bytes())
        for name in ("vocab.pkl", "splits.json"):
            (folder / name).write_bytes((out / name).read_bytes())
        return folder

    data = tiny_data
    straight = prepared(tmp_path / "straight")
    expected = pipeline.train_step(data, straight, config, ATTENTION, log=quiet).history
    run = prepared(tmp_path / "interrupted")

    def die(record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        pipeline.train_step(data, run, config, ATTENTION, on_epoch=die, log=quiet)
    messages = []
    result = pipeline.train_step(data, run, config, ATTENTION, log=messages.append)
    assert "resuming" in messages[0]
    assert [h["val_loss"] for h in result.history] == pytest.approx(
        [h["val_loss"] for h in expected], rel=1e-4
    )


def test_attention_decoder_on_a_pooled_cache_says_how_to_get_the_grid(tiny_data, tiny_run):
    with pytest.raises(StorytellerError, match="--layout grid"):
        pipeline.train_step(tiny_data, tiny_run, TrainConfig(num_epochs=1), ATTENTION, log=quiet)


def test_decoder_flags_round_trip_and_refuse_attention_without_its_decoder():
    train, model = TrainConfig(num_epochs=2), dict(ATTENTION)
    args = build_parser().parse_args(["train", *train_flags(train, model)])
    parsed_train, parsed_model = _configs(args)
    assert parsed_train == train and {k: parsed_model[k] for k in model} == model
    with pytest.raises(StorytellerError, match="--decoder attention"):
        _configs(build_parser().parse_args(["train", "--attention", "luong"]))


# --------------------------------------------------------------------------------------------
# The transformer: run-all on the attention run's grid (reused, so no second extraction)
# --------------------------------------------------------------------------------------------

TRANSFORMER = {
    "decoder": "transformer",
    "decoder_options": {"d_model": 32, "heads": 2, "ff_dim": 64, "warmup_steps": 4},
}


@pytest.fixture(scope="module")
def transformer_run(attention_run, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("transformer-run")
    (out / "features").mkdir()
    for f in (attention_run[0] / "features").iterdir():
        (out / "features" / f.name).write_bytes(f.read_bytes())
    return _run_all(tiny_data, out, TRANSFORMER, lr=3e-3)


def test_run_all_trains_the_transformer_on_the_grid(transformer_run):
    out, results = transformer_run
    meta = json.loads((out / "features" / "features.json").read_text())
    assert meta["layout"] == "grid"  # the attention run's grid, reused (extract skips it)
    checkpoint = read_checkpoint(out / "best_model.pth")
    assert checkpoint["model_config"]["decoder"] == "transformer"
    assert checkpoint["model_config"]["decoder_options"]["d_model"] == 32
    history = json.loads((out / "history.json").read_text())
    assert [set(h) & {"train_loss", "val_loss"} for h in history] == [
        {"train_loss", "val_loss"}
    ] * 2
    # 5 batches an epoch, 4 of warm-up, then sqrt(4 / batch): the LR the next batch would get
    assert history[0]["lr"] == pytest.approx(3e-3 * (4 / 6) ** 0.5)
    assert history[1]["lr"] == pytest.approx(3e-3 * (4 / 11) ** 0.5)
    assert {"greedy", "beam5"} <= set(results) and results["greedy"]["distinct_captions"] > 0


def test_transformer_captioner_captions_a_new_photo(transformer_run, tiny_data):
    out, _ = transformer_run
    captioner = Captioner.from_files(out / "best_model.pth", out / "vocab.pkl")
    assert captioner.extractor.layout == "grid"
    assert captioner.model.describe() == "Transformer 2x32, 2 heads"
    photo = sorted((tiny_data / "Images").iterdir())[0]
    caption = captioner([photo], beam_size=3)[0]
    assert isinstance(caption, str) and caption.split()


def test_transformer_decoder_flag_round_trips():
    train, model = TrainConfig(num_epochs=2), {"decoder": "transformer"}
    args = build_parser().parse_args(["train", *train_flags(train, model)])
    assert _configs(args)[1]["decoder"] == "transformer"

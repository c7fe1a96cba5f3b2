"""The grid captioners through the whole pipeline: the attention captioner (grid features,
training with its penalty, resume, evaluation, the CLI's flags, captioning a new photo) and
the transformer (run-all on the same grid, its per-batch warm-up, captioning a new photo);
attention maps (evaluate, the CLI, the app page) and the Space for both."""

import json
import math
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import running_app, space_folder
from conftest import cli
from gradio_client import Client, handle_file
from PIL import Image
from test_train import SMALL, _Interrupt

from storyteller import pipeline
from storyteller.cli import build_parser
from storyteller.cli.train import configs
from storyteller.config import ModelConfig, TrainConfig, train_flags
from storyteller.errors import StorytellerError
from storyteller.figures.attention_maps import AttentionCaption, figure_name
from storyteller.figures.plots import attention_figure, figure_pixels
from storyteller.inference import Captioner
from storyteller.models.checkpoint import read_checkpoint
from storyteller.run_folder import ATTENTION_MAPS_DIR

ATTENTION = {**SMALL, "decoder": "attention", "decoder_options": {"attention": "luong"}}
TRANSFORMER = {
    "decoder": "transformer",
    "decoder_options": {"d_model": 32, "heads": 2, "ff_dim": 64, "warmup_steps": 4},
}
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


@pytest.mark.parametrize("model", [ATTENTION, TRANSFORMER], ids=["attention", "transformer"])
def test_grid_captioner_training_resumes_and_matches_uninterrupted(
    model, attention_run, tiny_data, tmp_path
):
    """Killed after its first epoch, training resumes and repeats the uninterrupted run's
    validation losses: for the transformer that includes its per-batch warm-up schedule and
    AdamW state (the LR after every epoch must match too)."""
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
    expected = pipeline.train_step(data, straight, config, model, log=quiet).history
    run = prepared(tmp_path / "interrupted")

    def die(record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        pipeline.train_step(data, run, config, model, on_epoch=die, log=quiet)
    messages = []
    result = pipeline.train_step(data, run, config, model, log=messages.append)
    assert "resuming" in messages[0]
    for key in ("val_loss", "lr"):
        assert [h[key] for h in result.history] == pytest.approx(
            [h[key] for h in expected], rel=1e-4
        ), key


def test_the_python_api_the_cli_and_the_notebooks_train_the_same_default_captioner(
    attention_run, tiny_data, tmp_path
):
    """One default decoder: ModelConfig's, which `train`/`run-all` and notebook 03 use too."""
    from storyteller.notebook.settings import setup

    parser = build_parser()
    cli = {parser.parse_args([command]).decoder for command in ("train", "run-all")}
    assert cli == {ModelConfig.decoder} == {setup(tiny_data, tmp_path / "nb", log=quiet).decoder}
    out, _ = attention_run
    run = tmp_path / "run"
    run.mkdir()
    for name in ("features", "vocab.pkl", "splits.json"):
        (run / name).symlink_to(out / name)
    sizes = {"hidden_size": 64, "embed_size": 32}  # no decoder named
    pipeline.train_step(tiny_data, run, TrainConfig(num_epochs=1), sizes, log=quiet)
    trained = read_checkpoint(run / "best_model.pth")["model_config"]
    _, model = configs(parser.parse_args(["train", "--hidden-size", "64", "--embed-size", "32"]))
    assert trained["decoder"] == model["decoder"] == ModelConfig.decoder


def test_attention_decoder_on_a_pooled_cache_says_how_to_get_the_grid(tiny_data, tiny_run):
    with pytest.raises(StorytellerError, match="--layout grid"):
        pipeline.train_step(tiny_data, tiny_run, TrainConfig(num_epochs=1), ATTENTION, log=quiet)


def test_decoder_flags_round_trip_and_refuse_attention_without_its_decoder():
    train, model = TrainConfig(num_epochs=2), dict(ATTENTION)
    flags = train_flags(train, model)
    parsed_train, parsed_model = configs(build_parser().parse_args(["train", *flags]))
    assert parsed_train == train and {k: parsed_model[k] for k in model} == model
    scoring = model["decoder_options"]["attention"]
    assert f"attention={scoring}" in flags and "--attention" not in flags
    lstm = ["train", "--decoder", "lstm", "--decoder-option", "attention=luong"]
    with pytest.raises(StorytellerError, match="'lstm' decoder has no option 'attention'"):
        configs(build_parser().parse_args(lstm))
    with pytest.raises(SystemExit):  # one way to choose the scoring: --decoder-option
        build_parser().parse_args(["train", "--attention", "luong"])


# --------------------------------------------------------------------------------------------
# The transformer: run-all on the attention run's grid (reused, so no second extraction)
# --------------------------------------------------------------------------------------------


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


# SqueezeNet's 13 x 13 grid: more positions than the transformer's default table of 64.


@pytest.fixture(scope="module")
def squeezenet_run(tiny_data, tmp_path_factory):
    """A run folder with a 13 x 13 grid cache from random-weight SqueezeNet (no download)."""
    from storyteller.data.captions import load_dataset
    from storyteller.features import cache as features_module
    from storyteller.features.encoders import build_encoder

    out = tmp_path_factory.mktemp("squeezenet-run")
    dataset = load_dataset(tiny_data)
    encoder = build_encoder("squeezenet1_1", pretrained=False, grid=True)
    features_module.extract_features(
        dataset.image_dir, dataset.images, out / "features", "squeezenet1_1", 16, 0,
        encoder=encoder, layout="grid",
    )  # fmt: skip
    pipeline.vocab_step(tiny_data, out, threshold=2, log=quiet)
    return out


def test_transformer_sizes_its_grid_table_from_a_13x13_cache(
    squeezenet_run, tiny_data, monkeypatch
):
    out = squeezenet_run
    assert json.loads((out / "features" / "features.json").read_text())["grid"] == [13, 13]
    train = TrainConfig(num_epochs=1, batch_size=32)
    pipeline.train_step(tiny_data, out, train, TRANSFORMER, resume=False, log=quiet)
    options = read_checkpoint(out / "best_model.pth")["model_config"]["decoder_options"]
    assert options["grid_positions"] == 169  # the table is as long as the grid, in the file
    # A second epoch resumes: the fitted config matches the one the checkpoint stores.
    logged = []
    pipeline.train_step(
        tiny_data, out, TrainConfig(num_epochs=2, batch_size=32), TRANSFORMER, log=logged.append
    )
    assert any(line.startswith("resuming from") for line in logged)
    # caption (and the app) rebuild the 169-position model from the checkpoint alone
    from storyteller.features import cache as features_module
    from storyteller.features.encoders import build_encoder

    def random_weights(name, grid=False):  # no download: the weights are not the point
        return build_encoder(name, pretrained=False, grid=grid)

    monkeypatch.setattr(features_module, "build_encoder", random_weights)
    captioner = Captioner.from_files(out / "best_model.pth", out / "vocab.pkl")
    assert captioner.model.grid_positions.shape == (169, 32)
    photo = sorted((tiny_data / "Images").iterdir())[0]
    assert captioner([photo], beam_size=2)[0].split()


def test_grid_positions_asked_below_the_cache_grid_is_a_one_line_error(
    squeezenet_run, tiny_data, tmp_path
):
    small = {**TRANSFORMER, "decoder_options": {**TRANSFORMER["decoder_options"]}}
    small["decoder_options"]["grid_positions"] = 100
    train = TrainConfig(num_epochs=1, batch_size=32)
    with pytest.raises(
        StorytellerError, match=r"grid_positions=100 is less than the 13 x 13 = 169"
    ):
        pipeline.train_step(tiny_data, squeezenet_run, train, small, resume=False, log=quiet)
    # train_model called with such a config directly: the same error, before any batch
    from storyteller.config import ModelConfig
    from storyteller.data.captions import load_dataset
    from storyteller.data.vocab import Vocabulary
    from storyteller.features.cache_format import load_feature_cache
    from storyteller.training.train import train_model

    cache = load_feature_cache(squeezenet_run / "features")
    vocab = Vocabulary.load(squeezenet_run / "vocab.pkl")
    config = ModelConfig(len(vocab), cache.dim, encoder=cache.encoder, **small)
    splits = pipeline.load_splits(squeezenet_run)
    with pytest.raises(StorytellerError, match="169 positions of the cache"):
        train_model(
            cache, load_dataset(tiny_data), splits, vocab, tmp_path, config, train, log=quiet
        )


def test_transformer_decoder_flags_round_trip_with_its_options():
    train = TrainConfig(num_epochs=2)
    for model in ({"decoder": "transformer"}, TRANSFORMER):
        flags = train_flags(train, model)
        parsed = configs(build_parser().parse_args(["train", *flags]))[1]
        assert parsed["decoder"] == "transformer"
        assert parsed.get("decoder_options", {}) == model.get("decoder_options", {})
    assert "--decoder-option" in train_flags(train, TRANSFORMER)


def test_decoder_options_flag_reads_each_option_as_its_type():
    def model(*flags):
        return configs(build_parser().parse_args(["train", *flags]))[1]

    parsed = model(
        "--decoder", "transformer", "--decoder-option", "d_model=64",
        "--decoder-option", "positions=sinusoidal", "--decoder-option", "dropout=0.2",
    )  # fmt: skip
    assert parsed["decoder_options"] == {"d_model": 64, "positions": "sinusoidal", "dropout": 0.2}
    options = ["--decoder-option", "attention=luong", "--decoder-option", "alpha_c=0"]
    parsed = model("--decoder", "attention", *options)
    assert parsed["decoder_options"] == {"attention": "luong", "alpha_c": 0.0}
    for flags, message in (
        (["--decoder", "transformer", "--decoder-option", "depth=3"], "no option 'depth'.*d_model=256"),
        (["--decoder", "lstm", "--decoder-option", "alpha_c=1"], "'lstm' decoder has no option 'alpha_c'.*none"),
        (["--decoder", "transformer", "--decoder-option", "heads=two"], "heads takes an integer, not 'two'"),
        (["--decoder", "attention", "--decoder-option", "alpha_c"], "NAME=VALUE, not 'alpha_c'"),
    ):  # fmt: skip
        with pytest.raises(StorytellerError, match=message):
            model(*flags)


def test_impossible_decoder_options_are_one_line_errors_from_the_cli(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    result = cli(
        "train", "--out", str(run), "--decoder", "transformer",
        "--decoder-option", "d_model=30", "--decoder-option", "heads=4",
        "--epochs", "1", "--no-resume",
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "'transformer' decoder: d_model 30 does not divide into 4 heads" in result.stderr


# --------------------------------------------------------------------------------------------
# Attention maps: where the model looked for each word
# --------------------------------------------------------------------------------------------


def test_evaluate_says_which_decoder_and_draws_where_it_looked(attention_run):
    out, results = attention_run
    for decoding in ("greedy", "beam5"):
        entry = results[decoding]
        assert entry["decoder"] == "attention" and "Luong attention" in entry["model"]
        assert entry["test_perplexity"] == pytest.approx(math.exp(entry["test_loss"]), rel=1e-3)
    assert results["greedy"]["test_loss"] == results["beam5"]["test_loss"]  # one model
    figures = sorted((out / ATTENTION_MAPS_DIR).glob("*.png"))
    assert len(figures) == 4  # the first four test photos
    test = json.loads((out / "splits.json").read_text())["test"]
    assert {f.stem for f in figures} == {Path(name).stem for name in test[:4]}
    with Image.open(figures[0]) as figure:
        assert figure.width > 400 and figure.height > 200


def test_lstm_runs_have_no_attention_maps_but_say_their_decoder(tiny_run):
    results = pipeline.evaluate_step(None, tiny_run, (1,), meteor="none", log=quiet)
    assert results["greedy"]["decoder"] == "lstm"
    assert results["greedy"]["test_perplexity"] > 1
    assert not (tiny_run / ATTENTION_MAPS_DIR).exists()


def test_attention_figure_has_the_photo_then_one_panel_per_word():
    words = ["a", "dog", "runs"]
    weights = torch.softmax(torch.randn(3, 49), dim=-1)  # (T, P)
    result = AttentionCaption("a dog runs", words, weights, (7, 7))
    view = Image.new("RGB", (224, 224), "white")
    figure = attention_figure(view, result)
    panels = [ax for ax in figure.axes if ax.images]
    peaks = [f"{p:.0%}" for p in weights.max(dim=-1).values.tolist()]
    titles = [f"{word}  ({peak})" for word, peak in zip(words, peaks, strict=True)]
    assert [ax.get_title() for ax in panels] == ["a dog runs", *titles]
    # Each word's panel is the photo lit by its weights: full brightness on the cell the word
    # looked at most, dimmed (not black) on the least.
    lit = np.asarray(panels[2].images[0].get_array())  # (H, W, 3) for "dog"
    assert lit.shape == (224, 224, 3)
    cells = weights[1].reshape(7, 7)
    top = divmod(int(cells.argmax()), 7)
    low = divmod(int(cells.argmin()), 7)
    centre = lambda cell: lit[cell[0] * 32 + 16, cell[1] * 32 + 16, 0]  # noqa: E731
    assert centre(top) == pytest.approx(1.0, abs=0.02)
    assert 0.15 <= centre(low) < centre(top)
    pixels = figure_pixels(figure)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


def test_figure_names_are_safe_and_never_collide():
    taken: set[str] = set()
    assert figure_name("Images/1000268201_693b08cb0e.jpg", taken) == "1000268201_693b08cb0e.png"
    assert figure_name("other/1000268201_693b08cb0e.jpg", taken) == "1000268201_693b08cb0e-2.png"
    assert figure_name("../../we ird;name.jpg") == "we_ird_name.png"
    assert figure_name("") == "image.png"


def test_caption_cli_writes_one_attention_map_per_photo(attention_run, tiny_data, tmp_path):
    out, _ = attention_run
    photos = sorted((tiny_data / "Images").iterdir())[:2]
    maps = tmp_path / "maps"
    args = ["--checkpoint", str(out / "best_model.pth"), "--vocab", str(out / "vocab.pkl")]
    result = cli("caption", *map(str, photos), *args, "--beam", "3", "--attention-maps", str(maps))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == list(map(str, photos))
    for line in lines:
        assert Path(line["attention_map"]).is_file() and line["caption"].split()
    # The figure's caption is the caption printed without maps (same decoding).
    plain = cli("caption", str(photos[0]), *args, "--beam", "3")
    assert json.loads(plain.stdout)["caption"] == lines[0]["caption"]


def test_caption_cli_refuses_attention_maps_for_a_captioner_that_does_not_attend(
    tiny_run, tiny_data, tmp_path
):
    photo = sorted((tiny_data / "Images").iterdir())[0]
    result = cli(
        "caption",
        str(photo),
        "--checkpoint",
        str(tiny_run / "best_model.pth"),
        "--vocab",
        str(tiny_run / "vocab.pkl"),
        "--attention-maps",
        str(tmp_path / "maps"),
    )
    assert result.returncode != 0
    assert "'lstm' captioner" in result.stderr and "--decoder attention" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "maps").exists()


# --------------------------------------------------------------------------------------------
# The Space: deployed and served for each grid captioner
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["attention_run", "transformer_run"])
def test_space_folder_serves_the_same_captions(run, request, tiny_data, tmp_path):
    out, _ = request.getfixturevalue(run)
    space = space_folder(out, tmp_path / "space")
    photo = sorted((tiny_data / "Images").iterdir())[1]
    original = Captioner.from_files(out / "best_model.pth", out / "vocab.pkl")
    shipped = Captioner.from_files(space / "best_model.pth", space / "vocab.pkl")
    assert shipped.model.name == original.model.name and shipped.extractor.layout == "grid"
    assert shipped([photo], beam_size=3) == original([photo], beam_size=3)


@pytest.fixture(scope="module")
def attention_app(attention_run, tmp_path_factory):
    out, _ = attention_run
    space = space_folder(out, tmp_path_factory.mktemp("attention-app") / "space")
    with running_app(space) as app:
        yield space, app


def test_app_serves_an_attention_captioner_and_says_which(attention_app, tiny_data):
    space, app = attention_app
    photo = sorted((tiny_data / "Images").iterdir())[2]
    served = Client(app.url, verbose=False).predict(
        handle_file(photo), "beam", 3, api_name="/caption"
    )
    local = Captioner.from_files(space / "best_model.pth", space / "vocab.pkl")
    assert served == local([photo], beam_size=3)[0]
    with urllib.request.urlopen(app.url + "config", timeout=30) as response:
        config = json.loads(response.read())
    page = json.dumps(config)
    assert "`attention` decoder" in page and "Luong attention" in page
    figure = next(c for c in config["components"] if c["props"].get("elem_id") == "attention-map")
    assert figure["props"]["visible"] is True
    assert app.alive()


def test_the_page_shows_where_the_model_looked(attention_app, tiny_data):
    """In a browser: upload a photo; the figure of where the model looked appears under the
    caption (Chromium headless, as the app's browser test)."""
    from test_app_browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: run .ci/install-test-deps.sh (as root)")
    from playwright.sync_api import expect, sync_playwright

    _, app = attention_app
    photo = sorted((tiny_data / "Images").iterdir())[3]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app.url)
        page.locator("#photo input[type=file]").set_input_files(str(photo))
        expect(page.locator("#caption textarea")).not_to_have_value("", timeout=120_000)
        figure = page.locator("#attention-map img")
        expect(figure).to_be_visible(timeout=60_000)
        size = figure.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        browser.close()
    assert size[0] > 400 and size[1] > 200  # the photo plus one panel per word
    assert app.alive()


def test_app_hides_the_figure_for_a_captioner_that_does_not_attend(tiny_run, tmp_path):
    space = space_folder(tiny_run, tmp_path / "space")
    with running_app(space) as app:
        with urllib.request.urlopen(app.url + "config", timeout=30) as response:
            config = json.loads(response.read())
    assert "`lstm` decoder" in json.dumps(config)
    figure = next(c for c in config["components"] if c["props"].get("elem_id") == "attention-map")
    assert figure["props"]["visible"] is False

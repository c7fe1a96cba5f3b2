"""metrics.json says what made it, and the outputs of a smoke run or of a model of the drawn
sample say what they are: checked on the tiny runs of conftest, evaluated as the pipeline
does."""

from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime, timedelta, timezone

import pytest
import torch
from fake_llm_server import FakeLLMServer
from PIL import Image

import storyteller
from storyteller import pipeline
from storyteller.cli import main
from storyteller.config import SAMPLE_LABEL, SMOKE_LABEL, TrainConfig
from storyteller.inference import Captioner
from storyteller.models.checkpoint import read_checkpoint
from storyteller.notebook import report
from storyteller.notebook import story_cells as nb
from storyteller.story import StoryOptions


def quiet(_line: str) -> None:
    pass


def _description(path) -> str | None:
    with Image.open(path) as image:
        return image.info.get("Description")


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """The session's tiny run, copied: evaluating or retraining writes into it."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_metrics_json_records_what_made_it_beside_the_unchanged_scores(tiny_data, run_copy):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    results = pipeline.evaluate_step(tiny_data, run_copy, (1, 3), meteor="none", log=quiet)
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert set(metrics) == {"greedy", "beam3"}  # the decodings stay the top-level keys
    assert metrics["greedy"]["bleu4"] == results["greedy"]["bleu4"]  # m["greedy"]["bleu4"]
    report.metrics_table(metrics)  # readers of the file still work

    checkpoint = read_checkpoint(run_copy / "best_model.pth")
    splits = json.loads((run_copy / "splits.json").read_text())
    made = metrics["greedy"]["provenance"]
    assert made["encoder"] == "efficientnet_lite0" and made["decoder"] == "lstm"
    assert made["model_config"] == checkpoint["model_config"]  # sizes and options
    assert made["model_config"]["hidden_size"] == 64
    assert made["checkpoint"] == "best_model.pth" and made["epoch"] == checkpoint["epoch"]
    assert made["epoch"] in (1, 2)  # the 2-epoch run's best
    assert made["train_config"] == TrainConfig(num_epochs=2, batch_size=32).to_dict()
    assert made["smoke"] is False
    assert made["dataset"] == {
        "folder": tiny_data.name,
        "caption_file": "captions.txt",
        "image_folder": "Images",
    }
    assert made["split_seed"] == splits["seed"] == 0
    assert made["num_test_images"] == len(splits["test"]) == metrics["greedy"]["num_images"]
    assert made["software"] == {
        "storyteller": storyteller.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    date = datetime.fromisoformat(made["date"])
    assert before <= date <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert made["decoding"] == {"beam_size": 1, "length_penalty": 0.7, "max_length": 50}
    beam = metrics["beam3"]["provenance"]
    assert beam["decoding"]["beam_size"] == 3
    assert {k: v for k, v in beam.items() if k != "decoding"} == {
        k: v for k, v in made.items() if k != "decoding"
    }
    assert not report.smoke_run(metrics)
    assert _description(run_copy / "caption_grid.png") is None


def _train_smoke(data_dir, run_dir) -> None:
    """Retrain the copied run as a smoke run (``TrainConfig.smoke``) of one epoch."""
    config = TrainConfig(num_epochs=1, batch_size=32, smoke=True)
    sizes = {"decoder": "lstm", "hidden_size": 64, "embed_size": 32}
    pipeline.train_step(data_dir, run_dir, config, sizes, resume=False, log=quiet)


def test_a_smoke_run_marks_its_metrics_and_every_figure(tiny_data, run_copy):
    _train_smoke(tiny_data, run_copy)
    assert read_checkpoint(run_copy / "best_model.pth")["train_config"]["smoke"] is True
    metrics = pipeline.evaluate_step(tiny_data, run_copy, (1,), meteor="none", log=quiet)
    assert metrics["greedy"]["provenance"]["smoke"] is True
    assert report.smoke_run(json.loads((run_copy / "metrics.json").read_text()))
    for figure in ("loss_curve.png", "caption_grid.png"):
        assert _description(run_copy / figure) == SMOKE_LABEL, figure
    examples = report.best_and_worst(run_copy, k=1)
    worst = report.plot_examples(
        examples["worst"], tiny_data / "Images", run_copy / "worst.png", "Worst", smoke=True
    )
    assert _description(worst) == SMOKE_LABEL


def test_metrics_written_before_provenance_count_as_a_real_run():
    assert not report.smoke_run({"greedy": {"bleu4": 0.1}, "beam5": {"bleu4": 0.2}})
    assert report.smoke_run({"greedy": {"provenance": {"smoke": True}}})


class _FakeSession:
    """What tell_story and save_story use of a StorySession."""

    backend, options, turns, story = None, StoryOptions(), [], ""

    def start(self, caption):
        self.story = f"{caption}. Then it rained."
        self.turns = [{"kind": "start", "input": caption, "text": self.story}]
        yield self.story


def test_a_smoke_models_caption_and_story_say_so(tiny_data, run_copy, tmp_path):
    """The smoke run's caption, and the story that opens with it, are marked as the figures
    are, so a meaningless caption is never taken for a real model's."""
    real = Captioner.load(run_copy)
    assert real.smoke is False
    assert SMOKE_LABEL not in report.caption_line(real, "a dog runs")
    _train_smoke(tiny_data, run_copy)
    smoke = Captioner.load(run_copy)
    assert smoke.smoke is True
    line = report.caption_line(smoke, "a a pair sky sky")
    assert line.splitlines() == [
        SMOKE_LABEL,
        f"caption ({smoke.model.describe()}): a a pair sky sky",
    ]

    said: list[str] = []
    session = _FakeSession()
    story, why = nb.tell_story(session, "a a pair sky sky", smoke=True, log=said.append)
    assert story.startswith("a a pair sky sky") and why == ""
    assert said[0].startswith(SMOKE_LABEL)
    record = nb.save_story(tmp_path / "story.json", "p.jpg", "a", session, smoke=True, log=quiet)
    assert record["smoke"] is True
    assert json.loads((tmp_path / "story.json").read_text())["smoke"] is True
    assert nb.save_story(tmp_path / "s2.json", "p.jpg", "a", session, log=quiet)["smoke"] is False


@pytest.mark.usefixtures("no_story_credentials")
def test_the_cli_labels_a_smoke_models_caption_and_story(tiny_data, run_copy, capsys):
    """The notebook labelled a smoke model's caption (above); the `caption` and `story`
    commands printed it unmarked."""
    photo = str(sorted((tiny_data / "Images").glob("*.jpg"))[0])
    model = ["--checkpoint", str(run_copy)]
    assert main(["caption", photo, *model]) == 0
    assert json.loads(capsys.readouterr().out)["warning"] == SAMPLE_LABEL  # the drawn sample's
    _train_smoke(tiny_data, run_copy)  # on the sample too: the smoke label says more

    assert main(["caption", photo, *model]) == 0
    line = json.loads(capsys.readouterr().out)  # still one JSON line per image
    assert list(line) == ["image", "warning", "caption"] and line["warning"] == SMOKE_LABEL

    with FakeLLMServer() as server:
        hosted = ["--backend", "hosted", "--base-url", server.url]
        assert main(["story", photo, *model, *hosted]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[:2] == [SMOKE_LABEL, f"caption: {line['caption']}"]
        assert main(["story", "--caption", "a dog runs", *hosted]) == 0
        assert SMOKE_LABEL not in capsys.readouterr().out  # a typed caption: no model


def test_a_sample_model_says_so_and_a_model_of_other_data_does_not(tiny_run, unmarked_run):
    """A captioner of the embedded drawn sample captioned real photos with nonsense and no
    warning: its checkpoint records the sample, and every line it writes says so."""
    assert read_checkpoint(tiny_run / "best_model.pth")["trained_on_sample"] is True
    sample = Captioner.load(tiny_run)
    assert sample.label == SAMPLE_LABEL and not sample.smoke
    assert sample.labelled("caption: a star").splitlines() == [SAMPLE_LABEL, "caption: a star"]
    assert read_checkpoint(unmarked_run / "best_model.pth")["trained_on_sample"] is False
    other = Captioner.load(unmarked_run)
    assert other.label is None and other.labelled("caption: a dog") == "caption: a dog"


@pytest.mark.usefixtures("no_story_credentials")
def test_the_cli_labels_a_sample_models_caption_and_story(
    tiny_data, tiny_run, unmarked_run, capsys
):
    photo = str(sorted((tiny_data / "Images").glob("*.jpg"))[0])
    for run, label in ((tiny_run, SAMPLE_LABEL), (unmarked_run, None)):
        assert main(["caption", photo, "--checkpoint", str(run)]) == 0
        assert json.loads(capsys.readouterr().out).get("warning") == label, run
    with FakeLLMServer() as server:
        hosted = ["--backend", "hosted", "--base-url", server.url]
        assert main(["story", photo, "--checkpoint", str(tiny_run), *hosted]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == SAMPLE_LABEL and out[1].startswith("caption: ")
        assert main(["story", photo, "--checkpoint", str(unmarked_run), *hosted]) == 0
        assert SAMPLE_LABEL not in capsys.readouterr().out

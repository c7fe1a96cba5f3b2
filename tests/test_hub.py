"""Trained captioners as Hugging Face Hub models: the saved layout and its format
version, save/load round trips, push against a fake HfApi, tampered folders, loading by Hub id
through the cache offline, and a Space that loads its model from the Hub. No network: Hub ids
resolve through a hand-built ``huggingface_hub`` cache with ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from app_server import running_app
from conftest import add_huge_integer, cli
from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from storyteller import pipeline
from storyteller.config import SAMPLE_LABEL
from storyteller.errors import StorytellerError
from storyteller.features.encoders import build_encoder
from storyteller.inference import Captioner
from storyteller.models.checkpoint import read_checkpoint
from storyteller.runtime import torch_save_atomic
from storyteller.serving import deploy, hub
from storyteller.serving.hub_push import export_run, push_model
from storyteller.training.finetune import ENCODER_WEIGHTS

FAKE_TOKEN = "hf_FakeTokenForHubTests0123456789abcd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's commit hash in the cache
#: The layout this version writes. Changing it means a new FORMAT_VERSION and a loader for the
#: old one: models already on the Hub must keep loading.
FORMAT_1_FILES = {"README.md", "config.json", "model.safetensors", "vocab.json"}
FORMAT_1_CONFIG_KEYS = {
    "format",
    "format_version",
    "storyteller_version",
    "model_config",
    "train_config",
    "encoder",
    "vocab_fingerprint",
    "epoch",
    "best_val_loss",
    "trained_on_sample",
}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def images(tiny_data) -> list[Path]:
    return sorted((tiny_data / "Images").glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def original(tiny_run) -> Captioner:
    return Captioner.from_files(tiny_run / "best_model.pth", tiny_run / "vocab.pkl")


@pytest.fixture(scope="module")
def model_dir(tiny_run, tmp_path_factory) -> Path:
    """`push --dry-run` as a user runs it: the model folder of tiny_run."""
    dest = tmp_path_factory.mktemp("hub") / "model"
    result = cli("push", "--run", str(tiny_run), "--repo", "alice/cap", "--dry-run", str(dest))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"push --run {tiny_run} --repo alice/cap" in result.stdout  # how to upload it
    return dest


def hub_cache(root: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """A ``huggingface_hub`` cache holding ``folder`` as ``repo``'s snapshot at ``commit``
    (the layout snapshot_download writes), so a Hub id resolves with HF_HUB_OFFLINE=1."""
    entry = root / "hub" / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(folder, entry / "snapshots" / commit)
    return root


def test_the_layout_is_format_1(model_dir, tiny_run):
    """Pinned: the files, the config's keys and version, the vocabulary as plain JSON."""
    assert hub.FORMAT_VERSION == 1
    assert {p.name for p in model_dir.iterdir()} == FORMAT_1_FILES
    config = json.loads((model_dir / "config.json").read_text())
    assert set(config) == FORMAT_1_CONFIG_KEYS
    assert config["format"] == "storyteller-captioner" and config["format_version"] == 1
    assert config["encoder"]["name"] == "efficientnet_lite0"
    assert set(config["encoder"]["preprocessing"]) == {"resize", "crop", "mean", "std"}
    vocab = json.loads((model_dir / "vocab.json").read_text())
    assert vocab["format"] == "storyteller-vocab" and vocab["itos"][:4][0] == "<pad>"
    assert str(tiny_run.parent) not in (model_dir / "vocab.json").read_text()  # no local paths
    checkpoint = read_checkpoint(tiny_run / "best_model.pth")
    weights = load_file(model_dir / "model.safetensors")
    assert weights.keys() == checkpoint["model"].keys()
    assert all(torch.equal(weights[k], checkpoint["model"][k]) for k in weights)


def test_a_sample_models_folder_and_card_say_so(model_dir, unmarked_run, tmp_path):
    """The label of a model of the drawn sample travels into its model folder, its card and a
    folder saved again from it; a model of other data has none."""
    assert json.loads((model_dir / "config.json").read_text())["trained_on_sample"] is True
    assert f"**{SAMPLE_LABEL}**" in (model_dir / "README.md").read_text()
    loaded = Captioner.from_pretrained(model_dir)
    assert loaded.label == SAMPLE_LABEL
    assert SAMPLE_LABEL in (loaded.save_pretrained(tmp_path / "again") / "README.md").read_text()
    other = export_run(unmarked_run, tmp_path / "other", log=quiet)
    assert SAMPLE_LABEL not in (other / "README.md").read_text()
    assert Captioner.from_pretrained(other).label is None


def test_a_model_folder_captions_bit_identically(model_dir, original, images):
    loaded = Captioner.from_pretrained(model_dir)
    assert loaded.vocab.itos == original.vocab.itos
    for beam in (1, 3):
        assert loaded(images, beam_size=beam) == original(images, beam_size=beam)


def test_save_pretrained_round_trips(original, images, tmp_path):
    folder = original.save_pretrained(tmp_path / "saved", repo="alice/cap")
    assert {p.name for p in folder.iterdir()} == FORMAT_1_FILES
    again = Captioner.from_pretrained(folder)
    assert again(images, beam_size=3) == original(images, beam_size=3)
    assert again.checkpoint_info["epoch"] == original.checkpoint_info["epoch"]
    with pytest.raises(StorytellerError, match="not empty"):
        original.save_pretrained(folder)


def test_a_full_disk_while_saving_a_model_folder_is_one_line(original, tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)  # what a full disk makes Python raise
    weights = tmp_path / "saved" / hub.WEIGHTS_FILE
    with pytest.raises(StorytellerError, match=f"^could not write {weights}: no space left on"):
        original.save_pretrained(tmp_path / "saved")


def test_load_takes_a_checkpoint_a_run_folder_or_a_model_folder(tiny_run, model_dir, images):
    by_file = Captioner.load(tiny_run / "best_model.pth")  # its vocab.pkl beside it
    by_run = Captioner.load(tiny_run)
    by_model = Captioner.load(model_dir)
    assert by_file(images) == by_run(images) == by_model(images)
    with pytest.raises(StorytellerError, match="carries its own vocabulary"):
        Captioner.load(model_dir, vocab=tiny_run / "vocab.pkl")
    with pytest.raises(StorytellerError, match="neither a model folder nor a Hub model id"):
        Captioner.load("no/such/place")


def _rewrite_json(name: str, change):
    def tamper(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return tamper


def _reshape_weight(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    name = next(k for k, v in weights.items() if v.dim() == 2)
    weights[name] = torch.zeros(3, 3)
    save_file(weights, folder / "model.safetensors")


TAMPERED = {
    "no weights": ("model.safetensors", lambda f: (f / "model.safetensors").unlink(), "missing"),
    "no vocabulary": ("vocab.json", lambda f: (f / "vocab.json").unlink(), "missing"),
    "no config": ("config.json", lambda f: (f / "config.json").unlink(), "missing"),
    "reshaped weight": ("model.safetensors", _reshape_weight, r"is \(3, 3\)"),
    "truncated weights": (
        "model.safetensors",
        lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00"),
        "not a readable safetensors",
    ),
    "bad JSON": ("config.json", lambda f: (f / "config.json").write_text("{"), "not a valid"),
    "newer format": (
        "config.json",
        _rewrite_json("config.json", lambda c: c.update(format_version=2)),
        "upgrade storyteller",
    ),
    "huge hidden size": (
        "config.json",
        _rewrite_json("config.json", lambda c: c["model_config"].update(hidden_size=10**9)),
        "hidden_size",
    ),
    "other preprocessing": (
        "config.json",
        _rewrite_json("config.json", lambda c: c["encoder"]["preprocessing"].update(crop=299)),
        "preprocessing",
    ),
    "a 5,001-digit integer in the config": (
        "config.json",
        lambda f: add_huge_integer(f / "config.json"),
        "integer of 5,001 digits",
    ),
    "a 5,001-digit integer in the vocabulary": (
        "vocab.json",
        lambda f: add_huge_integer(f / "vocab.json"),
        "integer of 5,001 digits",
    ),
    "other vocabulary": (
        "vocab.json",
        _rewrite_json("vocab.json", lambda v: v["itos"].__setitem__(-1, "zebra")),
        "not the vocabulary",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_or_incomplete_folder_is_one_line_naming_the_file(case, model_dir, tmp_path):
    name, tamper, says = TAMPERED[case]
    folder = shutil.copytree(model_dir, tmp_path / "model")
    tamper(folder)
    with pytest.raises(StorytellerError, match=says) as caught:
        Captioner.from_pretrained(folder)
    message = str(caught.value)
    assert "\n" not in message and name in message, message


def test_caption_cli_reports_a_tampered_folder_as_one_line(model_dir, images, tmp_path):
    folder = shutil.copytree(model_dir, tmp_path / "model")
    _reshape_weight(folder)
    result = cli("caption", str(images[0]), "--model", str(folder))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "model.safetensors" in result.stderr


@pytest.fixture(scope="module")
def fine_tuned_run(tiny_run, tmp_path_factory) -> Path:
    """tiny_run's decoder with a fine-tuned encoder's weights (random here: the layout, not
    the training, is under test; test_finetune trains real ones)."""
    run = tmp_path_factory.mktemp("fine-tuned")
    checkpoint = read_checkpoint(tiny_run / "best_model.pth")
    checkpoint["model_config"]["fine_tuned_blocks"] = 1
    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0", pretrained=False)
    checkpoint[ENCODER_WEIGHTS] = encoder.state_dict()
    torch_save_atomic(checkpoint, run / "best_model.pth")
    shutil.copy2(tiny_run / "vocab.pkl", run / "vocab.pkl")
    return run


def test_a_fine_tuned_encoder_travels_with_the_model(fine_tuned_run, images, tmp_path):
    folder = export_run(fine_tuned_run, tmp_path / "model", log=quiet)
    assert {p.name for p in folder.iterdir()} == FORMAT_1_FILES | {"encoder.safetensors"}
    original = Captioner.from_files(fine_tuned_run / "best_model.pth", fine_tuned_run / "vocab.pkl")
    loaded = Captioner.from_pretrained(folder)
    assert loaded(images, beam_size=2) == original(images, beam_size=2)
    resaved = loaded.save_pretrained(tmp_path / "again")
    assert Captioner.from_pretrained(resaved)(images) == original(images)
    (folder / "encoder.safetensors").unlink()
    with pytest.raises(StorytellerError, match="encoder.safetensors: missing"):
        Captioner.from_pretrained(folder)


class FakeHfApi:
    """Records what push asks of the Hub."""

    instances: list[FakeHfApi] = []

    def __init__(self, token=None, **kwargs):
        self.token, self.calls = token, []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert all(self.token.encode() not in data for data in files.values())
        card = ModelCard.load(folder / "README.md")  # the Hub's own parser
        self.calls.append(("upload_folder", kwargs, sorted(files), card))
        return SimpleNamespace(commit_url="https://huggingface.co/alice/cap/commit/1")


def test_push_creates_the_model_and_uploads_the_folder(tiny_run, tiny_data, tmp_path, monkeypatch):
    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best_model.pth", "vocab.pkl"):
        shutil.copy2(tiny_run / name, run / name)
    scores = {"bleu1": 0.5, "bleu4": 0.125, "meteor": 0.25, "rougeL": 0.375, "cider": 0.0625}
    (run / "metrics.json").write_text(json.dumps({"greedy": scores, "beam3": scores}))
    logged: list[str] = []
    url = push_model(run, "alice/cap", private=True, log=logged.append)
    assert url == "https://huggingface.co/alice/cap"
    (api,) = FakeHfApi.instances
    assert api.token == FAKE_TOKEN
    (_, repo, create), (_, upload, files, card) = api.calls
    assert repo == "alice/cap"
    assert create == {"repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "alice/cap" and upload["repo_type"] == "model"
    assert set(files) == FORMAT_1_FILES
    assert not Path(upload["folder_path"]).exists()  # the temporary folder is cleaned up
    data = card.data
    assert data.library_name == "storyteller" and data.pipeline_tag == "image-to-text"
    assert data.datasets == [tiny_data.name]  # the data's folder, as its vocabulary says
    results = {(r.metric_type, r.metric_config): r.metric_value for r in data.eval_results}
    assert results[("bleu4", "greedy")] == 0.125 and results[("cider", "beam3")] == 0.0625
    assert len(results) == 10 and all(r.dataset_split == "test" for r in data.eval_results)
    assert "python -m storyteller train --epochs 2" in card.text
    assert all(FAKE_TOKEN not in line for line in logged)


@pytest.mark.parametrize("repo", ["no-slash", "a/b/c", "user/a--b"])
def test_bad_model_ids_are_refused(repo, tiny_run):
    with pytest.raises(StorytellerError, match="not a model id"):
        push_model(tiny_run, repo, log=quiet)


BAD_HUB_IDS = ["a/b..c", "a/b--c", "a/b.git", "a/" + "b" * 97, "a/b-", "a/.b", "a/b\nc", "a/b/c"]
BAD_HUB_IDS += ["a/" + "b" * 5000]  # too long for a path: no OSError from the folder check


@pytest.mark.parametrize("repo", BAD_HUB_IDS)
def test_a_bad_hub_id_is_one_line_before_any_download(repo, monkeypatch):
    """`a/b..c` and the like once reached huggingface_hub: `unexpected HFValidationError`."""

    def no_download(*args, **kwargs):
        raise AssertionError("a bad id reached snapshot_download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(StorytellerError, match="neither a model folder nor a Hub model id: ") as e:
        hub.resolve_model(repo)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    with pytest.raises(StorytellerError, match="neither a model folder nor a Hub model id: "):
        Captioner.load(repo)  # caption --model, story --checkpoint
    with pytest.raises(StorytellerError, match="not a model id"):
        hub.check_repo_id(repo)


def test_caption_cli_refuses_a_bad_hub_id_in_one_line(images):
    result = cli("caption", str(images[0]), "--model", "a/b..c")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "'--' and '..' are not allowed" in result.stderr


@settings(max_examples=300, deadline=None)
@given(repo=st.from_regex(r"[aZ09_.-]{1,100}/[aZ09_.-]{1,100}(\.git)?\n?", fullmatch=True))
def test_every_id_the_check_passes_huggingface_hub_accepts(repo):
    if hub.repo_id_problem(repo) is None:
        validate_repo_id(repo)  # raises HFValidationError on an id the Hub refuses


def test_an_upload_needs_a_repo(tiny_run):
    with pytest.raises(StorytellerError, match="--repo USER/NAME"):
        push_model(tiny_run, None, log=quiet)


def test_a_hub_id_loads_from_the_cache_offline(model_dir, original, images, tmp_path):
    """`caption --model USER/NAME` through huggingface_hub's cache, with HF_HUB_OFFLINE=1;
    --revision pins a commit; an id not in the cache is one line saying what to do."""
    home = hub_cache(tmp_path / "hf-home", "alice/cap", model_dir)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    result = cli("caption", str(images[0]), "--model", "alice/cap", "--revision", COMMIT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["caption"] == original([images[0]])[0]
    missing = cli("caption", str(images[0]), "--model", "alice/other", env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "not in the local cache" in missing.stderr


def test_evaluate_scores_a_model_folder_like_its_checkpoint(
    tiny_run, tiny_data, model_dir, tmp_path
):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    args = dict(beam_sizes=(1,), meteor="none", log=quiet)
    by_checkpoint = pipeline.evaluate_step(tiny_data, run, **args)
    by_folder = pipeline.evaluate_step(tiny_data, run, checkpoint=str(model_dir), **args)
    assert by_folder["greedy"]["bleu4"] == by_checkpoint["greedy"]["bleu4"]
    assert by_folder["greedy"]["test_loss"] == by_checkpoint["greedy"]["test_loss"]


def test_a_space_built_with_model_loads_it_from_the_hub(model_dir, original, images, tmp_path):
    """`deploy --model`: no weights in the Space; the app downloads the model (here from the
    offline cache) at start and captions like the library."""
    from gradio_client import Client, handle_file

    space = deploy.build_space_folder(None, tmp_path / "space", log=quiet, model="alice/cap")
    assert not (space / "best_model.pth").exists() and not (space / "vocab.pkl").exists()
    assert json.loads((space / "hub_model.json").read_text()) == {
        "model": "alice/cap",
        "revision": None,
    }
    assert "models: [alice/cap]" in (space / "README.md").read_text()
    assert "timm>=0.9" in (space / "requirements.txt").read_text()  # any encoder can load
    home = hub_cache(tmp_path / "hf-home", "alice/cap", model_dir)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    with running_app(space, env=env) as app:
        client = Client(app.url, verbose=False)
        served = client.predict(handle_file(images[0]), "greedy", 5, api_name="/caption")
    assert served == original([images[0]])[0]


def test_deploy_dry_run_with_model_says_how_to_push(model_dir, tmp_path):
    result = cli(
        "deploy", "--space", "alice/demo", "--model", "alice/cap", "--dry-run", str(tmp_path / "s")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deploy --space alice/demo --model alice/cap" in result.stdout


def test_notebook_05_pushes_the_model_then_a_space_that_loads_it(tiny_run, tmp_path, monkeypatch):
    from storyteller.notebook import publish as nbpublish

    run = shutil.copytree(tiny_run, tmp_path / "run")
    lines: list[str] = []
    assert nbpublish.publish_model(run, "", None, log=lines.append) is None  # no id: folder only
    assert {p.name for p in (run / "hub_model").iterdir()} == FORMAT_1_FILES
    assert nbpublish.publish_model(run, "", None, log=lines.append) is None  # rebuilt, not refused
    assert any("no MODEL_ID set" in line for line in lines)
    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    pushed = nbpublish.publish_model(run, "alice/cap", FAKE_TOKEN, log=lines.append)
    assert pushed == "alice/cap" and FakeHfApi.instances[0].calls[0][1] == "alice/cap"
    space = Path(nbpublish.publish_space(run, "", None, log=lines.append, model=pushed))
    assert (space / "hub_model.json").is_file() and not (space / "best_model.pth").exists()

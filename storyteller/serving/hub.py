"""A trained captioner as a Hugging Face Hub model: a folder of plain data files that outlive
the code (what ``python -m storyteller push`` uploads and ``Captioner.save_pretrained`` writes)::

    config.json           format marker + FORMAT_VERSION, model and training configs, the
                          encoder's name and preprocessing, the vocabulary fingerprint
    model.safetensors     the decoder's weights
    encoder.safetensors   the fine-tuned encoder's weights (only for `train --fine-tune-encoder`)
    vocab.json            the vocabulary as plain JSON (Vocabulary.to_dict)
    README.md             the model card (:mod:`.hub_card`)

Reading one back trusts nothing: each file gets the checks a ``best_model.pth`` gets and a
problem is a one-line :class:`~storyteller.artefacts.ArtefactError` naming the file. Downloads
go through ``huggingface_hub``'s cache (``revision=`` pins a commit; ``HF_HUB_OFFLINE=1`` works
once cached).
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import __version__
from ..artefacts import ArtefactError, describe, is_int, is_number, read_json
from ..config import ModelConfig
from ..data.vocab import Vocabulary
from ..errors import StorytellerError
from ..features.encoders import get_encoder_spec
from ..models import CaptionDecoder
from ..models.checkpoint import (
    build_checked_model,
    check_model_config,
    check_vocab_matches,
    train_config_of,
)
from ..runtime import atomic_path, write_json
from ..training.finetune import ENCODER_WEIGHTS, checkpoint_encoder

FORMAT_MARKER = "storyteller-captioner"
#: Bumped when the layout changes in a way an older storyteller cannot read; a test pins it.
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ENCODER_FILE = "encoder.safetensors"
VOCAB_JSON = "vocab.json"
CARD_FILE = "README.md"
#: The files a model folder needs; ENCODER_FILE joins them for a fine-tuned encoder.
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_JSON)
#: A user or a name in a Hub id, stricter than huggingface_hub's validate_repo_id (which also
#: allows a leading '_', non-ASCII letters and a bare NAME).
_ID_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_ID_PART}/{_ID_PART}")


def require(module: str, why: str) -> object:
    """``import module``, or a one-line :class:`StorytellerError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StorytellerError(
            f"{why} needs {module.split('.')[0]}: pip install 'storyteller[hub]' (or "
            "pip install huggingface_hub safetensors)"
        ) from None


@dataclass(frozen=True)
class TrainedCaptioner:
    """A checked model folder: what a ``Captioner`` is built from, and ``info`` (training
    config, epoch, best validation loss, whether it learned the drawn sample) to write it out
    again."""

    model: CaptionDecoder
    vocab: Vocabulary
    encoder: torch.nn.Module | None  # the fine-tuned encoder, or None: the registry's weights
    info: dict


def repo_id_problem(repo: str) -> str | None:
    """What makes ``repo`` no Hub id ``USER/NAME`` (one clause), or None: an id that passes is
    one ``huggingface_hub`` accepts."""
    if not _REPO_ID.fullmatch(repo):
        return (
            "use USER/NAME, your Hugging Face user or organisation, a slash and a name, each "
            "of letters, digits, '-', '_' or '.', starting with a letter or digit, ending "
            "with a letter, digit or '_', at most 96 characters"
        )
    if "--" in repo or ".." in repo:
        return "'--' and '..' are not allowed in it"
    if repo.endswith(".git"):
        return "it must not end in '.git'"
    return None


def check_repo_id(repo: str | None, kind: str = "model", flag: str = "--repo") -> str:
    """``USER/NAME`` by the Hub's rules, or a one-line error saying why and showing a good one."""
    name = (repo or "").strip()
    problem = repo_id_problem(name)
    if problem:
        raise StorytellerError(
            f"{describe(repo)} is not a {kind} id: {problem}; e.g. {flag} alice/neural-storyteller"
        )
    return name


def _preprocessing(encoder: str) -> dict:
    prep = asdict(get_encoder_spec(encoder).preprocessing)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in prep.items()}


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses channels-last or tied tensors)."""
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}


def public_vocab(vocab: Vocabulary) -> Vocabulary:
    """The vocabulary to publish (a Hub model, a Space), its local dataset path cut to folder
    and file name: nothing public shows the trainer's file system (the fingerprint is of the
    words only)."""
    data = vocab.to_dict()
    source = data["provenance"].get("source")
    if isinstance(source, str):  # e.g. flickr8k/captions.txt
        data["provenance"]["source"] = "/".join(Path(source).parts[-2:])
    return Vocabulary.from_dict(data)


def write_model_folder(
    dest: str | Path,
    model_config: ModelConfig,
    weights: dict,
    vocab: Vocabulary,
    info: dict | None = None,
    encoder_weights: dict | None = None,
    card: str | None = None,
) -> Path:
    """Write the model folder into ``dest`` (absent or empty) and return it. ``info`` holds
    ``train_config`` (a dict), ``epoch``, ``best_val_loss`` and ``trained_on_sample`` where
    known; ``encoder_weights`` the fine-tuned encoder's state_dict; ``card`` the README.md
    text."""
    safetensors_torch = require("safetensors.torch", "writing a model folder")
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StorytellerError(f"{dest} already exists and is not empty: choose a new folder")
    if model_config.fine_tuned_blocks and encoder_weights is None:
        raise StorytellerError(
            "the model fine-tuned its encoder but no encoder weights were given to save"
        )
    info = info or {}
    config = {
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "storyteller_version": __version__,
        "model_config": model_config.to_dict(),
        "train_config": info.get("train_config") or {},
        "encoder": {
            "name": model_config.encoder,
            "fine_tuned_blocks": model_config.fine_tuned_blocks,
            "preprocessing": _preprocessing(model_config.encoder),
        },
        "vocab_fingerprint": vocab.fingerprint,
        **{k: info[k] for k in ("epoch", "best_val_loss") if is_number(info.get(k))},
        "trained_on_sample": info.get("trained_on_sample") is True,
    }
    dest.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "storyteller_format_version": str(FORMAT_VERSION)}
    # Written by Python, not save_file (its SafetensorError hides the errno): a full disk is
    # then an OSError, which atomic_path names.
    with atomic_path(dest / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(safetensors_torch.save(_tensors(weights), metadata=metadata))
    if model_config.fine_tuned_blocks:
        with atomic_path(dest / ENCODER_FILE) as tmp:
            tmp.write_bytes(safetensors_torch.save(_tensors(encoder_weights), metadata=metadata))
    write_json(dest / VOCAB_JSON, public_vocab(vocab).to_dict())
    write_json(dest / CONFIG_FILE, config)  # last: a folder with a config is complete
    if card is not None:
        (dest / CARD_FILE).write_text(card, encoding="utf-8")
    return dest


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding this layout (judged by its ``config.json``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def _read_config(path: Path) -> dict:
    config = read_json(path, "model config")
    if not isinstance(config, dict) or config.get("format") != FORMAT_MARKER:
        raise ArtefactError(
            path, f'not a storyteller model config (no "format": "{FORMAT_MARKER}")'
        )
    version = config.get("format_version")
    if not is_int(version) or version < 1:
        raise ArtefactError(
            path, f"format_version must be a whole number >= 1, got {version!r:.40}"
        )
    if version > FORMAT_VERSION:
        raise ArtefactError(
            path,
            f"written in model format {version}; this storyteller reads up to {FORMAT_VERSION}: "
            "upgrade storyteller (pip install -U storyteller)",
        )
    for key in ("model_config", "train_config", "encoder"):
        if not isinstance(config.get(key), dict):
            raise ArtefactError(path, f"{key!r} must be a JSON object")
    if not isinstance(config.get("vocab_fingerprint"), str):
        raise ArtefactError(path, "'vocab_fingerprint' must be text")
    return config


def _check_encoder(config: dict, model_config: ModelConfig, path: Path) -> None:
    """The encoder section must describe the encoder this storyteller builds for the model:
    another preprocessing would feed the decoder pictures it never learned from."""
    encoder = config["encoder"]
    if encoder.get("name") != model_config.encoder:
        raise ArtefactError(
            path,
            f"encoder name {encoder.get('name')!r:.40} differs from model_config's "
            f"{model_config.encoder!r}",
        )
    expected = _preprocessing(model_config.encoder)
    if encoder.get("preprocessing") != expected:
        raise ArtefactError(
            path,
            f"the {model_config.encoder} preprocessing it records "
            f"({encoder.get('preprocessing')!r:.80}) is not this storyteller's ({expected}): "
            "the model would see other pictures than it was trained on",
        )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    safetensors_torch = require("safetensors.torch", "reading a model folder")
    if not path.is_file():
        raise ArtefactError(path, "missing: the model folder is incomplete (download it again)")
    try:
        return safetensors_torch.load_file(str(path), device="cpu")
    except Exception as exc:  # a bad header, a truncated file, not safetensors at all
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ArtefactError(path, f"not a readable safetensors file ({detail})") from None


def _read_vocab(path: Path, fingerprint: str) -> Vocabulary:
    if not path.is_file():
        raise ArtefactError(path, "missing: the model folder is incomplete (download it again)")
    try:
        vocab = Vocabulary.from_dict(read_json(path, "vocabulary"))
    except ArtefactError:
        raise
    except StorytellerError as exc:
        raise ArtefactError(path, str(exc)) from None
    if vocab.fingerprint != fingerprint:
        raise ArtefactError(
            path,
            f"is not the vocabulary the model was trained with (fingerprint {vocab.fingerprint}, "
            f"{CONFIG_FILE} says {fingerprint[:16]})",
        )
    return vocab


def load_model_folder(folder: str | Path, device: torch.device | str = "cpu") -> TrainedCaptioner:
    """Read and check a model folder: config, vocabulary, decoder weights and, for a
    fine-tuned encoder, its weights. Nothing is built before its file has passed."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise StorytellerError(f"model folder not found: {folder}")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ArtefactError(config_path, "missing: not a storyteller model folder")
    config = _read_config(config_path)
    model_config = check_model_config(config, config_path)
    _check_encoder(config, model_config, config_path)
    vocab = _read_vocab(folder / VOCAB_JSON, config["vocab_fingerprint"])
    check_vocab_matches(config, model_config, vocab, config_path)
    weights_path = folder / WEIGHTS_FILE
    model = build_checked_model(_read_tensors(weights_path), model_config, weights_path, device)
    encoder = None
    if model_config.fine_tuned_blocks:
        encoder_path = folder / ENCODER_FILE
        held = {ENCODER_WEIGHTS: _read_tensors(encoder_path)}
        encoder = checkpoint_encoder(model_config, held, encoder_path)
    info = {k: config[k] for k in ("epoch", "best_val_loss") if is_number(config.get(k))}
    info["train_config"] = train_config_of(config, config_path).to_dict()
    info["trained_on_sample"] = config.get("trained_on_sample") is True
    return TrainedCaptioner(model, vocab, encoder, info)


def download(repo: str, revision: str | None = None, token: str | None = None) -> Path:
    """The local folder of Hub model ``repo`` at ``revision`` (a branch, tag or commit),
    through ``huggingface_hub``'s cache; errors are one line saying what to do."""
    hub = require("huggingface_hub", f"loading the Hub model {repo}")
    errors = require("huggingface_hub.errors", f"loading the Hub model {repo}")
    try:
        return Path(hub.snapshot_download(repo, revision=revision, token=token))
    except errors.RevisionNotFoundError:
        raise StorytellerError(
            f"the Hub model {repo} has no revision {revision!r}: give a branch, tag or commit "
            "that exists"
        ) from None
    except errors.RepositoryNotFoundError:
        raise StorytellerError(
            f"no Hub model {repo} (or it is private: set HF_TOKEN or run `hf auth login`)"
        ) from None
    except errors.LocalEntryNotFoundError:
        raise StorytellerError(
            f"the Hub model {repo} is not in the local cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1): download it once while online, or give a local "
            "model folder"
        ) from None
    except (OSError, getattr(errors, "HfHubHTTPError", OSError)) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise StorytellerError(f"could not download the Hub model {repo}: {detail}") from None


def resolve_model(
    source: str | Path, revision: str | None = None, token: str | None = None
) -> Path:
    """A model folder for ``source``: a local folder of this layout as it is, else a Hub id
    (``USER/NAME``) downloaded through the cache. Anything else is a one-line error."""
    path = Path(source).expanduser()
    # os.path's checks, unlike Path's, answer False for a name too long to be a path
    if os.path.isdir(path):
        if not is_model_folder(path):
            raise ArtefactError(
                path / CONFIG_FILE,
                "missing: not a storyteller model folder (write one with `python -m "
                "storyteller push --run RUN --repo USER/NAME --dry-run DIR`)",
            )
        return path
    problem = "it is a file" if os.path.exists(path) else repo_id_problem(str(source))
    if problem:
        raise StorytellerError(
            f"{describe(str(source))} is neither a model folder nor a Hub model id: {problem}"
        )
    return download(str(source), revision, token)


def is_checkpoint_file(source: str | Path) -> bool:
    """Whether ``source`` names a checkpoint file, not a model folder or a Hub id: an existing
    file, or a path ending in ``.pth``/``.pt`` (a missing one then gets the checkpoint
    loader's "not found, train one" message)."""
    path = Path(source).expanduser()
    return os.path.isfile(path) or path.suffix in (".pth", ".pt")  # False for too long a name

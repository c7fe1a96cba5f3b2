"""Every artefact the package reads back, malformed in every way we could think of.

For each kind (``best_model.pth``, ``last.pth``, ``vocab.pkl``, ``features.json``,
``features.npy``, ``splits.json``) a catalogue of broken variants is loaded through the public
loader *and* through the CLI, in-process. Each must end in one line, ``error: <file>: <what is
wrong>``: a :class:`StorytellerError`, never "unexpected", never a traceback, always naming the
file. Before this, e.g. a vocabulary without ``itos`` gave ``error: unexpected KeyError:
'itos'`` and a checkpoint asking for ``hidden_size=12000`` allocated 3.9 GB for 11 s.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import add_huge_integer

from storyteller import pipeline
from storyteller.cli import main
from storyteller.config import ModelConfig
from storyteller.data.sample import generate_sample_dataset
from storyteller.data.vocab import Vocabulary
from storyteller.errors import StorytellerError
from storyteller.features.cache_format import load_feature_cache
from storyteller.models.checkpoint import load_model, read_checkpoint
from storyteller.runtime import write_json

# A tiny LSTM, so the run folder is made in seconds and a resume of it trains one more epoch.
TRAIN_ARGS = [
    "--decoder", "lstm", "--embed-size", "8", "--hidden-size", "8", "--batch-size", "8",
]  # fmt: skip
FEATURE_DIM = 8


# --------------------------------------------------------------------------------------------
# A real run folder: sample data, splits and vocabulary, a feature cache, a trained model
# --------------------------------------------------------------------------------------------


def _write_cache(out: Path, images: list[str]) -> None:
    """A pooled feature cache as ``extract_features`` writes it (random vectors: the encoder
    is not what these tests are about, and running it would cost a minute)."""
    folder = out / "features"
    folder.mkdir(parents=True)
    array = np.lib.format.open_memmap(
        folder / "features.npy", mode="w+", dtype=np.float16, shape=(len(images), FEATURE_DIM)
    )
    array[:] = np.random.default_rng(0).standard_normal(array.shape).astype(np.float16)
    array.flush()
    del array
    write_json(
        folder / "features.json",
        {
            "version": 2,
            "encoder": "efficientnet_lite0",
            "dim": FEATURE_DIM,
            "layout": "pooled",
            "dtype": "float16",
            "preprocessing": {},
            "image_dir": "",
            "images": images,
            "done": len(images),
            "unreadable": [],
        },
    )


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder) with every artefact, all valid."""
    root = tmp_path_factory.mktemp("artefacts")
    data = generate_sample_dataset(root / "data", num_images=10, seed=3)
    out = root / "run"
    pipeline.vocab_step(data, out, threshold=1, log=lambda _: None)
    images = sorted(p.name for p in (data / "Images").iterdir())
    _write_cache(out, images)
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TRAIN_ARGS]
    assert main(args) == 0
    return data, out


@pytest.fixture
def run(good_run, tmp_path) -> tuple[Path, Path]:
    """A private copy of the good run folder, for one test to break."""
    data, out = good_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return data, copy


def assert_one_line_naming(message: str, path: Path) -> None:
    assert "\n" not in message.strip(), message
    assert "error: unexpected" not in message and "Traceback" not in message, message
    assert str(path) in message, f"{path} not named in: {message}"


def assert_cli_error(argv: list[str], path: Path, capsys) -> str:
    """Run the CLI in-process: exit status 2 and one ``error: <file>: ...`` line on stderr."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}, stderr: {err}"
    assert err.startswith("error: "), err
    assert_one_line_naming(err, path)
    return err


# --------------------------------------------------------------------------------------------
# Helpers to break files
# --------------------------------------------------------------------------------------------


def _ckpt_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Load a checkpoint, apply ``change`` to it in place (its result is ignored), save it."""

    def apply(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, path)

    return apply


def _ckpt_replace(obj: object) -> Callable[[Path], None]:
    """Save ``obj`` where the checkpoint was."""
    return lambda path: torch.save(obj, path)


def _config(**fields) -> Callable[[dict], None]:
    return lambda c: c["model_config"].update(fields)


def _first_weight(c: dict) -> torch.Tensor:
    return next(iter(c["model"].values()))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff garbage \x13" * 50)


class _Anything:
    """A class reference: refused by ``weights_only=True`` and by the vocabulary unpickler."""


def _to_double(c: dict) -> None:
    c["model"]["head.weight"] = c["model"]["head.weight"].double()


COMMON_FILE_CASES = {"empty": _empty, "truncated": _truncate, "garbage": _garbage}

MODEL_CASES = {
    **COMMON_FILE_CASES,
    "top-level list": _ckpt_replace([1, 2, 3]),
    "top-level tensor": _ckpt_replace(torch.zeros(3)),
    "no model_config": _ckpt_edit(lambda c: c.pop("model_config")),
    "no model": _ckpt_edit(lambda c: c.pop("model")),
    "model is a tensor": _ckpt_edit(lambda c: c.update(model=torch.zeros(3))),
    "model holds a string": _ckpt_edit(lambda c: c["model"].update({"embed.weight": "x"})),
    "model_config is a list": _ckpt_edit(lambda c: c.update(model_config=[1])),
    "model_config without vocab_size": _ckpt_edit(lambda c: c["model_config"].pop("vocab_size")),
    "dropout 7.0": _ckpt_edit(_config(dropout=7.0)),
    "dropout NaN": _ckpt_edit(_config(dropout=math.nan)),
    "hidden_size as text": _ckpt_edit(_config(hidden_size="512")),
    "hidden_size negative": _ckpt_edit(_config(hidden_size=-3)),
    "hidden_size 12000": _ckpt_edit(_config(hidden_size=12000)),
    "hidden_size 300": _ckpt_edit(_config(hidden_size=300)),
    "num_layers 10**6": _ckpt_edit(_config(num_layers=10**6)),
    "num_layers true": _ckpt_edit(_config(num_layers=True)),
    "vocab_size 10**9": _ckpt_edit(_config(vocab_size=10**9)),
    "feature_norm as text": _ckpt_edit(_config(feature_norm="yes")),
    "inject unknown": _ckpt_edit(_config(inject="sideways")),
    "unknown decoder": _ckpt_edit(_config(decoder="nonexistent")),
    "unknown decoder option": _ckpt_edit(_config(decoder_options={"bogus": 1})),
    "decoder_options a list": _ckpt_edit(_config(decoder_options=[1])),
    "unknown encoder": _ckpt_edit(_config(encoder="nope")),
    "transformer with heads 0": _ckpt_edit(
        _config(decoder="transformer", decoder_options={"heads": 0})
    ),
    "a weight missing": _ckpt_edit(lambda c: c["model"].pop(next(iter(c["model"])))),
    "an extra weight": _ckpt_edit(lambda c: c["model"].update({"extra.weight": torch.zeros(2)})),
    "a weight of another shape": _ckpt_edit(
        lambda c: c["model"].update({"head.weight": torch.zeros(3, 3)})
    ),
    "a float64 weight": _ckpt_edit(_to_double),
    "a NaN weight": _ckpt_edit(lambda c: _first_weight(c).fill_(math.nan)),
    "an infinite weight": _ckpt_edit(lambda c: _first_weight(c).fill_(math.inf)),
    "a pickled class": _ckpt_edit(lambda c: c.update(extra=_Anything())),
    "no vocab_fingerprint": _ckpt_edit(lambda c: c.pop("vocab_fingerprint")),
    "another vocab_fingerprint": _ckpt_edit(lambda c: c.update(vocab_fingerprint="0" * 16)),
    "vocab_fingerprint a number": _ckpt_edit(lambda c: c.update(vocab_fingerprint=123)),
    "vocab_size of another vocabulary": _ckpt_edit(_config(vocab_size=5)),
}


def _optimizer_moment(c: dict) -> dict:
    return next(iter(c["optimizer"]["state"].values()))


RESUME_CASES = {
    **COMMON_FILE_CASES,
    "no optimizer": _ckpt_edit(lambda c: c.pop("optimizer")),
    "optimizer a list": _ckpt_edit(lambda c: c.update(optimizer=[1])),
    "optimizer moment of another shape": _ckpt_edit(
        lambda c: _optimizer_moment(c).update(exp_avg=torch.zeros(7, 7))
    ),
    "optimizer moment NaN": _ckpt_edit(lambda c: _optimizer_moment(c)["exp_avg"].fill_(math.nan)),
    "optimizer with two groups": _ckpt_edit(
        lambda c: c["optimizer"]["param_groups"].append(dict(c["optimizer"]["param_groups"][0]))
    ),
    "optimizer entry for no parameter": _ckpt_edit(
        lambda c: c["optimizer"]["state"].update({999: {}})
    ),
    "scheduler with an injected field": _ckpt_edit(lambda c: c["scheduler"].update(optimizer=3)),
    "scheduler a number": _ckpt_edit(lambda c: c.update(scheduler=3)),
    "history not a list": _ckpt_edit(lambda c: c.update(history="all good")),
    "history longer than epoch": _ckpt_edit(lambda c: c["history"].append({})),
    "epoch negative": _ckpt_edit(lambda c: c.update(epoch=-1)),
    "epoch as text": _ckpt_edit(lambda c: c.update(epoch="1")),
    "best_val_loss NaN": _ckpt_edit(lambda c: c.update(best_val_loss=math.nan)),
    "stopped_early as text": _ckpt_edit(lambda c: c.update(stopped_early="no")),
    "bad_epochs missing": _ckpt_edit(lambda c: c.pop("bad_epochs")),
    "generator_state float": _ckpt_edit(lambda c: c.update(generator_state=torch.zeros(5))),
    "rng_state short": _ckpt_edit(lambda c: c.update(rng_state=torch.zeros(3, dtype=torch.uint8))),
    "world_size 0": _ckpt_edit(lambda c: c.update(world_size=0)),
    "train_config lr as text": _ckpt_edit(lambda c: c["train_config"].update(lr="fast")),
    "train_config batch_size 0": _ckpt_edit(lambda c: c["train_config"].update(batch_size=0)),
    "train_config a list": _ckpt_edit(lambda c: c.update(train_config=[])),
    "a NaN weight": _ckpt_edit(lambda c: _first_weight(c).fill_(math.nan)),
    "dropout 7.0": _ckpt_edit(_config(dropout=7.0)),
    "another architecture": _ckpt_edit(_config(hidden_size=16)),
    "another vocabulary": _ckpt_edit(lambda c: c.update(vocab_fingerprint="0" * 16)),
}


def _vocab_dict(**changes) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = pickle.loads(path.read_bytes())
        data.update(changes)
        for key, value in changes.items():
            if value is _DROP:
                data.pop(key)
        path.write_bytes(pickle.dumps(data))

    return apply


_DROP = object()


def _pickle(obj) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(pickle.dumps(obj))


VOCAB_CASES = {
    **COMMON_FILE_CASES,
    "a pickled list": _pickle([1, 2, 3]),
    "a pickled class": _pickle({"format": "storyteller-vocab", "itos": _Anything}),
    "no format marker": _pickle({"itos": ["<pad>"]}),
    "no itos": _vocab_dict(itos=_DROP),
    "itos a string": _vocab_dict(itos="<pad> <start>"),
    "itos with a number": _vocab_dict(itos=["<pad>", "<start>", "<end>", "<unk>", 7]),
    "itos with an empty word": _vocab_dict(itos=["<pad>", "<start>", "<end>", "<unk>", ""]),
    "itos without the special tokens": _vocab_dict(itos=["a", "b"]),
    "itos with a word twice": _vocab_dict(itos=["<pad>", "<start>", "<end>", "<unk>", "a", "a"]),
    "threshold as text": _vocab_dict(threshold="5"),
    "threshold 0": _vocab_dict(threshold=0),
    "provenance a list": _vocab_dict(provenance=[1]),
    "a newer version": _vocab_dict(version=99),
}


def _index_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Load a JSON file, apply ``change`` to it in place (its result is ignored), save it."""

    def apply(path: Path) -> None:
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))

    return apply


def _json_replace(obj: object) -> Callable[[Path], None]:
    return lambda path: path.write_text(json.dumps(obj))


INDEX_CASES = {
    **COMMON_FILE_CASES,
    "truncated json": lambda p: p.write_text(p.read_text()[:40]),
    "invalid UTF-8": lambda p: p.write_bytes(b'{"encoder": "\xff\xfe"}'),
    "a list": _json_replace([{"encoder": "efficientnet_lite0"}]),
    "no images": _index_edit(lambda m: m.pop("images")),
    "images a string": _index_edit(lambda m: m.update(images="a.jpg")),
    "images with a number": _index_edit(lambda m: m["images"].__setitem__(0, 5)),
    "an image twice": _index_edit(lambda m: m["images"].__setitem__(1, m["images"][0])),
    "no dim": _index_edit(lambda m: m.pop("dim")),
    "dim as text": _index_edit(lambda m: m.update(dim="8")),
    "dim 0": _index_edit(lambda m: m.update(dim=0)),
    "dim disagreeing with the array": _index_edit(lambda m: m.update(dim=16)),
    "encoder a number": _index_edit(lambda m: m.update(encoder=5)),
    "done beyond the images": _index_edit(lambda m: m.update(done=999)),
    "done negative": _index_edit(lambda m: m.update(done=-1)),
    "unreadable an unknown image": _index_edit(lambda m: m.update(unreadable=["ghost.jpg"])),
    "non_finite an unknown image": _index_edit(lambda m: m.update(non_finite=["ghost.jpg"])),
    "unknown layout": _index_edit(lambda m: m.update(layout="cube")),
    "grid without its size": _index_edit(lambda m: m.update(layout="grid")),
    "a newer version": _index_edit(lambda m: m.update(version=99)),
    "dtype float32": _index_edit(lambda m: m.update(dtype="float32")),
    "a 5,001-digit integer": add_huge_integer,
}


def _save_npy(make: Callable[[np.ndarray], np.ndarray], **kwargs) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        array = np.load(path)
        np.save(path, make(array), **kwargs)

    return apply


def _huge_header(path: Path) -> None:
    """A valid header promising 10**9 rows (16 GB) over the same few bytes of data."""
    array = np.load(path)
    buffer = io.BytesIO()
    header = {"descr": "<f2", "fortran_order": False, "shape": (10**9, array.shape[1])}
    np.lib.format.write_array_header_1_0(buffer, header)
    path.write_bytes(b"\x93NUMPY\x01\x00" + buffer.getvalue()[8:] + array.tobytes())


def _nan_row(array: np.ndarray) -> np.ndarray:
    array[1, 2] = np.nan
    return array


ARRAY_CASES = {
    **COMMON_FILE_CASES,
    "cut short": lambda p: p.write_bytes(p.read_bytes()[:-10]),
    "longer than its header": lambda p: p.write_bytes(p.read_bytes() + b"\0" * 16),
    "float32": _save_npy(lambda a: a.astype(np.float32)),
    "object array (pickled)": _save_npy(lambda a: a.astype(object), allow_pickle=True),
    "Fortran order": _save_npy(np.asfortranarray),
    "more rows": _save_npy(lambda a: np.concatenate([a, a])),
    "three dimensions": _save_npy(lambda a: a.reshape(a.shape[0], 2, -1)),
    "a header promising 16 GB": _huge_header,
    "NaN values": _save_npy(_nan_row),
}


def _splits_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return _index_edit(change)


SPLITS_CASES = {
    **COMMON_FILE_CASES,
    "a list": _json_replace([["a.jpg"], [], []]),
    "no test split": _splits_edit(lambda s: s.pop("test")),
    "test a string": _splits_edit(lambda s: s.update(test="a.jpg")),
    "names that are numbers": _splits_edit(lambda s: s.update(test=[1, 2])),
    "an image in train and test": _splits_edit(lambda s: s["test"].append(s["train"][0])),
    "a 5,001-digit integer": add_huge_integer,
}


def _case_ids(cases: dict) -> list:
    return [pytest.param(fn, id=name) for name, fn in cases.items()]


# --------------------------------------------------------------------------------------------
# The catalogue: public loader and CLI, one line naming the file
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("break_it", _case_ids(MODEL_CASES))
def test_malformed_checkpoint_is_one_line_naming_the_file(run, break_it, capsys):
    data, out = run
    path = out / "best_model.pth"
    break_it(path)
    with pytest.raises(StorytellerError) as error:
        load_model(path, Vocabulary.load(out / "vocab.pkl"))
    assert_one_line_naming(str(error.value), path)
    argv = ["evaluate", "--data", str(data), "--out", str(out), "--meteor", "none"]
    assert_cli_error(argv, path, capsys)


@pytest.mark.parametrize("break_it", _case_ids(RESUME_CASES))
def test_malformed_last_checkpoint_is_refused_before_resuming(run, break_it, capsys):
    data, out = run
    path = out / "last.pth"
    break_it(path)
    before = (out / "best_model.pth").read_bytes()
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "2", *TRAIN_ARGS]
    assert_cli_error(argv, path, capsys)
    assert (out / "best_model.pth").read_bytes() == before  # refused before any epoch ran


@pytest.mark.parametrize("break_it", _case_ids(VOCAB_CASES))
def test_malformed_vocabulary_is_one_line_naming_the_file(run, break_it, capsys):
    data, out = run
    path = out / "vocab.pkl"
    break_it(path)
    with pytest.raises(StorytellerError) as error:
        Vocabulary.load(path)
    assert_one_line_naming(str(error.value), path)
    argv = ["evaluate", "--data", str(data), "--out", str(out), "--meteor", "none"]
    assert_cli_error(argv, path, capsys)


@pytest.mark.parametrize("break_it", _case_ids(INDEX_CASES))
def test_malformed_feature_index_is_one_line_naming_the_file(run, break_it, capsys):
    data, out = run
    path = out / "features" / "features.json"
    break_it(path)
    with pytest.raises(StorytellerError) as error:
        load_feature_cache(out / "features")
    # "dim disagreeing with the array" is found on the array, which it names beside the index
    assert_one_line_naming(str(error.value), out / "features")
    argv = ["evaluate", "--data", str(data), "--out", str(out), "--meteor", "none"]
    assert_cli_error(argv, out / "features", capsys)


@pytest.mark.parametrize("break_it", _case_ids(ARRAY_CASES))
def test_malformed_feature_array_is_refused_before_it_is_mapped(run, break_it, capsys):
    data, out = run
    path = out / "features" / "features.npy"
    break_it(path)
    with pytest.raises(StorytellerError) as error:
        load_feature_cache(out / "features")
    assert_one_line_naming(str(error.value), path)
    argv = ["train", "--data", str(data), "--out", str(out), "--no-resume", *TRAIN_ARGS]
    assert_cli_error(argv, path, capsys)


@pytest.mark.parametrize("break_it", _case_ids(SPLITS_CASES))
def test_malformed_splits_are_one_line_naming_the_file(run, break_it, capsys):
    data, out = run
    path = out / "splits.json"
    break_it(path)
    with pytest.raises(StorytellerError) as error:
        pipeline.load_splits(out)
    assert_one_line_naming(str(error.value), path)
    argv = ["evaluate", "--data", str(data), "--out", str(out), "--meteor", "none"]
    assert_cli_error(argv, path, capsys)


def test_splits_naming_images_the_cache_lacks_are_one_line_naming_both(run, capsys):
    """``splits.json`` naming a photo the feature cache never saw is refused before training
    or evaluation starts (before, ``train`` skipped it silently and ``evaluate`` ended in
    ``unexpected KeyError: 'ghost_0.jpg'`` after writing metrics.json)."""
    data, out = run
    splits = json.loads((out / "splits.json").read_text())
    splits["train"].append("ghost_0.jpg")
    splits["test"].append("ghost_1.jpg")
    write_json(out / "splits.json", splits)
    for argv in (
        ["train", "--data", str(data), "--out", str(out), "--epochs", "2", *TRAIN_ARGS],
        ["evaluate", "--data", str(data), "--out", str(out), "--meteor", "none"],
    ):
        err = assert_cli_error(argv, out / "splits.json", capsys)
        assert f"{out / 'features' / 'features.json'} does not hold (e.g. ghost_0.jpg)" in err
        assert "names 2 image(s)" in err
    assert not (out / "metrics.json").exists() and not (out / "baseline.json").exists()
    assert read_checkpoint(out / "last.pth")["epoch"] == 1


def test_images_without_captions_in_the_data_are_one_line(run, tmp_path, capsys):
    data, out = run
    other = Path(shutil.copytree(data, tmp_path / "other"))
    lines = (other / "captions.txt").read_text().splitlines()
    gone = lines[1].split(",")[0]
    (other / "captions.txt").write_text(
        "\n".join(line for line in lines if not line.startswith(gone))
    )
    argv = ["evaluate", "--data", str(other), "--out", str(out), "--meteor", "none"]
    err = assert_cli_error(argv, out / "splits.json", capsys)
    assert f"1 image(s) of {out / 'splits.json'} have no captions" in err and gone in err


def _record_data(out: Path, image_dir: Path) -> None:
    index = json.loads((out / "features" / "features.json").read_text())
    write_json(out / "features" / "features.json", {**index, "image_dir": str(image_dir)})


def test_a_step_without_data_uses_the_dataset_the_run_was_made_from(run, tmp_path, capsys):
    """Not the embedded sample: that ended in ``unexpected KeyError`` on a Flickr8k run."""
    data, out = run
    _record_data(out, data / "Images")
    assert main(["train", "--out", str(out), "--epochs", "2", *TRAIN_ARGS]) == 0
    said = capsys.readouterr().out
    assert f"no --data given: using {data}, the dataset the run folder {out} was made from" in said
    assert read_checkpoint(out / "last.pth")["epoch"] == 2
    _record_data(out, tmp_path / "gone" / "Images")
    argv = ["evaluate", "--out", str(out), "--meteor", "none"]
    err = assert_cli_error(argv, out / "features" / "features.json", capsys)
    assert f"photos are in {tmp_path / 'gone' / 'Images'}, which is no dataset folder" in err


def test_the_good_run_folder_loads_everywhere(good_run):
    """The catalogue's starting point is valid: every failure above is the break's doing."""
    _, out = good_run
    vocab = Vocabulary.load(out / "vocab.pkl")
    model, _ = load_model(out / "best_model.pth", vocab)
    assert model.config.hidden_size == 8
    assert len(load_feature_cache(out / "features")) == 10
    assert set(pipeline.load_splits(out)) >= {"train", "val", "test"}


# --------------------------------------------------------------------------------------------
# Item 6: a crafted config is refused before anything is allocated
# --------------------------------------------------------------------------------------------

_PEAK_RSS = """
import resource, sys, time
import storyteller.features.encoders  # imports first: only the load is measured
from storyteller.models.checkpoint import load_model
from storyteller.errors import StorytellerError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    load_model(sys.argv[1])
    print("loaded")
except StorytellerError as exc:
    print("refused", exc)
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"{time.perf_counter() - started:.3f} {grown_mb:.0f}")
"""


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("hidden_size", 12000, "hidden_size=12000"),  # 3.9 GB for 11 s before: over the limit
        ("hidden_size", 3000, "hidden_size"),  # 0.6 GB before: under it, refused on shapes
        ("num_layers", 10**6, "num_layers"),  # tried to allocate 1 TB before
    ],
)
def test_crafted_model_config_is_refused_without_allocating(tmp_path, field, value, words):
    """A real model's checkpoint (feature_dim 1280, as EfficientNet-Lite0 gives) with one
    field made huge: refused in one line naming the file and the field, in far under a
    second, and the process's peak memory does not grow by what that field would cost."""
    from storyteller.models import build_model
    from storyteller.models.checkpoint import save_checkpoint

    config = ModelConfig(vocab_size=200, feature_dim=1280, encoder="efficientnet_lite0")
    path = tmp_path / "crafted.pth"
    save_checkpoint(path, build_model(config), vocab_fingerprint="0" * 16)
    checkpoint = read_checkpoint(path)
    checkpoint["model_config"][field] = value
    torch.save(checkpoint, path)
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, timeout=300
    )
    outcome, timing = run.stdout.strip().splitlines()
    seconds, grown_mb = map(float, timing.split())
    assert outcome.startswith(f"refused {path}: "), run.stdout + run.stderr
    assert words in outcome
    assert seconds < 5  # 11-24 s before; ~0.03 s measured now
    assert grown_mb < 200  # 3.9 GB before


def test_a_checkpoint_without_a_fingerprint_needs_trust_vocab(run):
    """Item 8: a checkpoint with no vocabulary fingerprint used to load with any vocabulary of
    the same size (wrong words, no warning). Refused now, naming the way out."""
    _, out = run
    path = out / "best_model.pth"
    vocab = Vocabulary.load(out / "vocab.pkl")
    _ckpt_edit(lambda c: c.pop("vocab_fingerprint"))(path)
    with pytest.raises(StorytellerError, match="no vocab_fingerprint.*trust_vocab=True"):
        load_model(path, vocab)
    model, _ = load_model(path, vocab, trust_vocab=True)  # the explicit way out
    assert model.config.vocab_size == len(vocab)
    shuffled = Vocabulary(list(reversed(vocab.itos[4:])))  # same size, other words
    _ckpt_edit(lambda c: c.update(vocab_fingerprint=vocab.fingerprint))(path)
    with pytest.raises(StorytellerError, match="different vocabulary"):
        load_model(path, shuffled)


def test_every_checkpoint_written_has_the_vocabulary_fingerprint(good_run):
    _, out = good_run
    vocab = Vocabulary.load(out / "vocab.pkl")
    for name in ("best_model.pth", "last.pth"):
        assert read_checkpoint(out / name)["vocab_fingerprint"] == vocab.fingerprint


def test_a_good_resume_still_resumes(run, capsys):
    """The checks refuse nothing a real run writes: the run folder resumes one more epoch."""
    data, out = run
    argv = ["train", "--data", str(data), "--out", str(out), "--epochs", "2", *TRAIN_ARGS]
    assert main(argv) == 0
    assert "resuming from" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pth")["epoch"] == 2


def test_config_errors_name_the_field_and_range():
    with pytest.raises(StorytellerError, match=r"model_config.dropout .* \[0, 1\), got 7.0"):
        ModelConfig.from_dict({"vocab_size": 10, "dropout": 7.0})
    with pytest.raises(StorytellerError, match="model_config has no vocab_size"):
        ModelConfig.from_dict({})
    assert ModelConfig.from_dict({"vocab_size": 10, "future_field": 1}).vocab_size == 10
    assert ModelConfig.from_dict({"vocab_size": 10, "dropout": 0}).dropout == 0.0


def test_the_notebook_report_reads_history_through_the_checked_reader(tmp_path):
    """A huge integer in history.json is one line naming the file, whoever reads it."""
    from storyteller.notebook.report import read_history

    (tmp_path / "history.json").write_text('[{"epoch": ' + "9" * 5001 + "}]")
    with pytest.raises(StorytellerError, match="integer of 5,001 digits") as error:
        read_history(tmp_path)
    assert_one_line_naming(str(error.value), tmp_path / "history.json")

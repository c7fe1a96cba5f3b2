"""The command line answers help, argument mistakes and early failures without the heavy
imports: torch alone costs seconds, so a command that only parses its
arguments, or fails on a missing folder or story backend, must not import it.

Each case runs ``storyteller.cli.main`` in a fresh interpreter and reads back which heavy
modules it imported; nothing here times anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "gradio", "transformers", "nltk", "matplotlib", "timm")
HEAVY += ("huggingface_hub",)
MARK = "IMPORTED:"

# Runs main(argv) as `python -m storyteller` would, then prints the exit status and the heavy
# modules now in sys.modules on the last line of stdout.
PROBE = f"""
import json, sys
from storyteller.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print({MARK!r} + json.dumps({{"code": code, "heavy": heavy}}), flush=True)
"""


def _probe(argv: list[str], tmp_path, code: str = PROBE) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "STORYTELLER_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), STORYTELLER_SAMPLE_DIR=str(tmp_path / "sample"))
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    last = done.stdout.rstrip().rsplit("\n", 1)[-1]
    assert last.startswith(MARK), done.stdout + done.stderr
    return json.loads(last[len(MARK) :]), done.stdout + done.stderr


CASES = {
    "help": (["--help"], 0, "usage: python -m storyteller"),
    "command help": (["train", "--help"], 0, "--decoder-option NAME=VALUE"),
    "every decoder's options in help": (["run-all", "--help"], 0, "d_model=256"),
    "mistyped command": (["trian"], 2, "did you mean train?"),
    "mistyped flag": (["train", "--epohcs", "3"], 2, "did you mean --epochs?"),
    "bad choice": (["features", "--encoder", "resnet5O"], 2, "did you mean resnet50?"),
    "bad decoder option": (
        ["train", "--decoder-option", "depth=2"],
        2,
        "the 'attention' decoder has no option 'depth'",
    ),
    "flags that disagree": (["train", "--augment"], 2, "--augment needs --fine-tune-encoder"),
    "number out of range": (["train", "--dropout", "1"], 2, "--dropout: must be a number in"),
    "backend ignoring a flag": (
        ["story", "--caption", "a dog", "--backend", "offline", "--base-url", "http://x"],
        2,
        "--base-url is a server for --backend hosted, not offline",
    ),
    "missing data folder": (
        ["vocab", "--data", "no-such-folder"],
        2,
        "dataset folder not found: no-such-folder",
    ),
    "data is the image folder": (
        ["features", "--data", "Images"],
        2,
        "is the image folder; --data wants the dataset folder",
    ),
    "missing story backend": (
        ["story", "--caption", "a dog runs", "--backend", "hosted"],
        2,
        "hosted: no Hugging Face token",
    ),
    "notebooks check": (["notebooks", "check", "missing.ipynb"], 2, "not a readable notebook"),
}
#: Heavy modules a case may import because its own check needs them: looking for a saved
#: Hugging Face login is huggingface_hub's ``get_token`` (a small import, no torch).
ALLOWED = {"missing story backend": {"huggingface_hub"}}


@pytest.mark.parametrize("case", list(CASES))
def test_answers_without_heavy_imports(case, tmp_path):
    argv, code, text = CASES[case]
    (tmp_path / "Images").mkdir()  # for "data is the image folder"
    result, output = _probe(argv, tmp_path)
    assert text in output
    assert result["code"] == code, output
    heavy = set(result["heavy"]) - ALLOWED.get(case, set())
    assert not heavy, f"{' '.join(argv)} imported {sorted(heavy)}"


def test_the_probe_sees_a_heavy_import(tmp_path):
    """The check above can fail: importing the module that builds networks shows torch."""
    code = PROBE.replace("import json, sys", "import json, sys, storyteller.features.encoders")
    result, output = _probe(["--help"], tmp_path, code)
    assert "torch" in result["heavy"], output


def test_the_registries_behind_the_parser_are_the_models_own():
    """The torch-free lists the parser reads are the ones the model code uses, not copies."""
    from storyteller import decoder_options, models
    from storyteller.features import encoder_specs, encoders

    assert encoders.get_encoder_spec is encoder_specs.get_encoder_spec
    assert list(decoder_options.BUILTIN_DECODERS) == [
        name for name in models.DECODERS if name in decoder_options.BUILTIN_DECODERS
    ]
    for name, options in decoder_options.BUILTIN_DECODERS.items():
        assert models.decoder_class(name).options_class is options
    assert decoder_options.DEFAULT_DECODER in decoder_options.BUILTIN_DECODERS


def test_a_built_in_name_with_other_options_is_refused():
    from dataclasses import dataclass

    from storyteller.models import LSTMDecoder, register_decoder

    @dataclass
    class Other:
        width: int = 3

    class Impostor(LSTMDecoder):
        options_class = Other

    with pytest.raises(ValueError, match="'attention' is built in with AttentionOptions"):
        register_decoder("attention")(Impostor)

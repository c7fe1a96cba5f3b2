"""Flags read from the config dataclasses: a new option() field is a `train` flag,
with its default and help, and the parsed flags build an equal config back."""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import dataclass

import pytest

from storyteller import cli, config
from storyteller.cli import train as train_command
from storyteller.cli.common import HelpFormatter
from storyteller.cli.train import configs
from storyteller.config import ModelConfig, TrainConfig, field_values, train_flags
from storyteller.config_cli import (
    Bound,
    add_config_flags,
    config_flags,
    config_flags_for,
    config_from_args,
    config_values,
    field_bounds,
    option,
)
from storyteller.errors import StorytellerError


@dataclass
class _Settings:
    """Every kind of flag option() makes."""

    size: int = option(8, "how many")
    rate: float = option(0.5, "how fast (default {default})")
    mode: str = option("a", "which mode", choices=("a", "b"))
    width: int = option(16, "how wide; not given: the run decides", flag_default=None)
    num_steps: int = option(3, "how long", flag="steps", metavar="N")
    loud: bool = option(False, "say more")
    tidy: bool = option(True, "leave the mess")
    hidden: int = 4  # no option(): no flag


def _parser(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", formatter_class=HelpFormatter)
    add_config_flags(parser, cls)
    return parser


def test_each_option_field_is_a_flag_named_typed_and_defaulted_from_the_field(capsys):
    assert {name: flag.name for name, flag in config_flags(_Settings).items()} == {
        "size": "--size",
        "rate": "--rate",
        "mode": "--mode",
        "width": "--width",
        "num_steps": "--steps",
        "loud": "--loud",
        "tidy": "--no-tidy",
    }
    parser = _parser(_Settings)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for text in (
        "--size SIZE how many (default: 8)",
        "--rate RATE how fast (default 0.5)",
        "--mode {a,b} which mode (default: a)",
        "--width WIDTH how wide; not given: the run decides",
        "--steps N how long (default: 3)",
        "--loud say more",
        "--no-tidy leave the mess",
    ):
        assert text in shown
    assert "--hidden" not in shown
    args = parser.parse_args([])
    assert (args.size, args.rate, args.width, args.steps, args.loud, args.no_tidy) == (
        8, 0.5, None, 3, False, False
    )  # fmt: skip
    for argv, message in (
        (["--size", "x"], "--size: must be an integer"),
        (["--mode", "c"], "choice"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err


def test_parsed_flags_build_the_config_back_and_the_inverse_gives_them_again():
    parser = _parser(_Settings)
    argv = ["--size", "2", "--rate", "0.25", "--mode", "b", "--width", "32", "--steps", "9"]
    argv += ["--loud", "--no-tidy"]
    config = config_from_args(_Settings, parser.parse_args(argv), hidden=7)
    assert config == _Settings(2, 0.25, "b", 32, 9, True, False, 7)
    values = config_values(_Settings, parser.parse_args(argv))
    assert config_from_args(_Settings, parser.parse_args(config_flags_for(_Settings, values)))
    assert config_values(_Settings, parser.parse_args(config_flags_for(_Settings, values))) == (
        values
    )
    # Defaults that mean "not asked" stay out, so the run decides them.
    assert config_values(_Settings, parser.parse_args([])) == {
        "size": 8,
        "rate": 0.5,
        "mode": "a",
        "num_steps": 3,
        "tidy": True,
    }
    assert config_from_args(_Settings, parser.parse_args([])) == _Settings()


def test_a_misnamed_field_to_place_first_is_an_error():
    with pytest.raises(ValueError, match="_Settings has no field with a flag named sizes"):
        add_config_flags(argparse.ArgumentParser(), _Settings, ["sizes"])


@dataclass
class _NewTrainConfig(TrainConfig):
    warmup_epochs: int = option(2, "epochs of learning-rate warm-up")


@dataclass
class _NewModelConfig(ModelConfig):
    gate: str = option("sigmoid", "the gate's function", choices=("sigmoid", "tanh"))


@pytest.mark.parametrize("command", ["train", "run-all"])
def test_a_new_config_field_is_a_train_flag_with_its_default_and_help(command, monkeypatch, capsys):
    for module in (train_command, config):  # the train command's flags, and train_flags
        monkeypatch.setattr(module, "TrainConfig", _NewTrainConfig)
        monkeypatch.setattr(module, "ModelConfig", _NewModelConfig)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--warmup-epochs WARMUP_EPOCHS epochs of learning-rate warm-up (default: 2)" in shown
    assert "--gate {sigmoid,tanh} the gate's function (default: sigmoid)" in shown

    argv = [command, "--warmup-epochs", "5", "--epochs", "4", "--gate", "tanh"]
    train, model = configs(cli.build_parser().parse_args(argv))
    assert train == _NewTrainConfig(warmup_epochs=5, num_epochs=4)
    assert model["gate"] == "tanh"
    again = configs(cli.build_parser().parse_args(["train", *train_flags(train, model)]))
    assert again == (train, model)
    default_train, _ = configs(cli.build_parser().parse_args([command]))
    assert default_train == _NewTrainConfig()


def test_train_and_run_all_have_a_flag_for_every_option_field():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("train", "run-all"):
        flags = {f for a in commands.choices[command]._actions for f in a.option_strings}
        for cls in (TrainConfig, ModelConfig):
            assert {flag.name for flag in config_flags(cls).values()} <= flags


def test_field_values_are_checked_against_the_dataclass():
    assert field_values(ModelConfig, hidden_size=64, dropout=0.1) == {
        "hidden_size": 64,
        "dropout": 0.1,
    }
    with pytest.raises(TypeError, match="ModelConfig has no field 'hiden_size'"):
        field_values(ModelConfig, hiden_size=64)
    with pytest.raises(TypeError, match="ModelConfig.hidden_size must be an integer, got '64'"):
        field_values(ModelConfig, hidden_size="64")


@dataclass
class _Optional:
    seed: int | None = option(None, "repeatable when given")
    limit: float | None = option(None, "seconds")


def test_an_optional_field_is_a_typed_flag_left_out_when_not_given():
    parser = _parser(_Optional)
    assert config_values(_Optional, parser.parse_args([])) == {}
    given = parser.parse_args(["--seed", "7", "--limit", "2.5"])
    assert config_from_args(_Optional, given) == _Optional(seed=7, limit=2.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--seed", "seven"])  # typed as int, not passed on as text


def test_the_story_commands_controls_are_story_options_fields():
    from storyteller.story.options import StoryOptions

    args = cli.build_parser().parse_args(
        ["story", "--caption", "a dog", "--genre", "fable", "--seed", "3", "--length", "long"]
    )
    assert config_from_args(StoryOptions, args) == StoryOptions(
        genre="fable", seed=3, length="long"
    )
    assert set(config_flags(StoryOptions)) == {
        "genre",
        "tone",
        "length",
        "temperature",
        "seed",
        "max_new_tokens",
    }


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dropout", "1"],  # each of these once wrote a checkpoint that never loaded
        ["train", "--lr", "10.5"],
        ["train", "--patience", "-1"],
        ["train", "--lr", "nan"],  # these failed late, in torch
        ["train", "--lr", "-1"],
        ["train", "--seed", "-1"],
        ["train", "--seed", str(2**32)],  # NumPy's seeds are 32-bit
        ["train", "--fine-tune-encoder", "-1"],
        ["run-all", "--epochs", "0"],
        ["caption", "--beam", "100000"],  # killed for memory
        ["caption", "--beam", "2000"],  # ran for minutes
        ["evaluate", "--beam", "1", "11"],
        ["story", "--beam", "11"],
        ["caption", "--length-penalty", "nan"],  # captions "a"
        ["evaluate", "--length-penalty", "inf"],  # NaN in metrics.json
        ["story", "--length-penalty", "1e300"],
        ["story", "--timeout", "nan"],  # failed inside the HTTP client
        ["story", "--timeout", "-1"],
        ["story", "--timeout", "1e308"],
        ["story", "--timeout", "0"],  # silently meant 60
        ["story", "--temperature", "nan"],
        ["story", "--max-new-tokens", "0"],
        ["sample", "--num-images", "0"],
        ["vocab", "--threshold", "0"],
        ["features", "--batch-size", "0"],
        ["features", "--workers", "-1"],
        ["encoders", "--batch-size", "0"],
    ],
    ids=" ".join,
)
def test_a_number_out_of_range_is_refused_as_the_flag_is_parsed(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert f"error: argument {argv[1]}: must be " in err and repr(argv[-1]) in err, err


def test_every_numeric_flag_of_every_command_is_finite_and_bounded():
    """A new ``type=int`` or ``type=float`` flag fails here: give it ``number(kind, bound)``."""
    for command, parser in _command_parsers().items():
        for action in parser._actions:
            if action.type is None:
                continue
            for text in ("nan", "inf", "-inf", str(10**30), str(-(10**30))):
                with pytest.raises(argparse.ArgumentTypeError, match="must be"):
                    action.type(text)
            assert action.option_strings, f"{command} {action.dest}"


def _edges(bound: Bound, kind: type) -> tuple[list, list]:
    """The values at ``bound``'s two ends that it holds, and the nearest ones beyond them."""
    step = (lambda x, to: x + (1 if to > x else -1)) if kind is int else math.nextafter
    low = step(bound.low, math.inf) if bound.low_open else bound.low
    high = step(bound.high, -math.inf) if bound.high_open else bound.high
    return [low, high], [step(low, -math.inf), step(high, math.inf)]


def test_what_train_accepts_at_every_edge_loads_back_and_nothing_beyond(capsys):
    """The flags and the checkpoint loader read one bound per field, so a config `train`
    writes always loads (once, --dropout 1 trained a model that `caption` refused)."""
    cases = [(cls, name) for cls in (TrainConfig, ModelConfig) for name in config_flags(cls)]
    cases += [(ModelConfig, "fine_tuned_blocks")]  # --fine-tune-encoder
    parser = cli.build_parser()
    checked = 0
    for cls, name in cases:
        bound = field_bounds(cls).get(name)
        if bound is None:
            continue
        flag = config_flags(cls)[name].name if name in config_flags(cls) else "--fine-tune-encoder"
        kind = typing.get_type_hints(cls)[name]
        inside, outside = _edges(bound, kind)
        for value in inside:
            args = parser.parse_args(["train", f"{flag}={value!r}"])
            train, model = configs(args)
            model = ModelConfig(vocab_size=100, fine_tuned_blocks=args.fine_tune_encoder, **model)
            assert TrainConfig.from_dict(train.to_dict()) == train
            assert ModelConfig.from_dict(model.to_dict()) == model
            assert getattr(train if cls is TrainConfig else model, name) == value
        for value in outside:
            with pytest.raises(SystemExit):
                parser.parse_args(["train", f"{flag}={value!r}"])
            assert f"argument {flag}: must be" in capsys.readouterr().err
            with pytest.raises(StorytellerError, match=f"{name} must be"):
                cls.from_dict({"vocab_size": 100, name: value})
        checked += 1
    assert checked == 11, checked


def test_a_non_finite_decoder_option_is_refused_before_anything_runs(capsys):
    assert cli.main(["train", "--decoder-option", "alpha_c=inf"]) == 2
    assert "option alpha_c takes a finite number, not 'inf'" in capsys.readouterr().err


def test_help_shows_each_numbers_range(capsys):
    with pytest.raises(SystemExit):
        cli.main(["caption", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--beam BEAM beam width (1 = greedy), in [1, 10] (default: 1)" in shown
    assert "--length-penalty LENGTH_PENALTY beam length normalisation alpha, in [0, 5]" in shown


@pytest.mark.parametrize(
    "backend, flags, message",
    [
        ("offline", ["--base-url", "http://127.0.0.1:9"], "--base-url is a server for --backend"),
        ("transformers", ["--base-url", "http://127.0.0.1:9"], "hosted, not transformers"),
        ("offline", ["--model", "a/b"], "--model is for hosted or transformers"),
    ],
)
def test_a_story_flag_the_chosen_backend_would_ignore_is_refused(backend, flags, message, capsys):
    assert cli.main(["story", "--caption", "a dog", "--backend", backend, *flags]) == 2
    assert message in capsys.readouterr().err

"""Command line: ``python -m storyteller <command>`` (also installed as ``storyteller``).

Every command is a thin wrapper over a function in :mod:`storyteller.pipeline` (or
:mod:`storyteller.inference`), so notebooks can call the same code. Errors are printed as one
line (``error: ...``) with exit status 2, not as a traceback; set ``STORYTELLER_DEBUG=1`` to
see the traceback of an unexpected failure.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from pathlib import Path

from .config import COUNT, MIN_WORD_COUNT, SEED, SMOKE_LABEL, ModelConfig, Strategy, TrainConfig
from .config_cli import (
    add_config_flags,
    config_flags,
    config_flags_for,
    config_from_args,
    config_values,
    flag_type,
    number,
    option_choices,
)
from .decoder_options import (
    BUILTIN_DECODERS,
    DEFAULT_DECODER,
    AttentionOptions,
    option_defaults,
    parse_decoder_options,
)
from .errors import StorytellerError, disk_full_cause, disk_full_error
from .features.encoder_specs import DECODE_CHOICES, ENCODERS, LAYOUTS
from .features.extraction_sizes import (
    BATCH_SIZES,
    CPU_BATCH_SIZE,
    CPU_NUM_WORKERS,
    GPU_BATCH_SIZE,
    GPU_NUM_WORKERS,
    WORKERS,
)
from .run_folder import BEST_CHECKPOINT, DEFAULT_OUT


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every flag's default: appended as ``(default: X)`` unless the help already says
    it, and never for a default that means "none" (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        bound = getattr(action.type, "bound", None)  # a number's range (config_cli.number)
        text = f"{action.help or ''}, {bound}" if bound else action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class _Parser(argparse.ArgumentParser):
    """argparse with shown defaults and a "did you mean" for a mistyped command, choice or
    flag. Subcommand parsers are of this class too (argparse makes them with the parent's)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        """Unknown flags are reported by the subcommand's parser (its usage, its flags to
        suggest from) rather than by the top-level one, which knows none of them."""
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = self._command_parser(known) or self
            flags = [f for a in parser._actions for f in a.option_strings]
            hints = [_did_you_mean(arg.split("=", 1)[0], flags) for arg in unknown]
            hint = next((h for h in hints if h), "")
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return known

    def _command_parser(self, namespace) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(namespace, action.dest, None))
        return None

    def error(self, message: str):
        invalid = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if invalid:
            choices = re.findall(r"'([^']*)'", invalid.group(2))
            message += _did_you_mean(invalid.group(1), choices)
        super().error(message)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    """``"; did you mean --epochs?"`` for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


_beam_width = flag_type(Strategy, "beam_size")  # 1 = greedy, at most the app's cap


def _add_length_penalty(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--length-penalty",
        type=flag_type(Strategy, "length_penalty"),
        default=Strategy.length_penalty,
        help="beam length normalisation alpha",
    )


def _add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold", type=number(int, COUNT), default=MIN_WORD_COUNT, help="minimum word count"
    )


def _add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="what the feature cache holds: pooled (one vector per image) or grid (7x7 "
        "vectors per image, for attention captioners; ~49x the disk, and serves pooled "
        "ones too); default: what an existing cache holds, else what the default captioner "
        f"({DEFAULT_DECODER}) reads",
    )


def _default_layout(out: str) -> str | None:
    """``features`` without ``--layout``: what an existing cache holds (None lets the step
    read it), else what the default captioner reads, so ``train`` with its defaults finds it."""
    from .models import decoder_class
    from .run_folder import RunPaths

    if RunPaths(Path(out)).features_index.is_file():
        return None
    return decoder_class(DEFAULT_DECODER).feature_layout


def _add_common(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        p.add_argument(
            "--data",
            help="dataset folder (Images/ + captions.txt, Flickr8k.token.txt or "
            "results.csv); default: the embedded sample dataset",
        )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"run folder for every artefact (default: ./{DEFAULT_OUT})",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """The flags of TrainConfig's and ModelConfig's option() fields (:mod:`.config_cli`),
    with the few that are not config fields placed beside the ones they go with. A new
    option() field lands after the others of its dataclass."""
    first = add_config_flags(p, TrainConfig, ["num_epochs", "batch_size", "lr", "patience", "seed"])
    model = add_config_flags(p, ModelConfig, ["embed_size"])
    p.add_argument(
        "--embeddings",
        metavar="FILE",
        help="start the word embedding from pretrained vectors: a GloVe text file "
        "(`word v1 ... vD` per line, e.g. glove.6B.300d.txt); its dimension sets the width "
        "(the transformer's d_model); the checkpoint keeps the learned vectors",
    )
    model += add_config_flags(p, ModelConfig, ["freeze_embeddings"])
    add_config_flags(p, ModelConfig, skip=model)
    p.add_argument(
        "--attention",
        choices=list(option_choices(AttentionOptions, "attention")),
        help="with --decoder attention: additive (bahdanau, default) or multiplicative scoring",
    )
    p.add_argument(
        "--decoder-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one of the decoder's own options (repeat for more); " + _options_help(),
    )
    p.add_argument(
        "--no-resume", action="store_true", help="start training afresh even if last.pth exists"
    )
    # Not a model override: train_step trains the encoder's blocks and records the number in
    # ModelConfig.fine_tuned_blocks itself.
    p.add_argument(
        "--fine-tune-encoder",
        type=flag_type(ModelConfig, "fine_tuned_blocks"),
        default=ModelConfig.fine_tuned_blocks,
        metavar="N",
        help="train the encoder's last N blocks with the decoder, from the photos (slower: the "
        "CNN runs every step); the checkpoint keeps the encoder (default 0: frozen encoder, "
        "trained from the feature cache)",
    )
    add_config_flags(p, TrainConfig, skip=first)


def _options_help() -> str:
    """Every decoder's options with their defaults, from the options dataclasses."""
    parts = []
    for name in BUILTIN_DECODERS:
        defaults = option_defaults(name)
        if defaults:
            parts.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    return "; ".join(parts)


def _add_model_files(p: argparse.ArgumentParser, model_flag: bool = True) -> None:
    flags = ["--checkpoint", "--model"] if model_flag else ["--checkpoint"]
    p.add_argument(
        *flags,
        dest="checkpoint",
        default=f"{DEFAULT_OUT}/{BEST_CHECKPOINT}",
        help="the trained captioner: a run's best_model.pth, a run folder, a model folder "
        "(push --dry-run) or a Hugging Face Hub model id USER/NAME",
    )
    p.add_argument(
        "--vocab",
        help="a best_model.pth's vocabulary (default: the vocab.pkl beside it); a model "
        "folder or Hub model carries its own",
    )
    p.add_argument("--revision", help="a Hub model's branch, tag or commit (default: main)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--beam",
        type=_beam_width,
        nargs="+",
        default=[1, 5],
        help="decodings to score: 1 = greedy (default: 1 5)",
    )
    _add_length_penalty(p)
    p.add_argument(
        "--meteor",
        choices=["auto", "java", "nltk", "none"],
        default="auto",
        help="METEOR scorer: the reference Java jar, NLTK's port, none, or auto (java when "
        "it can run, else nltk)",
    )


def _configs(args) -> tuple[TrainConfig, dict]:
    train = config_from_args(TrainConfig, args)
    # Without a file, the width (and --freeze-embeddings) may come from a checkpoint being
    # resumed, which only train_step reads: it refuses --freeze-embeddings with no vectors.
    if args.augment and not args.fine_tune_encoder:
        raise StorytellerError(
            "--augment needs --fine-tune-encoder N: cached features are computed once, so "
            "there are no photos to augment"
        )
    model = config_values(ModelConfig, args)  # overrides: vocab_size etc. come from the run
    options = parse_decoder_options(args.decoder, args.decoder_option)
    if args.attention:
        if args.decoder != "attention":
            raise StorytellerError("--attention needs --decoder attention")
        if options.get("attention", args.attention) != args.attention:
            raise StorytellerError("--attention and --decoder-option attention= disagree")
        options["attention"] = args.attention
    if options:
        model["decoder_options"] = options
    return train, model


#: ModelConfig fields that `train` sets from a flag, and the flag (the hub card reads it).
_MODEL_FLAGS = {name: flag.name for name, flag in config_flags(ModelConfig).items()}


def train_flags(train: TrainConfig, model: dict | None = None, resume: bool = True) -> list[str]:
    """The ``train`` flags that give these configs back (the inverse of :func:`_configs`), so
    a notebook can start the same training as a command (e.g. under torchrun)."""
    train_fields, defaults = config_flags(TrainConfig), TrainConfig().to_dict()
    fixed = [k for k, v in train.to_dict().items() if k not in train_fields and v != defaults[k]]
    model_fields = config_flags(ModelConfig)
    unknown = [k for k in (model or {}) if k not in model_fields and k != "decoder_options"]
    options = dict((model or {}).get("decoder_options") or {})
    if fixed or unknown:
        raise StorytellerError(
            f"the train command has no flag for {', '.join(fixed + unknown)}: "
            "leave it at its default or call storyteller.pipeline.train_step"
        )
    flags = config_flags_for(TrainConfig, {k: getattr(train, k) for k in train_fields})
    # A config that names no decoder is ModelConfig's (the seed lstm), whatever the CLI's
    # default is: say it.
    seed = ModelConfig.__dataclass_fields__["decoder"].default  # "lstm"
    flags += [] if "decoder" in (model or {}) else ["--decoder", seed]
    for key, value in (model or {}).items():
        if key == "decoder_options":
            for name, option in options.items():
                if name == "attention":
                    flags += ["--attention", str(option)]
                else:
                    flags += ["--decoder-option", f"{name}={option}"]
        else:
            flags += config_flags_for(ModelConfig, {key: value})
    return flags + ([] if resume else ["--no-resume"])


def _add_story_parser(sub) -> None:
    from .story.backends import BACKENDS
    from .story.backends.hosted import DEFAULT_MODEL, MODEL_ENV
    from .story.options import StoryOptions

    p = sub.add_parser(
        "story",
        help="caption images, then stream a story about them (or start from --caption)",
        description="Caption each image, then write a story from the first caption and "
        "continue it with each further image's caption, streaming it to stdout.",
    )
    p.add_argument("images", nargs="*", help="image files (the story follows them in order)")
    p.add_argument(
        "--caption",
        action="append",
        help="write the story from this caption instead of images (repeat for more scenes)",
    )
    _add_model_files(p, model_flag=False)  # --model is the language model here
    p.add_argument(
        "--beam",
        type=_beam_width,
        default=Strategy.beam_size,
        help="beam width for captions (1 = greedy)",
    )
    _add_length_penalty(p)
    p.add_argument("--device", help="cpu or cuda, for the captioner and a local language model")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: hosted when --base-url or HF_TOKEN is set, else offline Gemma 3 270M",
    )
    p.add_argument(
        "--model",
        help=f"language model: hosted model id (default ${MODEL_ENV} or "
        f"{DEFAULT_MODEL}), or a hub id / folder for --backend transformers",
    )
    p.add_argument(
        "--base-url",
        help="an OpenAI-compatible server for the hosted backend (TGI, vLLM, llama.cpp, Ollama); "
        "default $STORYTELLER_STORY_BASE_URL. It gets its own key from "
        "$STORYTELLER_STORY_API_KEY (HF_TOKEN goes only to Hugging Face), and no key over "
        "plain http unless it runs on this machine",
    )
    p.add_argument(
        "--timeout",
        type=flag_type(StoryOptions, "time_limit"),
        help="hosted: seconds to wait for the server (default 60); local models: seconds one "
        "turn may generate (default $STORYTELLER_STORY_TIME_LIMIT or 60)",
    )
    add_config_flags(p, StoryOptions)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m storyteller",
        description="Neural Storyteller: cache CNN features, build a vocabulary, train a "
        "captioner (lstm, attention or transformer; attention by default), caption photos "
        "(greedy / beam search), evaluate, and write a story from a caption. Run `run-all` "
        "for the whole chain.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    from .data.sample import DEFAULT_NUM_IMAGES

    p = sub.add_parser("sample", help="write the embedded sample dataset (Kaggle layout)")
    p.add_argument("--out", help="folder to write (default: the package's cache folder)")
    p.add_argument(
        "--num-images",
        type=number(int, COUNT),
        help=f"images to draw (default {DEFAULT_NUM_IMAGES})",
    )
    p.add_argument("--seed", type=number(int, SEED), default=0, help="random seed of the drawings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sample folder")

    p = sub.add_parser("features", help="extract and cache image features (resumable)")
    _add_common(p)
    p.add_argument(
        "--encoder", choices=list(ENCODERS), help="default: resnet50, or efficientnet_lite0 offline"
    )
    p.add_argument(
        "--batch-size",
        type=number(int, BATCH_SIZES),
        default=None,
        help=f"default: {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on a CPU",
    )
    p.add_argument(
        "--workers",
        type=number(int, WORKERS),
        default=None,
        help=f"image-decoding workers (default: {GPU_NUM_WORKERS} on a GPU, {CPU_NUM_WORKERS} on a CPU)",
    )
    p.add_argument(
        "--decode-on",
        choices=DECODE_CHOICES,
        default="auto",
        help="where JPEGs are decoded: auto (default: on the GPU when there is one), cpu "
        "(PIL in the workers) or device (torchvision on the --device)",
    )
    _add_layout(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")

    p = sub.add_parser(
        "vocab", help="split images 80/10/10 and build vocab.pkl from training captions"
    )
    _add_common(p)
    _add_threshold(p)
    p.add_argument(
        "--seed", type=number(int, SEED), default=0, help="random seed of the 80/10/10 split"
    )
    p.add_argument(
        "--captions",
        metavar="FILE",
        help="build from a caption file alone, without its images (e.g. Flickr8k's "
        "captions.txt); same split and vocabulary as --data on the full folder",
    )
    p.add_argument(
        "--dataset-name", help="with --captions: a name recorded in the provenance (e.g. Flickr8k)"
    )

    p = sub.add_parser("train", help="train the captioner on cached features (resumes)")
    _add_common(p)
    _add_train_args(p)
    p.add_argument(
        "--encoder",
        choices=list(ENCODERS),
        help="with --fine-tune-encoder: the encoder to fine-tune (default: the one the run's "
        "feature cache was made with)",
    )

    p = sub.add_parser(
        "evaluate", help="score the best checkpoint on the test split -> metrics.json"
    )
    _add_common(p)
    _add_eval_args(p)
    p.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        help="default: OUT/best_model.pth; or a model folder or Hub model id USER/NAME",
    )
    p.add_argument("--revision", help="a Hub model's branch, tag or commit (default: main)")

    p = sub.add_parser("caption", help="caption images: one JSON line per image")
    p.add_argument("images", nargs="+", help="image files")
    _add_model_files(p)
    p.add_argument(
        "--beam", type=_beam_width, default=Strategy.beam_size, help="beam width (1 = greedy)"
    )
    _add_length_penalty(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--attention-maps",
        metavar="DIR",
        help="also write, per image, where the model looked for each word (DIR/<image>.png; "
        "attention captioners only)",
    )

    p = sub.add_parser(
        "notebooks",
        help="run the numbered notebook series, or check/clean notebooks before committing",
    )
    p.add_argument(
        "action",
        choices=["run", "check", "clean"],
        help="run: execute the series in order; check: fail on outputs, execution counts, "
        "widget state, machine paths or long cell definitions; clean: strip outputs in place",
    )
    p.add_argument(
        "paths", nargs="*", help="notebooks (default: every notebooks/NN_*.ipynb, in order)"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="run: tiny data, 2 epochs, small model (sets STORYTELLER_SMOKE=1)",
    )
    p.add_argument(
        "--cwd",
        default=".",
        help="run: the notebooks' working folder; outputs go to CWD/outputs, or "
        "CWD/outputs/smoke with --smoke, so a smoke run never meets a real run's files "
        "(default: .)",
    )
    p.add_argument("--save", help="run: also write the executed notebooks into this folder")
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="run: set a parameters-cell value in every notebook that has it, as papermill's "
        "-p does, e.g. -p DECODER attention (VALUE is read as a Python literal, else as text)",
    )
    _add_story_parser(sub)

    p = sub.add_parser("run-all", help="the whole chain into one folder (sample data by default)")
    _add_common(p)
    p.add_argument(
        "--encoder", choices=list(ENCODERS), help="default: resnet50, or efficientnet_lite0 offline"
    )
    _add_threshold(p)
    _add_layout(p)
    _add_train_args(p)
    _add_eval_args(p)

    p = sub.add_parser(
        "deploy",
        help="assemble the Hugging Face Space folder for a run and upload it",
        description="Write the Space folder (app.py, the package, requirements.txt, "
        "best_model.pth, vocab.pkl, README with Space front matter) and upload it. The token "
        "comes from HF_TOKEN, the `hf auth login` cache, or a hidden prompt; it is never shown.",
    )
    p.add_argument(
        "--space",
        help="the Space id, USER/NAME (created if missing); needed to upload, not for --dry-run",
    )
    p.add_argument(
        "--run",
        default=DEFAULT_OUT,
        help=f"the run folder written by run-all (default: ./{DEFAULT_OUT})",
    )
    p.add_argument(
        "--dry-run", metavar="DIR", help="write the Space folder into DIR and upload nothing"
    )
    p.add_argument("--private", action="store_true", help="create the Space as private")
    p.add_argument(
        "--model",
        help="a Hub model id USER/NAME (see push): the Space loads it from the Hub instead of "
        "carrying --run's weights",
    )

    p = sub.add_parser(
        "push",
        help="upload a run's captioner as a Hugging Face Hub model (safetensors + model card)",
        description="Write the model folder (model.safetensors, config.json, vocab.json, "
        "README.md model card with metrics.json's results) and upload it. The token comes "
        "from HF_TOKEN, the `hf auth login` cache, or a hidden prompt; it is never shown.",
    )
    p.add_argument("--run", default=DEFAULT_OUT, help=f"the run folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--repo", help="the model id, USER/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the model as private")
    p.add_argument(
        "--dry-run", metavar="DIR", help="write the model folder into DIR and upload nothing"
    )

    p = sub.add_parser(
        "encoders",
        help="list the image encoders: dim, grid, input, parameters, weights, CPU img/s",
        description="Build each encoder with random weights (no download) to count its "
        "parameters and time it on the CPU; progress goes to stderr, the table to stdout.",
    )
    p.add_argument(
        "--only", nargs="+", choices=list(ENCODERS), metavar="NAME", help="these encoders only"
    )
    p.add_argument("--no-speed", action="store_true", help="skip the CPU timing")
    p.add_argument(
        "--batch-size", type=number(int, BATCH_SIZES), default=4, help="images per timed batch"
    )
    return parser


def _pipeline(data: str | None = None):
    """:mod:`storyteller.pipeline`, imported here (torch, torchvision and the rest: seconds) and
    only after a given ``--data`` folder is checked, so a mistyped one fails at once. For the
    commands whose first input is the dataset, so the message is the one the step would give."""
    if data is not None:
        from .data.captions import check_data_dir

        check_data_dir(data)
    from . import pipeline

    return pipeline


def run(args: argparse.Namespace) -> int:
    if args.command == "sample":
        from .data.sample import DEFAULT_NUM_IMAGES, default_sample_dir, generate_sample_dataset

        out = generate_sample_dataset(
            args.out or default_sample_dir(),
            args.num_images or DEFAULT_NUM_IMAGES,
            args.seed,
            overwrite=args.overwrite,
        )
        print(f"sample dataset in {out}")
    elif args.command == "features":
        pipeline = _pipeline(args.data)
        pipeline.features_step(
            args.data,
            args.out,
            args.encoder,
            args.batch_size,
            args.workers,
            args.overwrite,
            args.device,
            decode_on=args.decode_on,
            layout=args.layout or _default_layout(args.out),
        )
    elif args.command == "vocab":
        if args.captions and args.data:
            raise StorytellerError("give either --data (a dataset folder) or --captions FILE")
        if args.captions:
            _pipeline().vocab_from_captions(
                args.captions, args.out, args.threshold, args.seed, args.dataset_name
            )
        else:
            _pipeline(args.data).vocab_step(args.data, args.out, args.threshold, args.seed)
    elif args.command == "train":
        train, model = _configs(args)
        from .training.distributed import session  # torch: after the flags are checked

        pipeline = _pipeline()  # it reads the run folder before --data
        with session(args.device) as (context, device):  # several processes under torchrun
            result = pipeline.train_step(
                args.data,
                args.out,
                train,
                model,
                resume=not args.no_resume,
                device=device,
                log=print if context.is_main else _quiet,
                context=context,
                embeddings=args.embeddings,
                fine_tune_encoder=args.fine_tune_encoder,
                encoder=args.encoder,
            )
        if context.is_main:
            print(f"best validation loss {result.best_val_loss:.4f} -> {result.best_checkpoint}")
    elif args.command == "evaluate":
        _pipeline().evaluate_step(  # it reads the run folder before --data
            args.data,
            args.out,
            tuple(args.beam),
            args.length_penalty,
            args.meteor,
            args.checkpoint,
            args.device,
            revision=args.revision,
        )
    elif args.command == "caption":
        return _caption(args)
    elif args.command == "notebooks":
        return _notebooks(args)
    elif args.command == "story":
        return _story(args)
    elif args.command == "run-all":
        train, model = _configs(args)
        from .training.distributed import session  # torch: after the flags are checked

        pipeline = _pipeline(args.data)
        with session(args.device) as (context, device):  # several processes under torchrun
            pipeline.run_all(
                args.data,
                args.out,
                args.encoder,
                train,
                model,
                args.threshold,
                tuple(args.beam),
                args.length_penalty,
                args.meteor,
                device,
                resume=not args.no_resume,
                log=print if context.is_main else _quiet,
                context=context,
                layout=args.layout,
                embeddings=args.embeddings,
                fine_tune_encoder=args.fine_tune_encoder,
            )
    elif args.command == "deploy":
        from .serving.deploy import deploy_space

        deploy_space(
            args.space, args.run, private=args.private, dry_run=args.dry_run, model=args.model
        )
    elif args.command == "push":
        from .serving.hub_push import push_model

        push_model(args.run, args.repo, private=args.private, dry_run=args.dry_run)
    elif args.command == "encoders":
        return _encoders(args)
    return 0


def _encoders(args) -> int:
    import torch

    from .features.encoder_table import encoder_rows, format_table

    rows = encoder_rows(args.only, speed=not args.no_speed, batch_size=args.batch_size, log=_stderr)
    print(format_table(rows))
    if not args.no_speed:
        print(
            f"\nCPU img/s: random weights, batch {args.batch_size}, "
            f"{torch.get_num_threads()} thread(s), measured now on this machine."
        )
    skipped = [row["name"] for row in rows if "error" in row]
    if skipped:
        print(f"{len(skipped)} encoder(s) not built here: {', '.join(skipped)}", file=sys.stderr)
    return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet(_: str) -> None:
    """The log of a process other than rank 0 under torchrun: rank 0 speaks for all."""


def _load_captioner(args):
    """The captioner ``--checkpoint`` (and ``--vocab``, ``--revision``) name, on ``--device``."""
    from .inference import Captioner
    from .runtime import get_device

    return Captioner.load(args.checkpoint, args.vocab, get_device(args.device), args.revision)


def _caption_each(captioner, args, attention_maps: str | None = None):
    """The caption loop of ``caption`` and ``story``: each of ``args.images`` in turn, decoded
    with ``--beam`` and ``--length-penalty``. Yields the image's path and what came of it:
    ``{"caption": ...}`` (plus ``"attention_map"``, the figure written into the folder
    ``attention_maps``), or the exception that stopped an unreadable image (the caller says
    so)."""
    from .features.images import UnreadableImage, open_image
    from .figures.attention_maps import write_attention_maps

    decoding = {"beam_size": args.beam, "length_penalty": args.length_penalty}
    figures: set[str] = set()
    for path in args.images:
        try:
            photo = open_image(path)
            if attention_maps:
                result = captioner.caption_with_attention([photo], **decoding)[0]
                preprocessing = captioner.extractor.spec.preprocessing
                written = write_attention_maps(
                    [(path, photo, result)], preprocessing, attention_maps, figures
                )
                captioned = {"caption": result.caption, "attention_map": str(written[0])}
            else:
                captioned = {"caption": captioner([photo], **decoding)[0]}
        except UnreadableImage as exc:
            yield path, exc
        else:
            yield path, captioned


def _caption(args) -> int:
    captioner = _load_captioner(args)
    if args.attention_maps and not captioner.attends:
        raise StorytellerError(
            f"--attention-maps: the {captioner.model.name!r} captioner in {args.checkpoint} does "
            "not attend; train one with --decoder attention"
        )
    # A smoke run's captions are meaningless: each line says so, ahead of its caption.
    warning = {"warning": SMOKE_LABEL} if captioner.smoke else {}
    failures = 0
    for path, captioned in _caption_each(captioner, args, args.attention_maps):
        if isinstance(captioned, Exception):
            failures += 1
            line = {"image": path, "error": f"cannot read image: {captioned}"}
        else:
            line = {"image": path, **warning, **captioned}
        print(json.dumps(line), flush=True)
    return 1 if failures else 0


def _notebook_outputs(args, parameters: dict) -> str:
    """Where ``notebooks run`` wrote: what ``storyteller.notebook.runs.find_output_dir`` picks in
    the notebooks' working folder (``-p OUT_DIR``, ``$STORYTELLER_OUT_DIR``, else the
    default: ``outputs``, or ``outputs/smoke`` for a smoke run)."""
    from .notebook.kaggle import kaggle_root, on_kaggle
    from .notebook.runs import OUT_DIR_ENV, default_output_dir

    named = parameters.get("OUT_DIR") or os.environ.get(OUT_DIR_ENV)
    if named:
        return os.path.join(args.cwd, os.path.expanduser(str(named)))
    if on_kaggle():
        return str(kaggle_root() / "working")
    return os.path.join(args.cwd, default_output_dir(args.smoke))


def _notebooks(args) -> int:
    from .notebook import tools as nbtools

    paths = [Path(p) for p in args.paths] or nbtools.series()
    if args.action == "run":
        if args.smoke:
            os.environ["STORYTELLER_SMOKE"] = "1"  # the kernels inherit it
        parameters = {name: nbtools.parameter_value(value) for name, value in args.parameter}
        nbtools.run_series(paths, args.cwd, save_to=args.save, parameters=parameters)
        print(f"ran {len(paths)} notebook(s); outputs in {_notebook_outputs(args, parameters)}")
        return 0
    if args.action == "clean":
        for path in paths:
            print(f"{path}: {'cleaned' if nbtools.clean_notebook(path) else 'already clean'}")
        return 0
    failures = 0
    drift = nbtools.setup_cell_drift(paths)  # the set-up cell is the same in every notebook
    for path in paths:
        problems = nbtools.check_notebook(path) + ([drift[path]] if path in drift else [])
        failures += bool(problems)
        for problem in problems:
            print(f"{path}: {problem}")
    print(f"{len(paths) - failures}/{len(paths)} notebook(s) clean")
    return 1 if failures else 0


def _story(args) -> int:
    from .story import StoryOptions, StorySession, get_backend

    options = config_from_args(StoryOptions, args)  # checked before any model is loaded
    if args.base_url and args.backend in ("transformers", "offline"):
        raise StorytellerError(f"--base-url is a server for --backend hosted, not {args.backend}")
    if args.model and args.backend == "offline":
        raise StorytellerError("--model is for hosted or transformers: offline runs Gemma 3 270M")
    if args.caption and args.images:
        raise StorytellerError("give images or --caption, not both")
    if not args.caption and not args.images:
        raise StorytellerError("give one or more images, or --caption 'a dog runs on a beach'")
    captioner = _load_captioner(args) if args.images else None
    captions = _captions_for(captioner, args) if captioner is not None else args.caption

    def caption_line(caption: str) -> str:
        line = f"caption: {terminal_text(caption)}"
        return captioner.labelled(line) if captioner is not None else line

    print(caption_line(captions[0]), flush=True)  # shown even when no story can follow
    backend = get_backend(
        args.backend,
        model=args.model,
        base_url=args.base_url,
        timeout=args.timeout,
        device=args.device,
    )
    print(f"story by {backend.describe()}", file=sys.stderr, flush=True)
    session = StorySession(backend, options)
    for i, caption in enumerate(captions):
        if i:
            print(f"\n{caption_line(caption)}", flush=True)
        shown = session.story + "\n\n" if session.story else ""
        print(flush=True)
        turn = session.start(caption) if i == 0 else session.add_image(caption)
        _print_notes(session.notes)  # a caption cut to its limit: said before the story
        said = len(session.notes)
        for text in turn:
            sys.stdout.write(terminal_text(text[len(shown) :]))
            sys.stdout.flush()
            shown = text
        print(flush=True)
        _print_notes(session.notes[said:])  # a turn ended by its time limit
    return 0


#: what a terminal would obey rather than show: escape sequences (CSI: colours, clearing the
#: screen; OSC: the window title, links; two-character ones) and control characters other
#: than newline and tab
_TERMINAL_CONTROLS = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def terminal_text(text: str) -> str:
    """``text`` safe to print to a terminal: a caption word from a Hub vocabulary or a story
    server's reply cannot set the title, clear the screen or move the cursor."""
    return _TERMINAL_CONTROLS.sub("", text)


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {terminal_text(note)}", file=sys.stderr, flush=True)


def _captions_for(captioner, args) -> list[str]:
    """Caption every image first, so a bad image fails before a language model loads."""
    captions = []
    for path, captioned in _caption_each(captioner, args):
        if isinstance(captioned, Exception):
            raise StorytellerError(f"cannot read image {path}: {captioned}") from captioned
        captions.append(captioned["caption"])
    return captions


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except StorytellerError as exc:
        print(f"error: {terminal_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is not None:  # a write outside the atomic ones, which name their file
            where = full.filename or f"into {getattr(args, 'out', None) or 'the output folder'}"
            print(f"error: {disk_full_error(full, where)}", file=sys.stderr)
            return 2
        if os.environ.get("STORYTELLER_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {terminal_text(str(exc))} (set "
            "STORYTELLER_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

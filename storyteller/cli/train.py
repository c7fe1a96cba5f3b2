"""``train``: train the captioner on cached features; its flags are also ``run-all``'s."""

import argparse

from ..config import ModelConfig, TrainConfig
from ..config_cli import add_config_flags, config_from_args, config_values, flag_type
from ..decoder_options import BUILTIN_DECODERS, option_defaults, parse_decoder_options
from ..errors import StorytellerError
from ..features.encoder_specs import ENCODERS
from .common import add_common, load_pipeline


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The flags of TrainConfig's and ModelConfig's option() fields, with the few that are not
    config fields placed beside the ones they go with."""
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
        "--decoder-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one of the decoder's own options (repeat for more); " + _options_help(),
    )
    p.add_argument(
        "--no-resume", action="store_true", help="start training afresh even if last.pth exists"
    )
    # Not a model override: train_step records the number in ModelConfig.fine_tuned_blocks.
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
    """Every decoder's options with their defaults."""
    parts = []
    for name in BUILTIN_DECODERS:
        defaults = option_defaults(name)
        if defaults:
            parts.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    return "; ".join(parts)


def configs(args) -> tuple[TrainConfig, dict]:
    """The training config and the model overrides the flags ask for (the inverse of
    :func:`storyteller.config.train_flags`)."""
    train = config_from_args(TrainConfig, args)
    if args.augment and not args.fine_tune_encoder:
        raise StorytellerError(
            "--augment needs --fine-tune-encoder N: cached features are computed once, so "
            "there are no photos to augment"
        )
    model = config_values(ModelConfig, args)  # overrides: vocab_size etc. come from the run
    options = parse_decoder_options(args.decoder, args.decoder_option)
    if options:
        model["decoder_options"] = options
    return train, model


def train_in_session(args, step, *positional, **keywords):
    """``step`` (a pipeline step that trains) with the training flags, once per process under
    torchrun, rank 0 alone logging; its result and whether this process is rank 0."""
    from ..training.distributed import session  # torch: after the flags are checked

    with session(args.device) as (context, device):
        result = step(
            *positional,
            device=device,
            resume=not args.no_resume,
            log=print if context.is_main else lambda _: None,
            context=context,
            embeddings=args.embeddings,
            fine_tune_encoder=args.fine_tune_encoder,
            **keywords,
        )
    return result, context.is_main


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the captioner on cached features (resumes)")
    add_common(p)
    add_train_args(p)
    p.add_argument(
        "--encoder",
        choices=list(ENCODERS),
        help="with --fine-tune-encoder: the encoder to fine-tune (default: the one the run's "
        "feature cache was made with)",
    )
    p.set_defaults(handler=run)


def run(args) -> None:
    train, model = configs(args)
    pipeline = load_pipeline()  # it reads the run folder before --data
    result, main = train_in_session(
        args, pipeline.train_step, args.data, args.out, train, model, encoder=args.encoder
    )
    if main:
        print(f"best validation loss {result.best_val_loss:.4f} -> {result.best_checkpoint}")

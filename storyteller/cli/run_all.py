"""``run-all``: the whole chain into one run folder, with the flags of each step."""

from .common import add_common, load_pipeline, quiet
from .evaluate import add_eval_args
from .features import add_encoder, add_layout
from .train import add_train_args, configs
from .vocab import add_threshold


def add_parser(sub) -> None:
    p = sub.add_parser("run-all", help="the whole chain into one folder (sample data by default)")
    add_common(p)
    add_encoder(p)
    add_threshold(p)
    add_layout(p)
    add_train_args(p)
    add_eval_args(p)
    p.set_defaults(handler=run)


def run(args) -> None:
    train, model = configs(args)
    from ..training.distributed import session  # torch: after the flags are checked

    pipeline = load_pipeline(args.data)
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
            log=print if context.is_main else quiet,
            context=context,
            layout=args.layout,
            embeddings=args.embeddings,
            fine_tune_encoder=args.fine_tune_encoder,
        )

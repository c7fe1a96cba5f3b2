"""``run-all``: the whole chain into one run folder, with the flags of each step."""

from .common import add_common, load_pipeline
from .evaluate import add_eval_args
from .features import add_encoder, add_layout
from .train import add_train_args, configs, train_in_session
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
    pipeline = load_pipeline(args.data)
    chain = (args.data, args.out, args.encoder, train, model, args.threshold, tuple(args.beam))
    evaluation = (args.length_penalty, args.meteor)
    train_in_session(args, pipeline.run_all, *chain, *evaluation, layout=args.layout)

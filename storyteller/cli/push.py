"""``push``: upload a run's captioner as a Hugging Face Hub model."""

from ..run_folder import DEFAULT_OUT
from .common import TOKEN_SOURCES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "push",
        help="upload a run's captioner as a Hugging Face Hub model (safetensors + model card)",
        description="Write the model folder (model.safetensors, config.json, vocab.json, "
        f"README.md model card with metrics.json's results) and upload it. {TOKEN_SOURCES}",
    )
    p.add_argument("--run", default=DEFAULT_OUT, help=f"the run folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--repo", help="the model id, USER/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the model as private")
    p.add_argument(
        "--dry-run", metavar="DIR", help="write the model folder into DIR and upload nothing"
    )
    p.set_defaults(handler=run)


def run(args) -> None:
    from ..serving.hub_push import push_model

    push_model(args.run, args.repo, private=args.private, dry_run=args.dry_run)

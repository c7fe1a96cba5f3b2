"""``deploy``: assemble a run's Hugging Face Space folder and upload it."""

from ..run_folder import DEFAULT_OUT
from .common import TOKEN_SOURCES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="assemble the Hugging Face Space folder for a run and upload it",
        description="Write the Space folder (app.py, the package, requirements.txt, "
        f"best_model.pth, vocab.pkl, README with Space front matter) and upload it. {TOKEN_SOURCES}",
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
    p.set_defaults(handler=run)


def run(args) -> None:
    from ..serving.deploy import deploy_space

    deploy_space(args.space, args.run, private=args.private, dry_run=args.dry_run, model=args.model)

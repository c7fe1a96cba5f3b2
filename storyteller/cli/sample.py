"""``sample``: write the embedded sample dataset."""

from ..config import COUNT, SEED
from ..config_cli import number
from ..data.sample import DEFAULT_NUM_IMAGES, default_sample_dir, generate_sample_dataset


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="write the embedded sample dataset (Kaggle layout)")
    p.add_argument("--out", help="folder to write (default: the package's cache folder)")
    p.add_argument(
        "--num-images",
        type=number(int, COUNT),
        default=DEFAULT_NUM_IMAGES,
        help=f"images to draw (default {DEFAULT_NUM_IMAGES})",
    )
    p.add_argument("--seed", type=number(int, SEED), default=0, help="random seed of the drawings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sample folder")
    p.set_defaults(handler=run)


def run(args) -> None:
    folder = args.out or default_sample_dir()
    out = generate_sample_dataset(folder, args.num_images, args.seed, overwrite=args.overwrite)
    print(f"sample dataset in {out}")

"""``notebooks``: run the numbered notebook series, or check/clean notebooks."""

import os
from pathlib import Path


def add_parser(sub) -> None:
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
    p.set_defaults(handler=run)


def _notebook_outputs(args, parameters: dict) -> str:
    """Where ``notebooks run`` wrote, as ``notebook.runs.find_output_dir`` picks it: ``-p OUT_DIR``,
    ``$STORYTELLER_OUT_DIR``, Kaggle's working folder, else ``outputs`` (or ``outputs/smoke``)."""
    from ..notebook.kaggle import kaggle_root, on_kaggle
    from ..notebook.runs import OUT_DIR_ENV, default_output_dir

    named = parameters.get("OUT_DIR") or os.environ.get(OUT_DIR_ENV)
    if named:
        return os.path.join(args.cwd, os.path.expanduser(str(named)))
    if on_kaggle():
        return str(kaggle_root() / "working")
    return os.path.join(args.cwd, default_output_dir(args.smoke))


def run(args) -> int:
    from ..notebook import tools as nbtools

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

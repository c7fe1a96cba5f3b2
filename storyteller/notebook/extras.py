"""Notebook 05's optional requirements: which of the package's extras are missing, and
installing them without ever stopping the notebook.
"""

from __future__ import annotations

import re

from ..progress import Log

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def missing_requirements(*extras: str) -> list[str]:
    """The pip requirements of the package's ``extras`` (e.g. ``"story"``) not installed."""
    from importlib import metadata

    try:
        requirements = metadata.requires("storyteller") or []
    except metadata.PackageNotFoundError:
        return []  # run from a source folder without metadata: nothing to compare with
    missing = []
    for line in requirements:
        spec, _, marker = line.partition(";")
        extra = _EXTRA_MARKER.search(marker)
        name = _REQUIREMENT_NAME.match(spec)
        if not extra or extra.group(1) not in extras or not name:
            continue
        if name.group(1).lower() == "storyteller":
            continue  # the test extra names the package's own extras
        try:
            metadata.distribution(name.group(1))
        except metadata.PackageNotFoundError:
            if spec.strip() not in missing:  # huggingface_hub is in two extras
                missing.append(spec.strip())
    return missing


#: The extra whose requirements the Space needs here: gradio to build its folder (the README
#: names the Gradio version), huggingface_hub to push it. Everything else is for the story.
SPACE_EXTRA = "app"


def install_extras(*extras: str, log: Log = print) -> list[str]:
    """pip-install what the named extras need and is missing; return what is still missing.
    Never stops the notebook: when pip fails (Kaggle with Internet off) it says what that
    costs, no story model or (:data:`SPACE_EXTRA`) no Space, whose cell then stops."""
    import importlib
    import subprocess
    import sys

    missing = missing_requirements(*extras)
    if not missing:
        log(f"everything the {' and '.join(extras)} extra(s) need is installed")
        return []
    log(f"installing {', '.join(missing)}")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *missing],
        capture_output=True,
        text=True,
    )
    importlib.invalidate_caches()
    still = missing_requirements(*extras)
    if not still:
        return []
    lines = [line.strip() for line in (pip.stderr + pip.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines or ["no output"]
    log(f"could not install {', '.join(still)} (pip: {errors[-1]})")
    space = [r for r in still if r in missing_requirements(SPACE_EXTRA)]
    story = [r for r in still if r not in space]
    if story:
        log(
            f"  story: without {', '.join(story)} there may be no story model; the notebook goes "
            "on and keeps the caption alone (a Hugging Face token also gives the hosted model)"
        )
    if space:
        log(
            f"  Space: the Space needs {', '.join(space)} (gradio to build its folder, "
            "huggingface_hub to push it): the last cell stops without it. Turn Internet on "
            "(Kaggle: Settings -> Internet) and run this cell again"
        )
    return still

"""The one progress bar of the package.

Bars are drawn only when stderr is a terminal: redirected logs and notebook cells get no bar
(the callers print one line per epoch or step instead), so a log holds no thousands of bar
redraws. Plain ``tqdm`` rather than ``tqdm.auto`` avoids the ``IProgress not found`` warning
that ``tqdm.auto`` prints in every notebook without ipywidgets.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def is_terminal() -> bool:
    """True when stderr, where tqdm draws, is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar that is silent when stderr is not a terminal (or when ``disable``)."""
    return tqdm(iterable, disable=disable or not is_terminal(), **kwargs)

"""The one progress display: a ``tqdm`` bar on a terminal; elsewhere (a redirected log, a
notebook cell, a Kaggle log) a bar would write thousands of redraws, so one plain line every
~10% of the work (every ``EVERY_WITHOUT_TOTAL`` steps when the total is unknown) and one at
the end. Plain ``tqdm``, not ``tqdm.auto``, which warns in notebooks without ipywidgets.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

#: Where a step's one-line messages go: ``print``, a logger, a test's ``list.append``.
Log = Callable[[str], None]

LINES_WITHOUT_TERMINAL = 10  # plain lines per run of known length (plus the final one)
EVERY_WITHOUT_TOTAL = 100  # steps between plain lines when the length is unknown


def is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class LogLines:
    """The part of ``tqdm`` the package uses, as a few plain lines: one each time the count
    passes the next multiple of ``step`` after ``initial`` (a resumed run counts its own
    work only), and one at the end unless the last line showed the final count."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        lines: int = LINES_WITHOUT_TERMINAL,
        file: TextIO | None = None,
        **_bar_only: Any,  # leave, dynamic_ncols...: meaningless without a bar
    ) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.initial = iterable, total, initial
        self.desc, self.unit, self.file = desc, unit, file
        self.step = max(1, math.ceil((total - initial) / lines)) if total else EVERY_WITHOUT_TOTAL
        self.n = self.last_written = initial
        self.next_line = initial + self.step
        self.postfix = ""
        self.start = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:  # type: ignore[union-attr]
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next_line:
            self._write()
            self.next_line = self.n + self.step - (self.n - self.initial) % self.step

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed and self.n != self.last_written:
            self._write()
        self.closed = True

    def _write(self) -> None:
        elapsed = time.perf_counter() - self.start
        if self.total:
            form = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
            form += "{rate_fmt}{postfix}]"
        else:
            form = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        line = tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            unit=self.unit,
            bar_format=form,
            prefix=self.desc,
            postfix=self.postfix or None,
            initial=self.initial,
        )
        print(line, file=self.file or sys.stderr, flush=True)
        self.last_written = self.n


def progress(
    iterable: Any = None,
    *,
    disable: bool = False,
    lines: int = LINES_WITHOUT_TERMINAL,
    **kwargs: Any,
) -> tqdm | LogLines:
    """A ``tqdm`` bar on a terminal, else about ``lines`` plain lines (0: none, for callers
    that log each unit of work themselves); ``disable`` silences both."""
    if is_terminal() or disable or lines <= 0:
        return tqdm(iterable, disable=disable or not is_terminal(), **kwargs)
    return LogLines(iterable, lines=lines, **kwargs)

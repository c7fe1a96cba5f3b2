"""Keeping the notebook series honest (``python -m storyteller notebooks run/check/clean``):
run it unchanged in a fresh kernel, list what must not be committed, strip outputs, and check
that the set-up cell is the same in every notebook.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import StorytellerError

#: Longest function or class a notebook cell may define (anything longer goes in the package).
MAX_DEFINITION_LINES = 4
#: Absolute paths that belong to one machine. ``/kaggle/...`` is Kaggle's documented layout,
#: the same on every Kaggle machine, so it is allowed.
_MACHINE_PATH = re.compile(
    r"(?<![\w.~/-])(/(?:home|Users|root|work|tmp|mnt|var|opt|private|srv|media|data|usr)/"
    r"|[A-Za-z]:\\\\|file://)"
)
_MAGIC = re.compile(r"^\s*[%!]")
_PARAMETER = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=", re.MULTILINE)

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


def series(folder: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks of a folder, in order (``01_...ipynb``, ``02_...``)."""
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise StorytellerError(f"no numbered notebooks (NN_name.ipynb) in {folder}")
    return paths


def _read(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StorytellerError(f"{path} is not a readable notebook: {exc}") from None


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _tagged(cells: list) -> list[int]:
    """The indices of the cells tagged ``parameters``."""
    return [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]


def _long_definitions(code: str) -> list[str]:
    """Functions/classes in a cell longer than :data:`MAX_DEFINITION_LINES` lines."""
    code = "\n".join("" if _MAGIC.match(line) else line for line in code.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"does not parse: {exc.msg} (line {exc.lineno})"]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_DEFINITION_LINES:
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                found.append(
                    f"defines {kind} {node.name!r} over {lines} lines (at most "
                    f"{MAX_DEFINITION_LINES}): move it into the storyteller package"
                )
    return found


def check_notebook(path: str | Path) -> list[str]:
    """Everything wrong with ``path`` as a committed notebook (empty list: clean): outputs,
    execution counts, widget state, attachments, machine-specific paths, a kernel other than
    ``python3``, no ``parameters`` cell, definitions longer than :data:`MAX_DEFINITION_LINES`
    lines (the logic belongs in the package, where it is tested)."""
    nb = _read(path)
    problems = []
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"kernelspec is {kernel!r}, not 'python3'")
    if "widgets" in nb.get("metadata", {}):
        problems.append("notebook metadata holds widget state")
    cells = nb.get("cells", [])
    if not _tagged(cells):
        problems.append("no cell tagged 'parameters'")
    for i, cell in enumerate(cells):
        where = f"cell {i}"
        if cell.get("cell_type") == "code":
            if cell.get("outputs"):
                problems.append(f"{where} has outputs")
            if cell.get("execution_count") is not None:
                problems.append(f"{where} has execution_count {cell['execution_count']}")
            problems += [f"{where} {p}" for p in _long_definitions(_source(cell))]
        if "widgets" in json.dumps(cell.get("metadata", {})):
            problems.append(f"{where} metadata holds widget state")
        if cell.get("attachments"):
            problems.append(f"{where} has attachments")
        match = _MACHINE_PATH.search(_source(cell))
        if match:
            problems.append(f"{where} contains a machine-specific path ({match.group(0)}...)")
    return problems


def setup_cell(path: str | Path) -> str | None:
    """The source of a notebook's set-up cell: the first code cell after the one tagged
    ``parameters`` (None when there is no such cell)."""
    cells = _read(path).get("cells", [])
    tagged = _tagged(cells)
    after = cells[tagged[0] + 1 :] if tagged else []
    return next((_source(c) for c in after if c.get("cell_type") == "code"), None)


def setup_cell_drift(paths: Iterable[str | Path]) -> dict[Path, str]:
    """Notebooks whose set-up cell differs from the text most share (the first notebook's on
    a tie), each with its first differing line: the cell is the same everywhere, so a student
    can copy it anywhere and a fix reaches every notebook."""
    sources = {Path(p): setup_cell(p) for p in paths}
    found = [s for s in sources.values() if s is not None]
    problems = {
        p: "has no set-up cell (a code cell after the parameters cell)"
        for p, s in sources.items()
        if s is None
    }
    if not found:
        return problems
    reference = max(found, key=lambda s: (found.count(s), -found.index(s)))
    owners = ", ".join(p.name for p, s in sources.items() if s == reference)
    for path, source in sources.items():
        if source is None or source == reference:
            continue
        mine, theirs = source.splitlines(), reference.splitlines()
        pairs = zip(mine, theirs, strict=False)  # a shorter cell differs where it ends
        line = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(mine), len(theirs)))
        shown = mine[line] if line < len(mine) else "(the cell ends)"
        problems[path] = (
            f"set-up cell differs from the one in {owners} at line {line + 1}: {shown.strip()!r} "
            "(it must be the same in every notebook; per-notebook choices go in the parameters cell)"
        )
    return problems


def clean_notebook(path: str | Path) -> bool:
    """Strip outputs, execution counts and widget state from ``path`` in place; True when the
    file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("widgets", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    cleaned = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if cleaned == text:
        return False
    path.write_text(cleaned, encoding="utf-8")
    return True


def parameter_value(text: str):
    """A ``-p NAME VALUE`` value: a Python literal (``5``, ``None``, ``[1, 5]``, ``'x'``) when
    it is one, else the text itself (``attention``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parameter_names(path: str | Path) -> set[str]:
    """The names a notebook's ``parameters`` cell assigns."""
    cells = _read(path).get("cells", [])
    return {name for i in _tagged(cells) for name in _PARAMETER.findall(_source(cells[i]))}


def inject_parameters(nb, parameters: dict) -> None:
    """Papermill's convention: a cell tagged ``injected-parameters`` right after the one tagged
    ``parameters`` assigns each value, overriding the default. A name the parameters cell does
    not define is refused (a typo would otherwise be ignored silently)."""
    import nbformat

    tagged = _tagged(nb.cells)
    if not tagged:
        raise StorytellerError("the notebook has no cell tagged 'parameters' to override")
    defined = set(_PARAMETER.findall(nb.cells[tagged[0]].source))
    unknown = sorted(set(parameters) - defined)
    if unknown:
        raise StorytellerError(
            f"no parameter {', '.join(unknown)} in this notebook (its parameters: "
            f"{', '.join(sorted(defined))})"
        )
    source = "# Parameters injected for this run\n" + "".join(
        f"{name} = {value!r}\n" for name, value in parameters.items()
    )
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)


def execute_notebook(
    path: str | Path,
    cwd: str | Path,
    timeout: int | None = None,
    parameters: dict | None = None,
):
    """Run a notebook top to bottom in a fresh ``python3`` kernel working in ``cwd`` and
    return the executed copy (the file is never changed). ``timeout``: seconds a cell may run
    (None: no limit); ``parameters``: values for the parameters cell's names. A failing cell
    or a timeout is a :class:`StorytellerError` naming the notebook."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(str(path), as_version=4)
    if parameters:
        inject_parameters(nb, parameters)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        # the local kernel warns "running over TCP without encryption" at start: noise in
        # every run's log for a kernel that only this process talks to
        extra_arguments=["--log-level=ERROR"],
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        raise StorytellerError(f"{Path(path).name} failed:\n{exc}") from None
    except CellTimeoutError:
        raise StorytellerError(
            f"{Path(path).name}: a cell ran longer than {timeout} s; run it again to resume "
            "(features and training continue where they stopped)"
        ) from None
    return nb


def run_series(
    notebooks: Iterable[str | Path],
    cwd: str | Path,
    save_to: str | Path | None = None,
    timeout: int | None = None,
    log=print,
    parameters: dict | None = None,
) -> list:
    """Execute notebooks in order in ``cwd``; optionally save the executed copies.
    ``parameters`` go to every notebook whose parameters cell has the name (``DECODER`` is
    in 01, 03, 04 and 05, not in 02); a name no notebook has is refused."""
    import nbformat

    notebooks = [Path(p) for p in notebooks]
    parameters = parameters or {}
    defined = {p: parameter_names(p) for p in notebooks}
    unused = sorted(set(parameters) - set().union(*defined.values()))
    if unused:
        raise StorytellerError(f"no notebook here has a parameter {', '.join(unused)}")
    executed = []
    for path in notebooks:
        log(f"running {Path(path).name} ...")
        mine = {k: v for k, v in parameters.items() if k in defined[path]}
        nb = execute_notebook(path, cwd, timeout=timeout, parameters=mine)
        if save_to is not None:
            Path(save_to).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(Path(save_to) / Path(path).name))
        executed.append(nb)
    return executed

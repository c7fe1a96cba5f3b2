"""Progress bars write nothing when stderr is not a terminal (redirected logs, notebooks)."""

import io
import sys

from storyteller.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert sum(progress(range(200), desc="x")) == sum(range(200))
    assert stream.getvalue() == ""


def test_bar_drawn_on_a_terminal(monkeypatch):
    stream = _Tty()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress(range(5), desc="steps", file=stream)) == list(range(5))
    assert "steps" in stream.getvalue()


def test_notebook_kernel_starts_without_tcp_warning(tmp_path, capfd):
    import nbformat

    from storyteller.nbtools import execute_notebook

    path = tmp_path / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), path)
    execute_notebook(path, cwd=tmp_path, timeout=60)
    assert "without encryption" not in capfd.readouterr().err


def test_importing_the_package_in_a_kernel_prints_no_iprogress_warning(tmp_path):
    import nbformat

    from storyteller.nbtools import execute_notebook

    path = tmp_path / "imports.ipynb"
    code = "import storyteller.train, storyteller.features, storyteller.sample"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), path)
    nb = execute_notebook(path, cwd=tmp_path, timeout=120)
    assert not any("IProgress" in str(out) for out in nb.cells[0].outputs)

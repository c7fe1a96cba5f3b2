"""Progress without a terminal (redirected logs, notebooks) is a few plain lines, never bar
redraws; on a terminal it is a tqdm bar."""

import io
import sys

from storyteller.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_about_ten_plain_lines_and_one_at_the_end(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert sum(progress(range(2000), desc="drawing", unit="img")) == sum(range(2000))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 10
    assert lines[0].startswith("drawing:  10% 200/2000")
    assert lines[-1].startswith("drawing: 100% 2000/2000")


def test_final_line_when_the_total_is_not_a_multiple_of_the_step(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    list(progress(range(37), desc="x"))
    counts = [line.split()[2] for line in stream.getvalue().splitlines()]
    assert counts == [f"{n}/37" for n in (4, 8, 12, 16, 20, 24, 28, 32, 36, 37)]


def test_resumed_work_counts_from_its_start_and_updates_of_several(monkeypatch):
    """Feature extraction resumes at ``initial`` and updates one batch at a time."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress(total=1000, initial=600, desc="features", unit="img") as bar:
        for _ in range(20):
            bar.update(20)
    counts = [line.split()[2] for line in stream.getvalue().splitlines()]
    assert counts == [f"{n}/1000" for n in range(640, 1001, 40)]


def test_unknown_length_every_hundred_steps_with_postfix(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress(iter(range(250)), desc="gen")
    for step in bar:
        bar.set_postfix(loss=f"{step:.1f}")
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["100", "200", "250"]
    assert lines[-1].endswith("loss=249.0]")


def test_silent_without_a_terminal_when_asked(monkeypatch):
    """Training passes lines=0: its one line per epoch is the log's record."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress(range(50), lines=0)) == list(range(50))
    assert list(progress(range(50), disable=True)) == list(range(50))
    assert stream.getvalue() == ""


def test_bar_drawn_on_a_terminal(monkeypatch):
    stream = _Tty()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress(range(5), desc="steps", file=stream)) == list(range(5))
    assert "steps" in stream.getvalue()


def test_notebook_kernel_starts_without_tcp_warning(tmp_path, capfd):
    import nbformat

    from storyteller.notebook.tools import execute_notebook

    path = tmp_path / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), path)
    execute_notebook(path, cwd=tmp_path, timeout=60)
    assert "without encryption" not in capfd.readouterr().err


def test_importing_the_package_in_a_kernel_prints_no_iprogress_warning(tmp_path):
    import nbformat

    from storyteller.notebook.tools import execute_notebook

    path = tmp_path / "imports.ipynb"
    code = "import storyteller.training.train, storyteller.features.cache, storyteller.data.sample"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), path)
    nb = execute_notebook(path, cwd=tmp_path, timeout=120)
    assert not any("IProgress" in str(out) for out in nb.cells[0].outputs)

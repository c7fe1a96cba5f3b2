"""``storyteller/notebook/bootstrap.py``: the notebooks' installer, run by path before the
package exists.

pip itself is never run here (it would reinstall the package under test): ``subprocess.run``
is replaced by a recorder, so the tests check what would be installed, from where, and that
the running interpreter is told about the new install.
"""

from __future__ import annotations

import importlib.util
import runpy
import shutil
import site
import subprocess
from pathlib import Path

import pytest

from storyteller.notebook import bootstrap
from storyteller.notebook import tools as nbtools

BOOTSTRAP = Path(bootstrap.__file__)


@pytest.fixture
def pip(monkeypatch):
    """Record pip calls and the site folders read afterwards instead of installing."""
    calls = {"pip": [], "sitedirs": []}
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls["pip"].append(args))
    monkeypatch.setattr(site, "addsitedir", lambda folder: calls["sitedirs"].append(folder))
    return calls


def _fake_repository(root: Path) -> Path:
    """A repository as attached on Kaggle: pyproject, the package with its bootstrap, and
    things an install copy must leave out (git history, a run's outputs, weights)."""
    (root / "storyteller" / "notebook").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "storyteller"\n')
    shutil.copy(BOOTSTRAP, root / "storyteller" / "notebook" / "bootstrap.py")
    (root / "app.py").write_text("# the Space's app\n")
    for junk in (".git/HEAD", "outputs/features/features.npy", "best_model.pth"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("not copied")
    return root


def test_run_by_path_installs_a_writable_copy_of_a_read_only_repository(tmp_path, pip, monkeypatch):
    repo = _fake_repository(tmp_path / "input" / "storyteller-repo")
    real_access = bootstrap.os.access
    monkeypatch.setattr(  # Kaggle's /kaggle/input is read-only
        "os.access", lambda path, mode: Path(path) != repo and real_access(path, mode)
    )
    monkeypatch.setattr("tempfile.mkdtemp", lambda: str(tmp_path / "scratch"))
    runpy.run_path(
        str(repo / "storyteller" / "notebook" / "bootstrap.py")
    )  # what the set-up cell does

    copy = tmp_path / "scratch" / "storyteller-repo"
    assert len(pip["pip"]) == 1 and pip["pip"][0][-2:] == ["-e", str(copy)]
    assert pip["pip"][0][1:4] == ["-m", "pip", "install"]
    assert (copy / "app.py").is_file() and (
        copy / "storyteller" / "notebook" / "bootstrap.py"
    ).is_file()
    assert not any((copy / p).exists() for p in (".git", "outputs", "best_model.pth"))
    assert pip["sitedirs"], "the new install's .pth files are read into the running kernel"


def test_a_writable_checkout_is_installed_in_place(tmp_path, pip):
    repo = _fake_repository(tmp_path / "checkout")
    lines = []
    assert (
        bootstrap.install(repo / "storyteller" / "notebook" / "bootstrap.py", log=lines.append)
        == repo
    )
    assert pip["pip"][0][-2:] == ["-e", str(repo)]
    assert lines == [f"installing storyteller from {repo} (pip install -e) ..."]


def test_a_package_copy_without_its_repository_is_refused(tmp_path, pip):
    """A built Space folder holds a copy of the package (bootstrap included) but no
    pyproject.toml: one clear line, nothing installed."""
    space = tmp_path / "space"
    (space / "storyteller" / "notebook").mkdir(parents=True)
    shutil.copy(BOOTSTRAP, space / "storyteller" / "notebook" / "bootstrap.py")
    with pytest.raises(ModuleNotFoundError, match="attach the repository itself"):
        runpy.run_path(str(space / "storyteller" / "notebook" / "bootstrap.py"))
    assert pip["pip"] == []


def test_importing_it_installs_nothing(pip):
    runpy.run_path(str(BOOTSTRAP), run_name="storyteller.notebook.bootstrap")
    assert pip["pip"] == []


def test_setup_cell_without_the_package_runs_the_checkouts_bootstrap(monkeypatch):
    """The set-up cell's install part, executed in the notebooks' folder of this checkout
    with the package reported missing: it runs ../storyteller/notebook/bootstrap.py (no Kaggle input
    here), and does not when the package is there."""
    source = nbtools.setup_cell(nbtools.series()[0])
    install_part = source.split("\nfrom storyteller import")[0]
    ran = []
    monkeypatch.setattr(runpy, "run_path", ran.append)
    monkeypatch.chdir(nbtools.NOTEBOOK_DIR)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    exec(install_part, {})
    assert len(ran) == 1 and Path(ran[0]).resolve() == BOOTSTRAP.resolve()
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    exec(install_part, {})  # installed: nothing to run
    assert len(ran) == 1

"""ARCHITECTURE.md's layers hold and no module imports go round in a circle: the contracts in
pyproject.toml ([tool.importlinter]), checked by import-linter."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers_without_circles():
    check = (
        "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_architecture_names_every_layer_the_contract_checks():
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    contract = (ROOT / "pyproject.toml").read_text().split("[tool.importlinter]")[1]
    layers = contract.split("layers = [")[1].split("]")[0]
    modules = {
        m.strip(' "\n,')
        for line in layers.splitlines()
        for m in line.split(":" if ":" in line else "|")
    }
    for module in sorted(m for m in modules if m):
        name = module.removeprefix("storyteller.").replace(".", "/")
        assert f"`{name}" in architecture, f"ARCHITECTURE.md does not name {module}"

"""The import contracts in pyproject.toml ([tool.importlinter]) hold: layers, no cycles."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINT = "from importlinter.cli import lint_imports as f; raise SystemExit(f(%r, no_cache=True))"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the `ssljax` package under `root` (a subprocess: its own sys.path)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    code = LINT % str(ROOT / "pyproject.toml")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )


def test_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_and_a_cycle_break_the_contracts(tmp_path):
    shutil.copytree(ROOT / "ssljax", tmp_path / "ssljax", ignore=shutil.ignore_patterns("*.pyc"))
    with (tmp_path / "ssljax" / "models" / "norm.py").open("a") as f:
        f.write("\nfrom ssljax import engine  # noqa\n")  # models above the engine: upward
    with (tmp_path / "ssljax" / "data" / "fh.py").open("a") as f:
        f.write("\nfrom ssljax.data import masks  # noqa\n")  # masks -> fh -> masks: a cycle
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "ssljax.models is not allowed to import ssljax.engine" in result.stdout
    assert ".fh -> .masks" in result.stdout or ".masks -> .fh" in result.stdout

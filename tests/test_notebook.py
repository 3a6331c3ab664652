"""notebooks/colab_small_run.ipynb: saved clean, and its cells run top to bottom as written."""

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

from ssljax.data import registry

ROOT = Path(__file__).parent.parent
NOTEBOOK = ROOT / "notebooks" / "colab_small_run.ipynb"


def code_cells() -> list[str]:
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def test_the_notebook_is_saved_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 5
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert len({c["id"] for c in notebook["cells"]}) == len(notebook["cells"])


def test_the_notebook_runs_on_the_smoke_preset(tmp_path, monkeypatch, capsys):
    """Every code cell, in order, in one namespace; only the parameters are changed."""
    small = dataclasses.replace(
        registry.DATASETS["fashion_mnist"], memory_split="train[:512]", test_split="test[:256]"
    )
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist", small)
    monkeypatch.chdir(ROOT)
    shown = []
    display = types.ModuleType("IPython.display")
    display.display = shown.append
    display.Markdown = lambda text: ("markdown", text)
    display.Image = lambda filename: ("image", filename)
    ipython = types.ModuleType("IPython")  # IPython outside a kernel, as matplotlib sees it
    ipython.version_info, ipython.get_ipython = (9, 0, 0), lambda: None
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)

    cells = code_cells()
    namespace: dict = {}
    exec(compile(cells[0], "parameters", "exec"), namespace)
    assert (namespace["METHOD"], namespace["PRESET"]) == ("byol", "fashion_mnist")
    workdir = tmp_path / "byol_smoke"
    namespace.update(PRESET="smoke", WORKDIR=str(workdir))
    # The install cell (1) would install into this environment: it has its own test below.
    for i, source in enumerate(cells[2:], start=2):
        exec(compile(source, f"{NOTEBOOK.name} code cell {i}", "exec"), namespace)

    out = capsys.readouterr().out
    assert "trained to step 6" in out
    for command in ("knn", "linear"):
        assert f"{command} top-1:" in out
        for name in (command, f"{command}_random_init"):
            result = json.loads((workdir / "eval" / f"{name}.json").read_text())
            assert 0.0 <= result["top1"] <= 1.0
    kinds = [kind for kind, _ in shown]
    assert kinds[0] == "markdown" and "image" in kinds
    assert "byol_smoke" in shown[0][1]  # the report's table names the run
    assert all(Path(path).is_file() for kind, path in shown if kind == "image")


def _install_cell(repo: str) -> str:
    """The parameters and install cells as one script, with SSLJAX_REPO set to `repo`."""
    parameters, install = code_cells()[:2]
    assert 'SSLJAX_REPO = ""' in parameters  # never a default that points elsewhere
    return parameters.replace('SSLJAX_REPO = ""', f"SSLJAX_REPO = {repo!r}") + "\n" + install


def test_the_install_cell_installs_a_clone_as_a_package_and_runs_again(tmp_path):
    """In a throwaway venv (the shared site-packages stay untouched): the cell clones this
    checkout, installs it, and a second run (a restarted runtime) reuses both."""
    venv = tmp_path / "venv"  # pip itself comes from the system site-packages
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = str(venv / "bin" / "python")
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not this checkout

    def run(*args, cwd=content):
        return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True)

    unset = run("-c", _install_cell(""))
    assert unset.returncode == 1 and "SSLJAX_REPO is not set" in unset.stderr

    script = _install_cell(str(ROOT))
    runs = [run("-c", script) for _ in range(2)]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    clone = (content / "ssljax").resolve()
    assert f"ssljax 0.1.0 from {clone.as_uri()}" in runs[0].stdout
    assert f"ssljax is installed from {clone}" in runs[1].stdout  # no clone, no pip

    # From elsewhere, ssljax is found through the installed distribution.
    where = run("-c", "import ssljax; print(ssljax.__file__)", cwd=tmp_path)
    assert where.stdout.strip() == str(clone / "ssljax" / "__init__.py")

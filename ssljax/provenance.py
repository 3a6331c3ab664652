"""Where a run came from: `WORKDIR/run.json`, beside `config.json`.

One entry per start of `train` (the first and every resume): the time, the step it started
from, ssljax's version and git commit, the versions of jax, jaxlib, flax, optax and
orbax-checkpoint, the device kind and count and the process count. A resumed run on another
slice or another software version shows it here.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import subprocess
from typing import Any

import jax
from etils.epath import Path

PACKAGES = ("ssljax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the ssljax checkout in use (`-dirty` with local changes), or None
    when ssljax is not run from a git checkout (an installed wheel: its version says it)."""
    source = Path(__file__).parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return out.stdout.strip()


def describe(devices: list | None = None) -> dict[str, Any]:
    """This process's software and the devices the run uses."""
    devices = jax.devices() if devices is None else list(devices)
    return {
        "ssljax_commit": git_commit(),
        "versions": {package: _version(package) for package in PACKAGES},
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def record_start(workdir: str | Path, step: int, devices: list | None = None) -> None:
    """Append this start of training to `workdir/run.json` (process 0 writes)."""
    if jax.process_index() != 0:
        return
    path = Path(workdir) / "run.json"
    try:
        starts = json.loads(path.read_text())["starts"] if path.exists() else []
    except (ValueError, KeyError, TypeError):
        starts = []  # unreadable: start a new record rather than stop training
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    starts.append({"time": now, "step": int(step), **describe(devices)})
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps({"starts": starts}, indent=2) + "\n")
    tmp.replace(path)

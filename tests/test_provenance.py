"""run.json: every start of training records the software and the devices it ran on."""

import importlib.metadata
import json
import subprocess
from pathlib import Path

import jax

from ssljax import provenance

ROOT = Path(__file__).parent.parent


def test_each_start_appends_versions_commit_and_devices(tmp_path):
    provenance.record_start(tmp_path, 0)
    provenance.record_start(tmp_path, 1000, jax.devices()[:4])
    first, resumed = json.loads((tmp_path / "run.json").read_text())["starts"]
    assert (first["step"], resumed["step"]) == (0, 1000)
    assert (first["device_count"], resumed["device_count"]) == (8, 4)
    assert first["process_count"] == 1 and first["platform"] == "cpu"
    assert first["device_kind"] == jax.devices()[0].device_kind
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        assert first["versions"][package] == importlib.metadata.version(package)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert first["ssljax_commit"].removesuffix("-dirty") == head
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unreadable_record_is_started_again(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    provenance.record_start(tmp_path, 7)
    (start,) = json.loads((tmp_path / "run.json").read_text())["starts"]
    assert start["step"] == 7

"""The command line ends with one short message and a non-zero exit, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*args, tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="3"
    )
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _main(tmp_path, *overrides, config="configs/byol.py:smoke"):
    return _run(
        "main.py",
        f"--config={config}",
        f"--workdir={tmp_path / 'w'}",
        *overrides,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.batch_size=12"], "multiple of the 8 devices"),
        (["--config.optimizer.base_lr=-0.1"], "base_lr"),
        (
            ["--config.dataset.name=cifar10", "--config.dataset.data_dir=/nonexistent/tfds"],
            "tfds build",
        ),
        (["--config.dataset.name=mnist"], "fashion_mnist"),
        (["--config.method=simclr_typo"], "unknown method"),
    ],
)
def test_bad_values_end_with_a_short_message(tmp_path, overrides, message):
    result = _main(tmp_path, *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_refused_without_traceback(tmp_path):
    result = _main(tmp_path, "--config.no_such_field=1")
    assert result.returncode != 0
    assert "no_such_field" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_preset_is_refused_without_traceback(tmp_path):
    result = _main(tmp_path, config="configs/byol.py:no_such_preset")
    assert result.returncode != 0
    assert "no_such_preset" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_of_a_directory_without_a_run_is_a_short_message(tmp_path):
    result = _run("-m", "ssljax.eval", "knn", f"--workdir={tmp_path}", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "config.json" in result.stderr and "Traceback" not in result.stderr

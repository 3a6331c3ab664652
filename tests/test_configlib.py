import glob
import subprocess
import sys
from pathlib import Path

import pytest

from ssljax import configlib
from ssljax.errors import UserError

ROOT = Path(__file__).parent.parent
CONFIG_FILES = sorted(glob.glob(str(ROOT / "configs" / "*.py")))
SHARED = {"method", "preset", "seed", "batch_size", "epochs", "total_steps", "dataset"}
SHARED |= {"augment", "model", "optimizer", "online_probe", "log_every_steps", "eval"}
SHARED |= {"checkpoint_every_steps", "keep_checkpoints", "max_train_seconds"}
SHARED |= {"nonfinite", "nonfinite_max_skips"}


def test_base_config_holds_only_what_every_method_shares():
    assert set(configlib.base_config()) == SHARED


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: Path(p).stem)
def test_every_preset_loads_and_holds_only_its_methods_fields(path):
    module = configlib.load_module(path)
    for preset in module.PRESETS:
        config = configlib.load(f"{path}:{preset}")
        method = config.method
        assert config.preset == preset
        assert ("masks" in config) == method.startswith("detcon"), (path, preset)
        assert ("bn_group" in config) == (method != "m2_teacher"), (path, preset)
        has_ema = method in ("byol", "detcon_b", "m2_teacher", "sage", "moco", "dino")
        assert ("tau_base" in config) == (has_ema or method == "mocov2_star"), (path, preset)
        byol_family = method in ("byol", "detcon_b", "m2_teacher", "sage")
        assert ("predictor" in config) == byol_family, (path, preset)


def test_presets_compose_in_order():
    composed = configlib.load(str(ROOT / "configs/sslight_dino.py:fashion_mnist,baseline"))
    single = configlib.load(str(ROOT / "configs/sslight_dino.py:fashion_mnist_baseline"))
    assert composed.preset == "fashion_mnist,baseline"
    composed.preset = single.preset
    assert composed.to_json(sort_keys=True) == single.to_json(sort_keys=True)
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        configlib.load(str(ROOT / "configs/byol.py:smoke,nope"))


def test_a_preset_that_sets_a_field_the_method_does_not_read_is_refused():
    def sets_bn_group(config):
        config.bn_group = "16"

    config = configlib.load(str(ROOT / "configs/m2_teacher.py:smoke"))
    with pytest.raises(UserError, match="sets 'bn_group', which the m2_teacher method"):
        configlib.apply_preset(config, "x", {"x": sets_bn_group}, "x")


def test_cli_refuses_an_override_the_method_does_not_read_naming_the_method(tmp_path):
    command = [sys.executable, "main.py", "--config=configs/m2_teacher.py:smoke"]
    command += ["--config.bn_group=16", f"--workdir={tmp_path / 'w'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown config field 'bn_group': the m2_teacher method does not read it" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()

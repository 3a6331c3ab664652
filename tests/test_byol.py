"""BYOL's presets against the paper's numbers (Grill et al. 2020, §3.3, Table 6 and the
released `byol/configs/byol.py` presets), typed here rather than read from the configs."""

from pathlib import Path

import pytest

from ssljax import configlib
from ssljax.data import augment

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize(
    "preset, epochs, base_lr, weight_decay, tau_base",
    [("imagenet", 300, 0.3, 1e-6, 0.99), ("imagenet_1000", 1000, 0.2, 1.5e-6, 0.996)],
)
def test_imagenet_presets_hold_the_papers_numbers(preset, epochs, base_lr, weight_decay, tau_base):
    c = configlib.load(str(CONFIGS / f"byol.py:{preset}"))
    assert (c.method, c.model.name, c.dataset.image_size, c.batch_size) == (
        "byol",
        "resnet50",
        224,
        4096,
    )
    assert (c.epochs, c.optimizer.base_lr, c.optimizer.weight_decay, c.tau_base) == (
        epochs,
        base_lr,
        weight_decay,
        tau_base,
    )
    assert (c.optimizer.name, c.optimizer.warmup_epochs, c.optimizer.schedule) == (
        "lars",
        10.0,
        "cosine",
    )
    assert (c.optimizer.trust_coefficient, c.optimizer.momentum, c.optimizer.min_lr) == (
        1e-3,
        0.9,
        0.0,
    )
    assert (tuple(c.projector.hidden_dims), c.projector.out_dim) == ((4096,), 256)
    assert (tuple(c.predictor.hidden_dims), c.predictor.out_dim) == ((4096,), 256)
    assert (c.bn_group, c.model.zero_init_residual) == ("sync", "bottleneck")
    preset_ = augment.preset_from_config(c.augment)
    # Table 6: T and T' of BYOL.
    assert (preset_.s_min, preset_.p_jit, preset_.p_gray, preset_.jitter_style) == (
        0.08,
        0.8,
        0.2,
        "tf",
    )
    jitter = (preset_.brightness, preset_.contrast, preset_.saturation, preset_.hue)
    assert jitter == (0.4, 0.4, 0.2, 0.1)
    assert (preset_.p_blur, preset_.p_solarize) == ((1.0, 0.1), (0.0, 0.2))

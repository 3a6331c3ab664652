"""MoCo v2 (Chen, Fan, Girshick, He, 2020): MoCo v1 with an MLP head, blur and cosine.

Changes to configs/moco_v1.py (its docstring documents the fields): head Linear 2048 →
ReLU → Linear 128 (no BN), T = 0.2, `moco_v2` augmentations (adds blur, jitter p 0.8),
cosine LR instead of steps. Everything else is v1's: B = 256, K = 65536, m = 0.999,
SGD LR 0.03, wd 1e-4, 200 epochs, no warm-up, shuffle BN.

Presets as v1: `imagenet` (default, the 200-epoch setting of the v2 note's Table 1),
`fashion_mnist` (projector hidden 512), `smoke`.
"""

import importlib.util
from pathlib import Path

from ssljax import configlib

_spec = importlib.util.spec_from_file_location("moco_v1", Path(__file__).with_name("moco_v1.py"))
moco_v1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(moco_v1)


def moco_v2_defaults(config):
    moco_v1.moco_defaults(config)
    config.augment.preset = "moco_v2"
    config.temperature = 0.2
    config.projector.hidden_dims = (2048,)
    config.optimizer.schedule = "cosine"
    config.optimizer.decay_at = ()


def fashion_mnist(config):
    moco_v1.fashion_mnist(config)
    config.projector.hidden_dims = (512,)


PRESETS = {"imagenet": moco_v1.imagenet, "fashion_mnist": fashion_mnist, "smoke": moco_v1.smoke}


def get_config(arg=None):
    config = configlib.base_config()
    moco_v2_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="imagenet")

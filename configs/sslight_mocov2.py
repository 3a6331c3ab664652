"""MoCo-v2* with SSLight's view sampling (Tan, Saleh, Martinez, ICLR 2023, Table 2).

MoCo v2's networks and queue (configs/moco_v2.py: head Linear 2048 → ReLU → Linear 128
without BN, K = 65536, m = 0.999, T = 0.2, shuffle BN over per-device groups) trained on
multi-crop views: the key is global crop 0, the queries are global crop 1 and the locals
(`ssljax.methods.mocov2_star`).

Presets (ImageNet, 200 epochs, B = 1024, MobileNetV2; `model.name` switches the backbone):
- `recipe` (default): S_g = S_l = 0.3, LC = 128, α = 0.4.
- `baseline`: S_g = S_l = 0.14, LC = 96, α = 1/7 (the plain mean over the 7 query crops).
- `fashion_mnist` / `fashion_mnist_baseline`: configs/sslight_dino.py's small CPU run
  (ResNet-18 × 1/8, 32 px, B 64, 1 epoch) with K = 4096, m = 0.99, BN groups of 16.
- `smoke`: a few steps of a tiny network, for tests.

As the other SSLight configs: DINO's augmentations (`byol` colour, blur p (1.0, 0.1,
0.5), solarize p (0, 0.2, 0)), LARS base_lr 0.48, wd 1e-6, 10 warm-up epochs, cosine
to min LR 0.0048 (the SSLight code's `moco_cnn_sslight.yaml`). The fields are those of
configs/moco_v1.py and configs/sslight_dino.py's `multicrop`.
"""

from pathlib import Path

from ssljax import configlib

here = Path(__file__).parent
sslight = configlib.load_module(here / "sslight_dino.py")
moco_v2 = configlib.load_module(here / "moco_v2.py")


def mocov2_star_defaults(config):
    moco_v2.moco_v2_defaults(config)
    sslight.multicrop_defaults(config)
    config.method = "mocov2_star"
    config.optimizer.weight_decay_all = False
    config.moco.queue_size = 65536  # 64 batches of 1024


def fashion_mnist(config, variant="recipe"):
    sslight.small_cpu(config, variant)
    config.moco.queue_size = 4096
    config.tau_base = 0.99  # constant: a short run, the key encoder must keep up
    config.bn_group = "16"  # 4 shuffle groups of a batch of 64 on any device count


def smoke(config):
    sslight.smoke_multicrop(config)
    config.bn_group = "4"
    config.moco.queue_size = 64


PRESETS = {
    "baseline": lambda config: sslight.view_sampling(config, "baseline"),
    "recipe": lambda config: sslight.view_sampling(config, "recipe"),
    "fashion_mnist": fashion_mnist,
    "fashion_mnist_baseline": lambda config: fashion_mnist(config, "baseline"),
    "smoke": smoke,
}


def get_config(arg=None):
    config = configlib.base_config()
    mocov2_star_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="recipe")

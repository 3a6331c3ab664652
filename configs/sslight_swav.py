"""SwAV with SSLight's view sampling (Tan, Saleh, Martinez, ICLR 2023, Table 2).

Presets (ImageNet, 200 epochs, B = 1024, MobileNetV2; `model.name` switches the backbone):
- `recipe` (default): S_g = S_l = 0.3, LC = 128, α = 0.4.
- `baseline`: S_g = S_l = 0.14, LC = 96, α = 1/7.
- `fashion_mnist` / `fashion_mnist_baseline`: configs/sslight_dino.py's small CPU run
  (ResNet-18 × 1/8, 32 px, B 64, 1 epoch) with 1000 prototypes and a 512-sample queue
  from 0.25 epochs on.
- `smoke`: a few steps of a tiny network, for tests.

As configs/sslight_dino.py: 2 global crops at 224 px and 6 local crops, LARS base_lr 0.48,
wd 1e-6, 10 warm-up epochs, cosine. SwAV's augmentations: `simclr` colour jitter
(0.8, 0.8, 0.8, 0.2, p 0.8), grayscale p 0.2, blur p 0.5 on every crop, no solarize.

Fields beyond configs/sslight_dino.py's `multicrop`:
- `projector`: Linear 4096 → BN → ReLU → Linear 128 with biases (the SSLight code's
  SwAV head; SwAV's own ResNet-50 head is 2048 wide).
- `swav`: `num_prototypes` 3000, `temperature` τ 0.1, `epsilon` ε 0.05,
  `sinkhorn_iterations` 3, `crops_for_assign` 2 (codes of the first two global crops),
  `queue_length` 3840 (the SSLight code's; a multiple of the device count),
  `queue_start_epoch` 15, `freeze_prototypes_epochs` 1. (The SSLight code's
  `swav_cnn_sslight.yaml` trains SwAV with base_lr 0.3 and a warm-up from 0.075; the
  other SSLight runs' LARS 0.48 is used here, docs/fidelity.md.)
"""

from pathlib import Path

import ml_collections

from ssljax import configlib

sslight = configlib.load_module(Path(__file__).with_name("sslight_dino.py"))


def swav_defaults(config):
    sslight.multicrop_defaults(config)
    configlib.bn_group(config)
    config.method = "swav"
    config.augment.preset = "simclr"
    config.multicrop.p_blur = (0.5, 0.5, 0.5)
    config.multicrop.p_solarize = (0.0, 0.0, 0.0)
    config.projector = ml_collections.ConfigDict(
        {
            "hidden_dims": (4096,),
            "out_dim": 128,
            "use_bn": True,
            "hidden_bias": True,
            "last_bias": True,
        }
    )
    config.swav = ml_collections.ConfigDict(
        {
            "num_prototypes": 3000,
            "temperature": 0.1,
            "epsilon": 0.05,
            "sinkhorn_iterations": 3,
            "crops_for_assign": 2,
            "queue_length": 3840,
            "queue_start_epoch": 15.0,
            "freeze_prototypes_epochs": 1.0,
        }
    )


def fashion_mnist(config, variant="recipe"):
    sslight.small_cpu(config, variant)
    config.projector.hidden_dims = (512,)
    config.swav.num_prototypes = 1000
    config.swav.queue_length = 512
    config.swav.queue_start_epoch = 0.25
    config.swav.freeze_prototypes_epochs = 0.05


def smoke(config):
    sslight.smoke_multicrop(config)
    config.projector.hidden_dims = (32,)
    config.projector.out_dim = 16
    config.swav.num_prototypes = 24
    config.swav.queue_length = 64  # two batches of 32: full, and used, from the third step
    config.swav.queue_start_epoch = 0.0
    config.swav.freeze_prototypes_epochs = 0.0


PRESETS = {
    "baseline": lambda config: sslight.view_sampling(config, "baseline"),
    "recipe": lambda config: sslight.view_sampling(config, "recipe"),
    "fashion_mnist": fashion_mnist,
    "fashion_mnist_baseline": lambda config: fashion_mnist(config, "baseline"),
    "smoke": smoke,
}


def get_config(arg=None):
    config = configlib.base_config()
    swav_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="recipe")

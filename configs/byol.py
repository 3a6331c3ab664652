"""BYOL (Grill et al., 2020).

Presets:
- `imagenet` (default): the paper's 300-epoch setting. ResNet-50, B = 4096, LARS with
  base_lr 0.3 (LR = 0.3 × B/256 = 4.8), wd 1e-6, 10 warm-up epochs, cosine; τ_base 0.99;
  `byol` augmentations at 224 px. (1000 epochs: base_lr 0.2, wd 1.5e-6, τ_base 0.996.)
- `imagenet_1000`: the 1000-epoch setting.
- `fashion_mnist`: the small CPU run, tuned to show learning within 30 minutes on 2 cores
  (docs/benchmarks.md has the measured figures).
- `smoke`: a few steps of a tiny network, for tests.
"""

from ssljax import configlib


def imagenet(config):
    pass  # base_config() holds the paper's values


def imagenet_1000(config):
    config.epochs = 1000
    config.optimizer.base_lr = 0.2
    config.optimizer.weight_decay = 1.5e-6
    config.tau_base = 0.996


def fashion_mnist(config):
    configlib.small_cpu_model(config, width=0.25)
    config.dataset.name = "fashion_mnist"
    config.dataset.shuffle_buffer = 10_000
    config.batch_size = 256
    config.epochs = 10
    config.optimizer.warmup_epochs = 1.0
    config.projector.hidden_dims = (512,)
    config.projector.out_dim = 128
    config.predictor.hidden_dims = (512,)
    config.predictor.out_dim = 128
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500


PRESETS = {
    "imagenet": imagenet,
    "imagenet_1000": imagenet_1000,
    "fashion_mnist": fashion_mnist,
    "smoke": configlib.smoke,
}


def get_config(arg=None):
    return configlib.apply_preset(configlib.base_config(), arg, PRESETS, default="imagenet")

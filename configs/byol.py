"""BYOL (Grill et al., 2020).

Presets:
- `imagenet` (default): the paper's 300-epoch setting. ResNet-50, B = 4096, LARS with
  base_lr 0.3 (LR = 0.3 × B/256 = 4.8), wd 1e-6, 10 warm-up epochs, cosine; τ_base 0.99;
  `byol` augmentations at 224 px. (1000 epochs: base_lr 0.2, wd 1.5e-6, τ_base 0.996.)
- `imagenet_1000`: the 1000-epoch setting.
- `fashion_mnist`: the small CPU run (ResNet-18 × 1/8, 32 px, B 128, 3 epochs), tuned to
  beat a random-init network in k-NN within 30 minutes on 2 cores (docs/benchmarks.md).
- `smoke`: a few steps of a tiny network, for tests.
"""

from ssljax import configlib


def imagenet(config):
    pass  # configlib.byol_fields() holds the paper's values


def imagenet_1000(config):
    config.epochs = 1000
    config.optimizer.base_lr = 0.2
    config.optimizer.weight_decay = 1.5e-6
    config.tau_base = 0.996


def fashion_mnist(config):
    """ResNet-18 at width 1/8 (8 base channels) with the 32-px stem, 3 epochs.

    Tuned on the 2-core CPU: width 1/4 trains ~2.7× slower, and BYOL needs updates more
    than width here. Batch 128 with LARS base_lr 1.0 (LR 0.5) and wd 1e-5 follow the
    common CIFAR BYOL settings; heads 512 → 128. docs/benchmarks.md has the figures.
    """
    configlib.small_cpu_model(config, width=0.125)
    config.dataset.name = "fashion_mnist"
    config.dataset.shuffle_buffer = 10_000
    config.batch_size = 128
    config.epochs = 3
    config.optimizer.base_lr = 1.0
    config.optimizer.weight_decay = 1e-5
    config.optimizer.warmup_epochs = 0.5
    config.projector.hidden_dims = (512,)
    config.projector.out_dim = 128
    config.predictor.hidden_dims = (512,)
    config.predictor.out_dim = 128
    config.log_every_steps = 100
    config.checkpoint_every_steps = 500


PRESETS = {
    "imagenet": imagenet,
    "imagenet_1000": imagenet_1000,
    "fashion_mnist": fashion_mnist,
    "smoke": configlib.smoke,
}


def get_config(arg=None):
    config = configlib.base_config()
    configlib.byol_fields(config)
    return configlib.apply_preset(config, arg, PRESETS, default="imagenet")

"""SimCLR (Chen et al., 2020).

Presets:
- `imagenet` (default): the paper's default setting (§2.3), used for its ablations:
  ResNet-50, B = 4096, 100 epochs, LARS with base_lr 0.3 (LR = 0.3 × B/256 = 4.8),
  wd 1e-6, 10 warm-up epochs, cosine; sync BN; `simclr` augmentations at 224 px.
- `imagenet_1000`: the same for 1000 epochs (§6, the paper's headline linear-eval result).
- `fashion_mnist`: the small CPU run (ResNet-18 ×0.125, small stem, 32 px, B = 256,
  3 epochs, projector 512 → 128): 150–190 images/s measured on 2 busy cores, so
  16–20 minutes there, less on idle ones (docs/benchmarks.md has the figures).
- `smoke`: a few steps of a tiny network, for tests.

Fields beyond `configlib.base_config()`:
- `temperature`: τ of NT-Xent (0.1).
- `projector`: `hidden_dims` (2048,), `out_dim` 128, `use_bn` (BN after the hidden
  Linear), `hidden_bias` False (the reference drops the bias before BN), `last_bias`
  False: the paper's g(h) = W2 σ(W1 h) with one 2048-wide hidden layer (§2.1), as the
  SimCLR v1 code's `projection_head` (num_nlh_layers=1). Its output BN (scale only) is
  not reproduced (docs/fidelity.md). `hidden_dims=(2048, 2048)` gives SimCLR v2's deeper
  head. DetCon_S uses this head (DetCon A.2).
"""

import ml_collections

from ssljax import configlib


def simclr_defaults(config):
    config.method = "simclr"
    config.augment.preset = "simclr"
    config.model.zero_init_residual = "all"  # SimCLR's resnet.py: init_zero in every block
    config.bn_group = "sync"
    config.batch_size = 4096
    config.epochs = 100
    config.temperature = 0.1
    config.projector = ml_collections.ConfigDict(
        {
            "hidden_dims": (2048,),
            "out_dim": 128,
            "use_bn": True,
            "hidden_bias": False,
            "last_bias": False,
        }
    )
    config.optimizer.name = "lars"
    config.optimizer.base_lr = 0.3
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_epochs = 10.0
    config.optimizer.schedule = "cosine"


def imagenet(config):
    pass  # simclr_defaults() holds the paper's values


def imagenet_1000(config):
    config.epochs = 1000


def fashion_mnist(config):
    configlib.small_cpu_model(config, width=0.125)
    config.dataset.name = "fashion_mnist"
    config.dataset.shuffle_buffer = 10_000
    config.batch_size = 256
    config.epochs = 3
    config.optimizer.warmup_epochs = 0.5
    config.projector.hidden_dims = (512,)
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500


def smoke(config):
    configlib.smoke(config)


PRESETS = {
    "imagenet": imagenet,
    "imagenet_1000": imagenet_1000,
    "fashion_mnist": fashion_mnist,
    "smoke": smoke,
}


def get_config(arg=None):
    config = configlib.base_config()
    simclr_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="imagenet")

"""MoCo v1 (He et al., 2020): momentum key encoder, a queue of keys, shuffle BN.

Presets:
- `imagenet` (default): the paper's ImageNet-1M setting (§4): ResNet-50, B = 256,
  K = 65536, m = 0.999, T = 0.07, linear 128-d head; SGD momentum 0.9, LR 0.03
  (base_lr 0.03 × B/256), wd 1e-4 on every parameter, no warm-up, 200 epochs with the LR
  ×0.1 at epochs 120 and 160; per-device BN (32 images a device on 8 devices) with
  shuffle BN for the keys; `moco_v1` augmentations at 224 px.
- `fashion_mnist`: the small CPU run (ResNet-18 ×0.125, small stem, 32 px, B = 256,
  3 epochs, K = 4096, m = 0.99, LR 0.06, BN groups of 32 images): 170–190 images/s
  measured on 2 busy cores, so 16–18 minutes there, less on idle ones. m and the LR are
  moved for a run this short (the key encoder must keep up; the paper's LR is for 200
  epochs); neither was tuned.
- `smoke`: a few steps of a tiny network (B = 32, K = 64, BN groups of 4), for tests.

Fields beyond `configlib.base_config()`:
- `temperature`: T of the InfoNCE logits (0.07).
- `moco.queue_size`: K, the number of negative keys; a multiple of `batch_size`.
- `key_bn`: 'shuffle' (default) | 'local' | 'sync', the key encoder's BN statistics (see
  `ssljax.methods.moco`); `bn_group` ('local' or a group size n) sets the BN groups of the
  query encoder, and of the key encoder for 'shuffle' and 'local'.
- `tau_base` with `tau_schedule='constant'`: the key encoder's momentum m (0.999).
- `projector`: the head, `hidden_dims` () (v1: one Linear), `out_dim` 128, `use_bn`
  False, `hidden_bias`, `last_bias` True (PyTorch Linear layers have biases).
- `optimizer.weight_decay_all`: True decays biases and BN parameters as well, as
  PyTorch's SGD in the reference does.
"""

import ml_collections

from ssljax import configlib


def moco_defaults(config):
    """MoCo v1 on ImageNet; MoCo v2 (configs/moco_v2.py) changes a few of these."""
    config.method = "moco"
    config.augment.preset = "moco_v1"
    config.model.zero_init_residual = "none"  # torchvision's resnet50() default
    config.batch_size = 256
    config.epochs = 200
    config.temperature = 0.07
    config.moco = ml_collections.ConfigDict({"queue_size": 65536})
    config.key_bn = "shuffle"
    config.bn_group = "local"
    config.tau_base = 0.999
    config.tau_schedule = "constant"
    config.projector = ml_collections.ConfigDict(
        {"hidden_dims": (), "out_dim": 128, "use_bn": False, "hidden_bias": True, "last_bias": True}
    )
    config.optimizer.name = "sgd"
    config.optimizer.base_lr = 0.03
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_all = True
    config.optimizer.momentum = 0.9
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.schedule = "steps"
    config.optimizer.decay_at = (0.6, 0.8)  # epochs 120 and 160 of 200
    config.optimizer.decay_factor = 0.1


def imagenet(config):
    pass  # moco_defaults() holds the paper's values


def fashion_mnist(config):
    configlib.small_cpu_model(config, width=0.125)
    config.dataset.name = "fashion_mnist"
    config.dataset.shuffle_buffer = 10_000
    config.batch_size = 256
    config.epochs = 3
    config.optimizer.base_lr = 0.06
    config.bn_group = "32"  # 8 groups of 32, the paper's 8 GPUs × 32, on any device count
    config.moco.queue_size = 4096
    config.tau_base = 0.99  # a short run: the key encoder must keep up
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500


def smoke(config):
    hidden_dims = config.projector.hidden_dims
    configlib.smoke(config)
    config.projector.hidden_dims = (64,) if hidden_dims else ()
    config.bn_group = "4"  # 8 groups of 4 on any device count
    config.moco.queue_size = 64


PRESETS = {"imagenet": imagenet, "fashion_mnist": fashion_mnist, "smoke": smoke}


def get_config(arg=None):
    config = configlib.base_config()
    moco_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="imagenet")

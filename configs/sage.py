"""SaGe (Xu et al. 2021): BYOL + a decoder + a frozen, label-free evaluator.

SaGe trains in two stages: first a label-free evaluator (our BYOL, same preset), then
SaGe with it, loaded from that run's --workdir:

    python main.py --config=configs/byol.py:fashion_mnist --workdir=runs/byol_fm
    python main.py --config=configs/sage.py:fashion_mnist --workdir=runs/sage_fm \\
        --config.evaluator.checkpoint=runs/byol_fm
    python -m ssljax.eval perceptual --workdir=runs/sage_fm

A run without an evaluator checkpoint, or with one of another architecture than
`evaluator.model` / `evaluator.projector`, stops before training and says this.
`--config.evaluator.checkpoint=random` is the paper's random-evaluator ablation (an
untrained evaluator, BN scales 1); setting every evaluator level of `generation` to 0 is
the pixel-MSE-only ablation, which needs no evaluator.

Presets:
- `imagenet` (default): BYOL's 300-epoch setting (ResNet-50, B = 4096, LARS base_lr 0.3 →
  LR 4.8, wd 1e-6, 10 warm-up epochs, cosine, τ_base 0.99); decoder 7×7 → 1×1×512 →
  7×7×256 → up-blocks 512, 256, 128, 64, 32 → 224×224×3, Adam 0.048 (base_lr 0.003 ×
  B/256) constant after the warm-up; λ = 1; evaluator a ResNet-50 BYOL checkpoint.
- `fashion_mnist`: configs/byol.py's CPU run (ResNet-18 × 1/8, 32 px, B 128, 3 epochs),
  decoder 4×4 → 1×1×128 → 4×4×64 → up-blocks 64, 32, 16 → 32×32×3; evaluator the same
  network trained by `configs/byol.py:fashion_mnist` (the two stages above).
- `smoke`: a few steps of a tiny network, for tests and the CLI check; its evaluator is
  'random' so that it runs on its own (tests pass a `configs/byol.py:smoke` run instead).

Fields beyond `configlib.base_config()`:
- `generation_weight`: λ in L_BYOL + λ·L_G: 1, as the reference code (`SaGe_Net.
  forward_train` adds the weighted L_G terms to the BYOL loss); the paper's appendix says
  0.1 (docs/fidelity.md).
- `generation.{pixels, projection, layer4, layer3, layer2}`: weights of L_G's terms
  (reference: 1/10, 1/10, 1/30, 1/30, 1/30).
- `decoder.{bottleneck_dim, stem_channels, channels}`: the decoder's widths; the number of
  up-blocks follows from the encoder's grid (`ssljax.models.decoder`).
- `optimizer.decoder.{name, base_lr, warmup_epochs, b1, b2, eps}`: the decoder's Adam.
- `evaluator.checkpoint`: the --workdir of the evaluator's run, or 'random';
  `evaluator.step`: its checkpoint (default: newest); `evaluator.model`, `.projector`:
  the architecture it must have (default: this preset's encoder and BYOL projector);
  `evaluator.bn`: 'batch' (default: the statistics of each batch it is shown, as the
  reference's evaluator, which sits in the train-mode model) or 'running' (its
  checkpoint's running statistics, inference mode).
"""

import copy
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from ssljax import configlib

byol = configlib.load_module(Path(__file__).with_name("byol.py"))


def sage_defaults(config):
    configlib.byol_fields(config)
    config.method = "sage"
    config.augment.jitter_style = "torchvision"  # OpenSelfSup's torchvision ColorJitter
    config.model.zero_init_residual = "none"  # OpenSelfSup ResNet: zero_init_residual=False
    config.generation_weight = 1.0
    config.generation = ml_collections.ConfigDict(
        {"pixels": 0.1, "projection": 0.1, "layer4": 1 / 30, "layer3": 1 / 30, "layer2": 1 / 30}
    )
    config.decoder = ml_collections.ConfigDict(
        {"bottleneck_dim": 512, "stem_channels": 256, "channels": (512, 256, 128, 64, 32)}
    )
    config.optimizer.decoder = ml_collections.ConfigDict(
        {
            "name": "adam",
            "base_lr": 0.003,
            "warmup_epochs": 10.0,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
        }
    )
    config.evaluator = ml_collections.ConfigDict()
    config.evaluator.checkpoint = config_dict.placeholder(str)
    config.evaluator.step = config_dict.placeholder(int)
    # 'batch': the evaluator normalises with each batch's statistics, as the reference's
    # evaluator (a sub-module of the model in train mode); 'running': its checkpoint's.
    config.evaluator.bn = "batch"


def imagenet(config):
    pass  # configlib.byol_fields() and sage_defaults() hold the paper's values


def fashion_mnist(config):
    byol.fashion_mnist(config)
    config.decoder.bottleneck_dim = 128
    config.decoder.stem_channels = 64
    config.decoder.channels = (64, 32, 16)
    config.optimizer.decoder.warmup_epochs = config.optimizer.warmup_epochs


def smoke(config):
    """Runs on its own with the random evaluator; tests load a `byol.py:smoke` run instead."""
    configlib.smoke(config)
    config.evaluator.checkpoint = "random"
    config.decoder.bottleneck_dim = 32
    config.decoder.stem_channels = 16
    config.decoder.channels = (16, 8, 8)
    config.optimizer.decoder.warmup_epochs = 0.0


PRESETS = {"imagenet": imagenet, "fashion_mnist": fashion_mnist, "smoke": smoke}


def get_config(arg=None):
    config = configlib.base_config()
    sage_defaults(config)
    config = configlib.apply_preset(config, arg, PRESETS, default="imagenet")
    # The evaluator is this preset's BYOL network unless told otherwise.
    config.evaluator.model = copy.deepcopy(config.model)
    config.evaluator.projector = copy.deepcopy(config.projector)
    return config

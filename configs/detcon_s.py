"""DetCon_S (Hénaff et al., 2021): SimCLR's network with the contrastive detection loss.

Presets:
- `imagenet` (default): the paper's fully-trained ImageNet setting (§4.1, A.2, A.3):
  ResNet-50 at 224 px, 1000 epochs, B = 4096, LARS with base_lr 0.3 (LR = 0.3 × B/256 =
  4.8), wd 1e-6, 10 warm-up epochs, cosine; sync BN; `simclr` augmentations (A.1); FH
  masks scale 1000, σ 0.8, min_size 1000 from the cache (§3.2, docs/fidelity.md), pooled to the
  7×7 layer4 grid, 16 ids per image; T = 0.1.
- `coco`: COCO pre-training (§4.2–4.3, A.3): FH scales {500, 1000, 1500} with min_size =
  scale, piecewise-constant LR ×0.1 at 96% and 98% of training; the paper sweeps
  324–5184 epochs (Fig. 6), we take the longest.
  Data: the `coco` dataset (tfds `coco/2017`, train split). The paper's ground-truth
  mask ablation: `--config.dataset.name=coco_panoptic --config.masks.kind=ground_truth`
  (COCO's panoptic segments, tfds `coco/2017_panoptic`).
- `fashion_mnist`: the small CPU run, configs/simclr.py's (ResNet-18 × 1/8, small stem,
  32 px, B 256, 3 epochs) plus FH masks computed in the pipeline with small-image
  parameters (scale 100, σ 0.8, min_size 20 on the 28-px originals), 4×4 grid.
- `smoke`: a few steps of a tiny network, masks computed in the pipeline, for tests.

Fields beyond `configlib.base_config()`:
- `temperature`: τ of the contrastive detection loss (0.1; latents at norm 1/√τ).
- `masks.*` (documented in `configlib.detcon_masks`): `kind='fh'`, `fh_scales=(1000,)`,
  `fh_sigma=0.8`, `fh_min_size=1000`, `grid=7`, `num_samples=16`, `sampling=independent`
  (each view draws its ids among its own segments, as the reference; `shared`: one draw
  among the segments both views show).
- `projector`: `hidden_dims` (2048,), `out_dim` 128: the paper's "two-layer MLP whose
  hidden and output dimensions are 2048 and 128" (A.2; its FLOP count, 2048×2048 +
  2048×128, confirms one hidden layer), `use_bn` (BN after the hidden Linear),
  `hidden_bias` False and `last_bias` False: configs/simclr.py's head, as A.2 says.
"""

from pathlib import Path

import ml_collections

from ssljax import configlib

detcon_b = configlib.load_module(Path(__file__).with_name("detcon_b.py"))


def detcon_s_defaults(config):
    config.method = "detcon_s"
    config.augment.preset = "simclr"
    config.model.zero_init_residual = "all"  # SimCLR's network (DetCon §3.1)
    configlib.bn_group(config, "sync")
    config.batch_size = 4096
    config.epochs = 1000
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
    configlib.detcon_masks(config)


def imagenet(config):
    pass  # detcon_s_defaults() holds the paper's values


coco = detcon_b.coco  # the same COCO masks and schedule


def fashion_mnist(config):
    """configs/simclr.py's `fashion_mnist` run with masks: ResNet-18 × 1/8 at 32 px (4×4
    layer4 grid), B 256, 3 epochs, projector 512 → 128; FH on the 28-px originals with
    scale 100, σ 0.8, min_size 20 (as configs/detcon_b.py)."""
    configlib.small_cpu_model(config, width=0.125)
    config.dataset.name = "fashion_mnist"
    config.dataset.shuffle_buffer = 10_000
    config.batch_size = 256
    config.epochs = 3
    config.optimizer.warmup_epochs = 0.5
    config.projector.hidden_dims = (512,)
    configlib.small_image_masks(config)
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500


def smoke(config):
    configlib.smoke(config)
    configlib.small_image_masks(config)


PRESETS = {
    "imagenet": imagenet,
    "coco": coco,
    "fashion_mnist": fashion_mnist,
    "smoke": smoke,
}


def get_config(arg=None):
    config = configlib.base_config()
    detcon_s_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="imagenet")

"""DetCon_B (Hénaff et al., 2021): BYOL's networks with the contrastive detection loss.

Presets:
- `imagenet` (default): the paper's 1000-epoch ImageNet setting (§4.1, A.2, A.3):
  ResNet-50 at 224 px, B = 4096, LARS with base_lr 0.2 (LR = 0.2 × B/256 = 3.2),
  wd 1.5e-6, 10 warm-up epochs, cosine; τ_base 0.996; `byol` augmentations (A.1);
  FH masks scale 1000, σ 0.8, min_size 1000 from the cache (§3.2, docs/fidelity.md), pooled to
  the 7×7 layer4 grid, 16 ids per image; T = 0.1.
- `coco`: COCO pre-training (§4.2, A.3): FH scales {500, 1000, 1500} with min_size =
  scale, piecewise-constant LR ×0.1 at 96% and 98% of training. The paper pre-trains
  DetCon_S, not DetCon_B, on COCO and sweeps 324–5184 epochs; we take the longest.
  Data: the `coco` dataset (tfds `coco/2017`, train split). The paper's ground-truth
  mask ablation: `--config.dataset.name=coco_panoptic --config.masks.kind=ground_truth`
  (COCO's panoptic segments, tfds `coco/2017_panoptic`).
- `fashion_mnist`: the small CPU run, configs/byol.py's (ResNet-18 × 1/8, small stem,
  32 px, B 128, 3 epochs) plus FH masks computed in the pipeline with small-image
  parameters (scale 100, σ 0.8, min_size 20 on the 28-px originals), 4×4 grid.
- `smoke`: a few steps of a tiny network, masks computed in the pipeline, for tests.

Fields beyond `configlib.base_config()`:
- `temperature`: τ of the contrastive detection loss (0.1; latents at norm 1/√τ).
- `masks.*` (documented in `configlib.detcon_masks`): `kind='fh'`, `fh_scales=(1000,)`,
  `fh_sigma=0.8`, `fh_min_size=1000`, `grid=7`, `num_samples=16`, `sampling=independent`
  (each view draws its ids among its own segments, as the reference; `shared`: one draw
  among the segments both views show).
- `projector`, `predictor`: BYOL's heads, Linear 4096 → BN → ReLU → Linear 256 (A.2).
"""

from pathlib import Path

from ssljax import configlib

byol = configlib.load_module(Path(__file__).with_name("byol.py"))


def detcon_b_defaults(config):
    configlib.byol_fields(config)
    config.method = "detcon_b"
    config.augment.preset = "byol"
    config.batch_size = 4096
    config.epochs = 1000
    config.temperature = 0.1
    config.tau_base = 0.996
    config.projector.hidden_dims = (4096,)
    config.projector.out_dim = 256
    config.predictor.hidden_dims = (4096,)
    config.predictor.out_dim = 256
    config.optimizer.name = "lars"
    config.optimizer.base_lr = 0.2
    config.optimizer.weight_decay = 1.5e-6
    config.optimizer.warmup_epochs = 10.0
    config.optimizer.schedule = "cosine"
    configlib.detcon_masks(config)


def imagenet(config):
    pass  # detcon_b_defaults() holds the paper's values


def coco(config):
    config.dataset.name = "coco"
    config.epochs = 5184
    config.masks.fh_scales = (500, 1000, 1500)
    config.masks.fh_min_size = 0  # 0: min_size = scale, for each scale
    config.optimizer.schedule = "steps"
    config.optimizer.decay_at = (0.96, 0.98)
    config.optimizer.decay_factor = 0.1


def fashion_mnist(config):
    """configs/byol.py's `fashion_mnist` run with masks, for a same-steps comparison:
    ResNet-18 × 1/8 at 32 px (4×4 layer4 grid), B 128, 3 epochs, LARS base_lr 1.0, wd 1e-5,
    τ_base 0.99, heads 512 → 128; FH masks for small images (`configlib.small_image_masks`)."""
    byol.fashion_mnist(config)
    config.tau_base = 0.99
    configlib.small_image_masks(config)


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
    detcon_b_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="imagenet")

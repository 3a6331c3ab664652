"""The backbone named by `config.model.name`: ResNets, MobileNetV2 and ViTs behind one call.

Every backbone maps [B, H, W, 3] images in [0, 1] to a dict with 'pooled' [B, C] and the
dense map 'layer4' [B, h, w, C], and has `num_features` and `feature_grid(image_size)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from ssljax.errors import UserError
from ssljax.models.mobilenet_v2 import build_mobilenet_v2
from ssljax.models.norm import BNGroup
from ssljax.models.resnet import RESNET_DEPTHS, build_resnet
from ssljax.models.vit import VIT_SIZES, build_vit
from ssljax.sharding import DATA_AXIS

BACKBONES = (*RESNET_DEPTHS, "mobilenet_v2", *VIT_SIZES)


def without_drop_path(backbone: nn.Module) -> nn.Module:
    """`backbone` with a ViT's stochastic depth off (the same parameters)."""
    if getattr(backbone, "drop_path_rate", 0.0):
        return backbone.clone(drop_path_rate=0.0)
    return backbone


def build_backbone(
    model: ml_collections.ConfigDict,
    image_size: int,
    bn_group: BNGroup = "sync",
    axis_name: str | None = DATA_AXIS,
    drop_path: bool = True,
) -> nn.Module:
    """The backbone of `model` (a config's `model` field) for `image_size`-px images.

    `bn_group` and `axis_name` choose the batch-norm statistics of the conv nets; a ViT has
    no batch norm. `image_size` sizes a ViT's position-embedding table. A ViT gets
    `model.drop_path_rate` (stochastic depth in training) unless `drop_path` is False (DINO's
    teacher is built without it).
    """
    dtype = jnp.dtype(model.dtype)
    drop_path_rate = model.get("drop_path_rate", 0.0)
    if drop_path_rate and model.name not in VIT_SIZES:
        raise UserError(
            f"--config.model.drop_path_rate={drop_path_rate}: stochastic depth is "
            f"implemented for the ViTs only, not {model.name}; set it to 0"
        )
    bn = {"bn_group": bn_group, "axis_name": axis_name, "bn_momentum": model.bn_momentum}
    if model.name in RESNET_DEPTHS:
        return build_resnet(
            model.name,
            width=model.width,
            small_stem=model.small_stem,
            dtype=dtype,
            zero_init_residual=model.get("zero_init_residual", "all"),
            **bn,
        )
    if model.name == "mobilenet_v2":
        return build_mobilenet_v2(width=model.width, small_stem=model.small_stem, dtype=dtype, **bn)
    if model.name in VIT_SIZES:
        return build_vit(
            model.name,
            image_size=image_size,
            patch_size=model.patch_size,
            width=model.width,
            depth=model.depth,
            dtype=dtype,
            drop_path_rate=drop_path_rate if drop_path else 0.0,
        )
    raise UserError(f"unknown model.name {model.name!r}; choose one of {', '.join(BACKBONES)}")

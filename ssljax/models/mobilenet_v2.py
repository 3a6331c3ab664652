"""MobileNetV2 (Sandler et al., 2018) in the torchvision layout, returning dense feature maps.

Inverted residual blocks: a 1×1 expansion conv (×t), a 3×3 depth-wise conv carrying the
stride, and a linear 1×1 projection, each followed by BN (ReLU6 after the first two); a
block whose input and output shapes agree adds its input. After the last block a 1×1 conv
widens to 1280 channels (``1280 × max(1, width)``). The layout follows torchvision's
``mobilenetv2.py``: `_make_divisible` rounding of every width to a multiple of 8, He-normal
(fan_out) conv weights without bias, explicit padding 1 on the 3×3 convs (a stride-2 layer
maps n pixels to ceil(n / 2)). Without its classifier it holds 2,223,872 parameters.

As in `ssljax.models.resnet`: images arrive in [0, 1] and are normalised inside the model;
``small_stem`` (for 32-pixel images) makes the stem conv and the first stride-2 stage
stride 1, so the network downsamples 8× instead of 32×, as ResNet's small stem does.

Outputs: ``'layer1'..'layer4'`` at strides 4, 8, 16, 32 (the ends of the 24-, 32- and
96-channel stages and the final 1280-channel map, the maps a detection FPN reads) and
``'pooled'``, the global average of 'layer4'. Depth-wise convs are the modules named
``depthwise_conv``, which LARS leaves out of its trust ratio (`ssljax.optim`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.errors import UserError
from ssljax.models.norm import BatchNorm, BNGroup, parse_bn_group
from ssljax.models.resnet import conv
from ssljax.sharding import DATA_AXIS

# (expansion t, output channels c, blocks n, stride s of the first block): the paper's Table 2.
INVERTED_RESIDUAL_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_FEATURES = 32
LAST_FEATURES = 1280
# The stage whose output each dense map is; 'layer4' is the last 1×1 conv after stage 6.
LAYER_STAGES = {"layer1": 1, "layer2": 2, "layer3": 4, "layer4": 6}
LAYERS = tuple(LAYER_STAGES)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: the nearest multiple of `divisor` (at least
    `divisor`), moved up one step if rounding lost more than 10% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """1×1 expand (skipped when t = 1) → 3×3 depth-wise → linear 1×1 project (+ input)."""

    features: int
    stride: int
    expansion: int
    bn: Callable[..., nn.Module]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        hidden = round(x.shape[-1] * self.expansion)
        y = x
        if self.expansion != 1:
            y = conv(hidden, 1, 1, "expand_conv", self.dtype)(y)
            y = jax.nn.relu6(self.bn(name="expand_bn")(y, train=train))
        y = conv(hidden, 3, self.stride, "depthwise_conv", self.dtype, groups=hidden)(y)
        y = jax.nn.relu6(self.bn(name="depthwise_bn")(y, train=train))
        y = conv(self.features, 1, 1, "project_conv", self.dtype)(y)
        y = self.bn(name="project_bn")(y, train=train)
        if self.stride == 1 and x.shape[-1] == self.features:
            return x + y
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 returning ``{'layer1'..'layer4': [B, h, w, C], 'pooled': [B, C]}``.

    `bn` is a factory (e.g. ``functools.partial(BatchNorm, group='sync')``) accepting
    ``name``. Feature maps are in `dtype`, 'pooled' in float32, parameters in float32.
    """

    width: float = 1.0
    small_stem: bool = False
    bn: Callable[..., nn.Module] = BatchNorm
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    dtype: Any = jnp.float32

    @property
    def stem_width(self) -> int:
        return make_divisible(STEM_FEATURES * self.width)

    @property
    def stage_strides(self) -> tuple[int, ...]:
        strides = [stride for *_, stride in INVERTED_RESIDUAL_STAGES]
        if self.small_stem:
            strides[1] = 1
        return tuple(strides)

    @property
    def layer_features(self) -> dict[str, int]:
        """Channels of each dense map."""
        features = {
            layer: make_divisible(INVERTED_RESIDUAL_STAGES[stage][1] * self.width)
            for layer, stage in LAYER_STAGES.items()
        }
        features["layer4"] = self.num_features
        return features

    @property
    def num_features(self) -> int:
        """Dimension of 'pooled' (and channels of 'layer4'): 1280 for width ≤ 1."""
        return make_divisible(LAST_FEATURES * max(1.0, self.width))

    @property
    def layer_strides(self) -> dict[str, int]:
        """Downsampling factor of each dense map relative to the image."""
        stem = 1 if self.small_stem else 2
        return {
            layer: stem * math.prod(self.stage_strides[: stage + 1])
            for layer, stage in LAYER_STAGES.items()
        }

    @property
    def total_stride(self) -> int:
        """Downsampling factor of 'layer4': 32, or 8 with the small stem."""
        return self.layer_strides["layer4"]

    @nn.nowrap
    def feature_grid(self, image_size: int, layer: str = "layer4") -> int:
        """Side of `layer`'s map for a square image: repeated ceil-halving, like the convs."""
        if layer not in LAYERS:
            raise UserError(f"unknown MobileNetV2 layer {layer!r}; use one of {', '.join(LAYERS)}")
        size = image_size
        for _ in range(int(math.log2(self.layer_strides[layer]))):
            size = -(-size // 2)
        return size

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        chex.assert_rank(x, 4)
        chex.assert_axis_dimension(x, 3, len(self.mean))
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        x = ((x.astype(jnp.float32) - mean) / std).astype(self.dtype)

        stem_stride = 1 if self.small_stem else 2
        x = conv(self.stem_width, 3, stem_stride, "stem_conv", self.dtype)(x)
        x = jax.nn.relu6(self.bn(name="stem_bn")(x, train=train))

        features: dict[str, jax.Array] = {}
        stage_outputs = {stage: layer for layer, stage in LAYER_STAGES.items() if layer != "layer4"}
        strides = self.stage_strides
        for stage, (expansion, channels, blocks, _) in enumerate(INVERTED_RESIDUAL_STAGES):
            for block in range(blocks):
                x = InvertedResidual(
                    features=make_divisible(channels * self.width),
                    stride=strides[stage] if block == 0 else 1,
                    expansion=expansion,
                    bn=self.bn,
                    dtype=self.dtype,
                    name=f"stage{stage}_block{block}",
                )(x, train=train)
            if stage in stage_outputs:
                features[stage_outputs[stage]] = x

        x = conv(self.num_features, 1, 1, "last_conv", self.dtype)(x)
        x = jax.nn.relu6(self.bn(name="last_bn")(x, train=train))
        features["layer4"] = x
        features["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return features


def build_mobilenet_v2(
    width: float = 1.0,
    small_stem: bool = False,
    bn_group: BNGroup = "sync",
    axis_name: str | None = DATA_AXIS,
    bn_momentum: float = 0.9,
    dtype: Any = jnp.float32,
) -> MobileNetV2:
    """MobileNetV2 at width multiplier `width` with our batch norm."""
    if width <= 0:
        raise UserError(f"MobileNetV2 width multiplier must be positive, got {width}")
    bn = functools.partial(
        BatchNorm, group=parse_bn_group(bn_group), axis_name=axis_name, momentum=bn_momentum
    )
    return MobileNetV2(width=width, small_stem=small_stem, bn=bn, dtype=dtype)

"""ResNet v1.5 backbones in the torchvision layout, returning every stage's feature map.

The layout follows torchvision's ``resnet.py`` (typed from memory of that source, no torch
on this machine): the stride of a bottleneck block sits on its 3×3 conv ("v1.5"), a shape
change is bridged by a 1×1 conv + BN projection, convs have no bias and He-normal (fan_out)
weights, and the padding is explicit (3 for the 7×7 stem, 1 for 3×3 convs and the max-pool)
so every stride-2 layer maps n pixels to ceil(n / 2), like PyTorch.

Differences from torchvision, all deliberate:

- the last BN of every residual block starts with scale 0 (BYOL, Goyal et al. 2017), so at
  init each block is its shortcut;
- images arrive in [0, 1] and are mean/std-normalised inside the model, so no data
  pipeline can forget it;
- ``width`` multiplies every channel count, stem included (BYOL's ResNet-50 ×2, ×4);
- ``small_stem`` swaps the stem for a 3×3 stride-1 conv without max-pool (CIFAR-style,
  for 32-pixel images).

Dense features are returned, not only the pooled vector: DetCon pools layer4 by masks and
SaGe reads layers 2 to 4.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.errors import UserError
from ssljax.models.norm import BatchNorm, BNGroup, parse_bn_group
from ssljax.sharding import DATA_AXIS

LAYERS = ("layer1", "layer2", "layer3", "layer4")
BASE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4

# name -> (blocks per stage, bottleneck); torchvision's table, plus ResNet-200 from
# He et al. 2016 ("Identity mappings"), which BYOL uses.
RESNET_DEPTHS: dict[str, tuple[tuple[int, ...], bool]] = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
    "resnet200": ((3, 24, 36, 3), True),
}

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e. N(0, 2 / fan_out).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def scaled_width(base: int, width: float) -> int:
    """Channel count `base × width`, rounded, never below one."""
    return max(1, round(base * width))


def conv(
    features: int, kernel: int, stride: int, name: str, dtype: Any, groups: int = 1
) -> nn.Conv:
    """A bias-free k×k convolution with symmetric (k − 1)/2 padding (PyTorch's), He-init."""
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        name=name,
    )


ZERO_INIT_RESIDUAL = ("all", "bottleneck", "none")


class ResidualBlock(nn.Module):
    """A basic (two 3×3) or bottleneck (1×1, 3×3, 1×1) block; `planes` is the inner width.

    `zero_init_last_bn` starts the block's last BN scale at 0, so the block starts as
    its shortcut (Goyal et al. 2017).
    """

    planes: int
    stride: int
    bottleneck: bool
    bn: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    zero_init_last_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.bottleneck:
            plan = [(self.planes, 1, 1), (self.planes, 3, self.stride)]
            out_features = self.planes * BOTTLENECK_EXPANSION
            plan.append((out_features, 1, 1))
        else:
            out_features = self.planes
            plan = [(self.planes, 3, self.stride), (self.planes, 3, 1)]

        y = x
        for i, (features, kernel, stride) in enumerate(plan, start=1):
            y = conv(features, kernel, stride, f"conv{i}", self.dtype)(y)
            last = i == len(plan)
            zero = last and self.zero_init_last_bn
            bn_kwargs = {"scale_init": nn.initializers.zeros} if zero else {}
            y = self.bn(name=f"bn{i}", **bn_kwargs)(y, train=train)
            if not last:
                y = nn.relu(y)

        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            shortcut = conv(out_features, 1, self.stride, "shortcut_conv", self.dtype)(x)
            shortcut = self.bn(name="shortcut_bn")(shortcut, train=train)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet v1.5 returning ``{'layer1'..'layer4': [B, h, w, C], 'pooled': [B, C]}``.

    `bn` is a factory (e.g. ``functools.partial(BatchNorm, group='sync')``) that must accept
    ``name`` and ``scale_init``. Feature maps are in `dtype`; 'pooled' is float32 because
    it averages many values and feeds float32 heads. Parameters are always float32.

    `zero_init_residual` says which blocks start with a zero last-BN scale, as each
    reference does: 'all' (SimCLR's TF ResNet), 'bottleneck' (Haiku's ResNet, used by
    BYOL and DetCon: bottleneck blocks only) or 'none' (torchvision's default, used by
    MoCo, Momentum² Teacher, SaGe and SSLight).
    """

    stage_sizes: Sequence[int]
    bottleneck: bool
    width: float = 1.0
    small_stem: bool = False
    bn: Callable[..., nn.Module] = BatchNorm
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    dtype: Any = jnp.float32
    zero_init_residual: str = "all"

    @property
    def stem_width(self) -> int:
        return scaled_width(BASE_WIDTHS[0], self.width)

    @property
    def layer_features(self) -> dict[str, int]:
        """Channels of each stage's output map."""
        expansion = BOTTLENECK_EXPANSION if self.bottleneck else 1
        return {
            layer: scaled_width(base, self.width) * expansion
            for layer, base in zip(LAYERS, BASE_WIDTHS)
        }

    @property
    def num_features(self) -> int:
        """Dimension of 'pooled' (and channels of 'layer4')."""
        return self.layer_features["layer4"]

    @property
    def layer_strides(self) -> dict[str, int]:
        """Downsampling factor of each stage's output map relative to the image."""
        stem = 1 if self.small_stem else 4
        return {layer: stem * 2**i for i, layer in enumerate(LAYERS)}

    @property
    def total_stride(self) -> int:
        """Downsampling factor of layer4: 32 with the standard stem, 8 with the small one."""
        return self.layer_strides["layer4"]

    @nn.nowrap
    def feature_grid(self, image_size: int, layer: str = "layer4") -> int:
        """Side of `layer`'s feature map for a square image, without running the model.

        Every stride-2 layer maps n to ceil(n / 2) (torchvision's padding), so this is
        repeated ceil-halving, not ``image_size // stride``.
        """
        if layer not in LAYERS:
            raise UserError(f"unknown ResNet layer {layer!r}; use one of {', '.join(LAYERS)}")
        size = image_size
        for _ in range(int(math.log2(self.layer_strides[layer]))):
            size = -(-size // 2)
        return size

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        if self.zero_init_residual not in ZERO_INIT_RESIDUAL:
            raise UserError(
                f"model.zero_init_residual={self.zero_init_residual!r}; use one of "
                f"{', '.join(ZERO_INIT_RESIDUAL)}"
            )
        zero_init_last_bn = self.zero_init_residual == "all" or (
            self.zero_init_residual == "bottleneck" and self.bottleneck
        )
        if len(self.stage_sizes) != len(LAYERS):
            raise UserError(f"ResNet needs 4 stage sizes, got {list(self.stage_sizes)}")
        chex.assert_rank(x, 4)
        chex.assert_axis_dimension(x, 3, len(self.mean))
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        x = ((x.astype(jnp.float32) - mean) / std).astype(self.dtype)

        if self.small_stem:
            x = conv(self.stem_width, 3, 1, "stem_conv", self.dtype)(x)
        else:
            x = conv(self.stem_width, 7, 2, "stem_conv", self.dtype)(x)
        x = nn.relu(self.bn(name="stem_bn")(x, train=train))
        if not self.small_stem:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        features: dict[str, jax.Array] = {}
        for stage, (layer, blocks) in enumerate(zip(LAYERS, self.stage_sizes)):
            planes = scaled_width(BASE_WIDTHS[stage], self.width)
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = ResidualBlock(
                    planes=planes,
                    stride=stride,
                    bottleneck=self.bottleneck,
                    bn=self.bn,
                    dtype=self.dtype,
                    zero_init_last_bn=zero_init_last_bn,
                    name=f"{layer}_block{block}",
                )(x, train=train)
            features[layer] = x
        features["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return features


def build_resnet(
    name: str,
    width: float = 1.0,
    small_stem: bool = False,
    bn_group: BNGroup = "sync",
    axis_name: str | None = DATA_AXIS,
    bn_momentum: float = 0.9,
    dtype: Any = jnp.float32,
    zero_init_residual: str = "all",
) -> ResNet:
    """The ResNet called `name` (resnet18 … resnet200) with our batch norm."""
    if name not in RESNET_DEPTHS:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(RESNET_DEPTHS)}")
    if width <= 0:
        raise UserError(f"ResNet width multiplier must be positive, got {width}")
    stage_sizes, bottleneck = RESNET_DEPTHS[name]
    bn = functools.partial(
        BatchNorm, group=parse_bn_group(bn_group), axis_name=axis_name, momentum=bn_momentum
    )
    return ResNet(
        stage_sizes=stage_sizes,
        bottleneck=bottleneck,
        width=width,
        small_stem=small_stem,
        bn=bn,
        dtype=dtype,
        zero_init_residual=zero_init_residual,
    )

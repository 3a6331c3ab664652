"""SaGe's decoder: the encoder's final feature map back to an image (SaGe §4.1, App. C).

From the g×g×C map (7×7×2048 for a ResNet-50 at 224 px): a g×g convolution without
padding squeezes it into one bottleneck vector (1×1×512); a g×g transposed convolution
spreads it back to g×g (+ BN + ReLU); ×2 up-blocks (4×4 stride-2 transposed convolution
+ BN + ReLU) double the side until it reaches the image; a 1×1 convolution gives 3
channels and tanh maps them to [−1, 1], the range of the targets. Layer widths follow
the authors' released decoder (stem 256, up-blocks 512, 256, 128, 64, 32).

The number of up-blocks comes from the grid, not from a fixed 224: n = ⌈log₂(S / g)⌉
for images of side S, using the last n widths of `channels` (the ones nearest the image),
so a 32-px image on a 4×4 grid gets three. When g·2ⁿ overshoots S (28 px on a 4×4 grid),
the last map is resized to S before the 1×1 convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.errors import UserError
from ssljax.models.norm import BatchNorm

# The reference initialises every (transposed) convolution with Kaiming-normal, fan_in.
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def num_up_blocks(grid: int, image_size: int) -> int:
    """⌈log₂(image_size / grid)⌉: ×2 up-blocks that take a grid×grid map to ≥ the image."""
    if grid <= 0 or image_size < grid:
        raise UserError(f"cannot decode a {grid}×{grid} feature map into {image_size}-px images")
    return math.ceil(math.log2(image_size / grid) - 1e-9)


class Decoder(nn.Module):
    """[B, g, g, C] feature map → [B, S, S, 3] image in [−1, 1] (float32)."""

    grid: int
    image_size: int
    bottleneck_dim: int = 512
    stem_channels: int = 256
    channels: Sequence[int] = (512, 256, 128, 64, 32)
    bn: Callable[..., nn.Module] = BatchNorm
    dtype: Any = jnp.float32

    @nn.nowrap
    def up_block_channels(self) -> tuple[int, ...]:
        """The widths of the up-blocks this grid and image size need."""
        n = num_up_blocks(self.grid, self.image_size)
        if n > len(self.channels):
            raise UserError(
                f"decoding a {self.grid}×{self.grid} map into {self.image_size}-px images takes "
                f"{n} up-blocks but decoder.channels has {len(self.channels)} widths; add some"
            )
        return tuple(self.channels[len(self.channels) - n :])

    @nn.compact
    def __call__(self, features: jax.Array, train: bool) -> jax.Array:
        chex.assert_rank(features, 4)
        chex.assert_axis_dimension(features, 1, self.grid)
        chex.assert_axis_dimension(features, 2, self.grid)
        conv = dict(kernel_init=kaiming_fan_in, dtype=self.dtype)
        g = (self.grid, self.grid)
        x = nn.Conv(self.bottleneck_dim, g, padding="VALID", name="bottleneck_conv", **conv)(
            features.astype(self.dtype)
        )
        x = nn.ConvTranspose(self.stem_channels, g, padding="VALID", name="stem_deconv", **conv)(x)
        x = nn.relu(self.bn(name="stem_bn")(x, train=train))
        for i, width in enumerate(self.up_block_channels()):
            x = nn.ConvTranspose(
                width,
                (4, 4),
                strides=(2, 2),
                padding="SAME",
                use_bias=False,
                name=f"up{i}_deconv",
                **conv,
            )(x)
            x = nn.relu(self.bn(name=f"up{i}_bn")(x, train=train))
        if x.shape[1] != self.image_size:
            size = (x.shape[0], self.image_size, self.image_size, x.shape[3])
            x = jax.image.resize(x, size, method="bilinear")
        x = nn.Conv(3, (1, 1), name="out_conv", **conv)(x)
        return jnp.tanh(x.astype(jnp.float32))

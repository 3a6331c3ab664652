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

Each up-block's transposed convolution is computed as four 2×2 convolutions, one per
output phase, interleaved (`UpConv`): the same parameter and the same function as
`nn.ConvTranspose`, but XLA:CPU's kernel gradient of a transposed convolution (a
convolution with input dilation) falls off its fast path, at ~1.5 GFLOP per CPU second
for SaGe's 224-px decoder against ~20 for ordinary convolutions (docs/performance.md).
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


class UpConv(nn.Module):
    """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)`:
    the same `kernel` [4, 4, C_in, C_out] and output [B, 2H, 2W, C_out], computed without
    input dilation.

    lax.conv_transpose pads the 2×-dilated input by 2 on each side for this kernel and
    stride, so output row 2i takes input rows i − 1, i with kernel rows 0, 2 and row 2i + 1
    takes rows i, i + 1 with kernel rows 1, 3 (likewise for columns). Each of the four
    (row, column) phases is then a stride-1 convolution with a 2×2 slice of the kernel.
    """

    features: int
    kernel_init: Callable[..., jax.Array] = kaiming_fan_in
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        pads = ((1, 0), (0, 1))  # phase 0 reads input i − 1 and i; phase 1 reads i and i + 1
        rows = []
        for a in (0, 1):
            phases = [
                jax.lax.conv_general_dilated(
                    x,
                    kernel[a::2, b::2],
                    window_strides=(1, 1),
                    padding=(pads[a], pads[b]),
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
                for b in (0, 1)
            ]
            rows.append(jnp.stack(phases, axis=3))  # [B, H, W, b, C]
        y = jnp.stack(rows, axis=2)  # [B, H, a, W, b, C]: output pixel (2i + a, 2j + b)
        batch, height, _, width, _, channels = y.shape
        return y.reshape(batch, 2 * height, 2 * width, channels)


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
            x = UpConv(width, name=f"up{i}_deconv", **conv)(x)
            x = nn.relu(self.bn(name=f"up{i}_bn")(x, train=train))
        if x.shape[1] != self.image_size:
            size = (x.shape[0], self.image_size, self.image_size, x.shape[3])
            x = jax.image.resize(x, size, method="bilinear")
        x = nn.Conv(3, (1, 1), name="out_conv", **conv)(x)
        return jnp.tanh(x.astype(jnp.float32))

"""Vision Transformers (Dosovitskiy et al., 2021) as DINO and the low-compute paper use them.

A p×p patch embedding (a stride-p conv), a CLS token, learned position embeddings, then
pre-norm blocks ``x + Attention(LN(x))``, ``x + MLP(LN(x))`` (MLP ratio 4, exact GELU) and a
final LayerNorm; every LayerNorm has ε = 1e-6. Linear weights and the two embeddings start
from a N(0, 0.02²) truncated normal with zero biases, the patch conv from PyTorch's default
(DINO's ``vision_transformer.py``, typed from memory of that source). Sizes:

- ViT-Ti/16: dim 192, 12 blocks, 3 heads: 5,524,416 parameters at 224 px;
- ViT-S/16: dim 384, 12 blocks, 6 heads: 21,665,664 parameters at 224 px.

The position-embedding table covers a `pos_grid`×`pos_grid` patch grid (the config's
image size / patch size); images giving another grid (DINO's 96-px local crops) use the
table resized bicubically, the CLS position unchanged, as DINO's
``interpolate_pos_encoding`` does. Small images work with a small `patch_size` (4 at 32 px).

Stochastic depth (`drop_path_rate`, DINO's ``drop_path``/``DropPath``): in training, each
sample's attention branch and, independently, its MLP branch are zeroed with probability
p and otherwise scaled by 1/(1 − p); p rises linearly over the blocks from 0 in the first
to `drop_path_rate` in the last (``VisionTransformer.__init__``: ``dpr = torch.linspace(0,
drop_path_rate, depth)``). It draws from the 'dropout' rng stream, only when ``train`` and
the rate > 0, so inference (and a rate of 0) needs no rng and is unchanged.

Outputs follow `ssljax.models.resnet`: 'pooled' is the CLS token after the final norm
[B, C]; 'layer4' the patch tokens after the final norm as a map [B, h, w, C] (named as
ResNet's last map, so DetCon's mask pooling reads it). Images arrive in [0, 1] and are
normalised inside the model. There is no batch norm, so no 'batch_stats'.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssljax.errors import UserError

# name -> (embedding dim, blocks, heads)
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
}
MLP_RATIO = 4
LAYER_NORM_EPSILON = 1e-6

dense_init = nn.initializers.truncated_normal(0.02)
# torch.nn.Conv2d's default: kaiming_uniform(a=√5) = U(±1/√fan_in).
patch_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name=name)


def _dense(features: int, name: str, dtype: Any) -> nn.Dense:
    return nn.Dense(features, kernel_init=dense_init, dtype=dtype, name=name)


def resize_position_embedding(table: jax.Array, height: int, width: int) -> jax.Array:
    """A [1 + g², C] table (CLS position, then a g×g grid) for an h×w patch grid: the CLS
    position unchanged, the grid resized bicubically (DINO's ``interpolate_pos_encoding``)."""
    grid = math.isqrt(table.shape[0] - 1)
    if (height, width) == (grid, grid):
        return table
    dim = table.shape[1]
    patches = table[1:].reshape(grid, grid, dim)
    patches = jax.image.resize(patches, (height, width, dim), "bicubic", antialias=False)
    return jnp.concatenate([table[:1], patches.reshape(height * width, dim)])


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Each sample (axis 0) of a residual branch zeroed with probability `rate`, otherwise
    scaled by 1/(1 − rate): DINO's ``drop_path`` (a floored keep + U[0, 1) per sample)."""
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jnp.floor(keep + jax.random.uniform(rng, shape, x.dtype))
    return x / keep * mask


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (1-D biases, like timm)."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = _dense(3 * dim, "qkv", self.dtype)(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, dim)
        return _dense(dim, "proj", self.dtype)(out)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + Attention(LN(x)), then x + MLP(LN(x)); in training
    each branch goes through `drop_path` at `drop_path_rate` (DINO's ``Block.forward``)."""

    num_heads: int
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0

    def _drop_path(self, branch: jax.Array, train: bool) -> jax.Array:
        if not train or self.drop_path_rate == 0:
            return branch
        return drop_path(branch, self.drop_path_rate, self.make_rng("dropout"))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dim = x.shape[-1]
        y = SelfAttention(self.num_heads, self.dtype, name="attention")(
            _layer_norm("norm1", self.dtype)(x)
        )
        x = x + self._drop_path(y, train)
        y = _layer_norm("norm2", self.dtype)(x)
        y = nn.gelu(_dense(MLP_RATIO * dim, "mlp_fc1", self.dtype)(y), approximate=False)
        return x + self._drop_path(_dense(dim, "mlp_fc2", self.dtype)(y), train)


class VisionTransformer(nn.Module):
    """ViT returning ``{'layer4': [B, h, w, C], 'pooled': [B, C]}`` (see the module doc).

    `train` switches on stochastic depth when `drop_path_rate` > 0 (then ``apply`` needs
    ``rngs={'dropout': key}``); nothing else depends on it.
    """

    dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    pos_grid: int = 14
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0

    @property
    def drop_path_rates(self) -> tuple[float, ...]:
        """Block i's rate: linear from 0 (first block) to `drop_path_rate` (last)."""
        return tuple(float(r) for r in np.linspace(0.0, self.drop_path_rate, self.depth))

    @property
    def num_features(self) -> int:
        """Dimension of 'pooled' (and channels of 'layer4')."""
        return self.dim

    @property
    def total_stride(self) -> int:
        """Pixels per patch side: the downsampling factor of 'layer4'."""
        return self.patch_size

    @nn.nowrap
    def feature_grid(self, image_size: int, layer: str = "layer4") -> int:
        """Patches per side of a square image (a partial last patch is dropped)."""
        if layer != "layer4":
            raise UserError(f"a ViT has one dense map, 'layer4'; got {layer!r}")
        return image_size // self.patch_size

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        chex.assert_rank(x, 4)
        chex.assert_axis_dimension(x, 3, len(self.mean))
        if min(x.shape[1:3]) < self.patch_size:
            raise UserError(
                f"{x.shape[1]}×{x.shape[2]} images are smaller than one {self.patch_size}-px "
                "patch; set --config.model.patch_size"
            )
        if train and self.drop_path_rate > 0 and not self.has_rng("dropout"):
            raise ValueError(
                f"a ViT with drop_path_rate {self.drop_path_rate} needs a 'dropout' rng in "
                "training: apply(..., train=True, rngs={'dropout': key})"
            )
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        x = ((x.astype(jnp.float32) - mean) / std).astype(self.dtype)

        p = self.patch_size
        x = nn.Conv(
            self.dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=patch_init,
            dtype=self.dtype,
            name="patch_embedding",
        )(x)
        batch, height, width, _ = x.shape
        cls = self.param("cls_token", dense_init, (self.dim,), jnp.float32)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.dim))
        tokens = jnp.concatenate([cls, x.reshape(batch, height * width, self.dim)], axis=1)
        grid = self.pos_grid
        table = self.param("pos_embedding", dense_init, (1 + grid * grid, self.dim), jnp.float32)
        tokens = tokens + resize_position_embedding(table, height, width).astype(self.dtype)
        for i, rate in enumerate(self.drop_path_rates):
            block = EncoderBlock(self.num_heads, self.dtype, rate, name=f"block{i}")
            tokens = block(tokens, train=train)
        tokens = _layer_norm("norm", self.dtype)(tokens)
        return {
            "layer4": tokens[:, 1:].reshape(batch, height, width, self.dim),
            "pooled": tokens[:, 0].astype(jnp.float32),
        }


def build_vit(
    name: str,
    image_size: int = 224,
    patch_size: int = 16,
    width: float = 1.0,
    depth: int = 0,
    dtype: Any = jnp.float32,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """The ViT called `name` ('vit_tiny', 'vit_small') for `image_size`-px images.

    `width` multiplies the embedding dim (rounded to a multiple of the head count, which
    stays), `depth` > 0 replaces the block count: both only for small CPU runs.
    `drop_path_rate` is the stochastic-depth rate of the last block (see the module doc).
    """
    if name not in VIT_SIZES:
        raise UserError(f"unknown ViT {name!r}; choose one of {', '.join(VIT_SIZES)}")
    if width <= 0:
        raise UserError(f"ViT width multiplier must be positive, got {width}")
    if depth < 0:
        raise UserError(f"ViT depth must be ≥ 0 (0: the model's own), got {depth}")
    if patch_size < 1 or image_size < patch_size:
        raise UserError(
            f"patch size {patch_size} does not fit {image_size}-px images; "
            "set --config.model.patch_size"
        )
    if not 0 <= drop_path_rate < 1:
        raise UserError(f"ViT drop_path_rate must be in [0, 1), got {drop_path_rate}")
    dim, blocks, heads = VIT_SIZES[name]
    dim = max(1, round(dim * width / heads)) * heads
    return VisionTransformer(
        dim=dim,
        depth=depth or blocks,
        num_heads=heads,
        patch_size=patch_size,
        pos_grid=image_size // patch_size,
        dtype=dtype,
        drop_path_rate=drop_path_rate,
    )

"""Projection/prediction MLPs and the linear classifier put on top of a backbone.

One MLP covers the usual heads by its fields:

- BYOL projector and predictor: ``MLP([4096], 256)`` (Linear → BN → ReLU → Linear, the last
  without bias);
- SimCLR projector: ``MLP([2048], 128)`` (SimCLR v2: ``MLP([2048, 2048], 128)``);
- MoCo v2 projector: ``MLP([2048], 128, use_bn=False, last_bias=True)``.

Dense layers use flax's default init (truncated-normal LeCun kernel, variance 1/fan_in;
zero bias), not PyTorch's uniform ±1/sqrt(fan_in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import flax.linen as nn
import jax

from ssljax.models.norm import BatchNorm


class MLP(nn.Module):
    """For each hidden width: Dense → BN (if `use_bn`) → ReLU; then Dense(`out_dim`).

    `hidden_bias` keeps a bias before BN as BYOL's Haiku heads do (SimCLR drops it; BN's own
    bias makes it redundant either way). `bn` is a factory taking ``name``, e.g.
    ``functools.partial(BatchNorm, group='sync')``.
    """

    hidden_dims: Sequence[int]
    out_dim: int
    use_bn: bool = True
    last_bias: bool = False
    hidden_bias: bool = True
    bn: Callable[..., nn.Module] = BatchNorm

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        chex.assert_rank(x, 2)
        for i, features in enumerate(self.hidden_dims):
            x = nn.Dense(features, use_bias=self.hidden_bias, name=f"hidden{i}_dense")(x)
            if self.use_bn:
                x = self.bn(name=f"hidden{i}_bn")(x, train=train)
            x = nn.relu(x)
        return nn.Dense(self.out_dim, use_bias=self.last_bias, name="out_dense")(x)


class LinearClassifier(nn.Module):
    """Logits = Dense(`num_classes`)(features), for the online probe and linear evaluation.

    `zero_init` starts from all-zero weights, as BYOL's linear evaluation does (the problem
    is convex, so the start only changes the path); otherwise flax's default init.
    The caller stops gradients into the backbone if it wants a probe, not fine-tuning.
    """

    num_classes: int
    zero_init: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chex.assert_rank(x, 2)
        kernel_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Dense(self.num_classes, kernel_init=kernel_init, name="dense")(x)

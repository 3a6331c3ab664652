"""Batch normalisation whose statistics come from a chosen set of images.

Self-supervised objectives are sensitive to *which* images share batch statistics
(BYOL and DetCon want the global batch, MoCo and the Momentum² Teacher student want
small local groups), so the choice is a single field, `group`:

- ``"sync"``: the whole global batch (cross-replica mean over ``axis_name``).
- ``"local"``: the per-device batch.
- an integer ``n``: groups of ``n`` consecutive images of the global batch, independent
  of how many devices hold it (M²T's "BN = 32"). ``n`` may be smaller than the
  per-device batch (groups inside a device) or a multiple of it (groups of devices).

Statistics are computed in float32 as E[x²] − E[x]² (biased), like flax's BatchNorm.
Running averages are kept in the ``batch_stats`` collection. Collectives are only
issued when ``train=True`` and ``axis_name`` is bound, so ``init`` and evaluation run
outside the sharded step. Initialise with ``train=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.errors import UserError
from ssljax.sharding import DATA_AXIS

BNGroup = str | int


def parse_bn_group(group: BNGroup) -> BNGroup:
    """Normalise a config value ('sync', 'local', 32 or '32') to 'sync' | 'local' | int."""
    if isinstance(group, str) and group.isdigit():
        group = int(group)
    if group in ("sync", "local") or (isinstance(group, int) and group > 0):
        return group
    raise UserError(
        f"batch-norm group {group!r} is not one of 'sync', 'local' or a positive group size"
    )


def _moments(x: jax.Array) -> jax.Array:
    """Per-channel [E[x], E[x²]] over every axis but the last, in float32: shape [2, C]."""
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    return jnp.stack([jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)])


def batch_moments(x: jax.Array, group: BNGroup, axis_name: str | None) -> jax.Array:
    """[E[x], E[x²]] over the images that share statistics with each image of `x`.

    Returns an array of shape [2, C] when every image of the per-device batch shares one
    set of statistics, or [2, G, C] when the per-device batch splits into G groups.
    """
    group = parse_bn_group(group)
    if group == "local" or (group == "sync" and axis_name is None):
        return _moments(x)
    if group == "sync":
        return jax.lax.pmean(_moments(x), axis_name)
    per_device = x.shape[0]
    if group <= per_device:
        if per_device % group:
            raise UserError(
                f"per-device batch {per_device} is not divisible by the BN group size {group}"
            )
        grouped = x.reshape((per_device // group, group) + x.shape[1:])
        return jax.vmap(_moments, out_axes=1)(grouped)
    if group % per_device:
        raise UserError(
            f"BN group size {group} is not a multiple of the per-device batch {per_device}"
        )
    if axis_name is None:
        raise UserError(
            f"BN group size {group} spans devices, but the per-device batch is only {per_device}"
        )
    devices_per_group = group // per_device
    num_devices = jax.lax.axis_size(axis_name)
    if num_devices % devices_per_group:
        raise UserError(
            f"BN groups of {group} images need a multiple of {devices_per_group} devices, "
            f"got {num_devices}"
        )
    every_device = jax.lax.all_gather(_moments(x), axis_name)  # [D, 2, C]
    first = (jax.lax.axis_index(axis_name) // devices_per_group) * devices_per_group
    mine = jax.lax.dynamic_slice_in_dim(every_device, first, devices_per_group, axis=0)
    return jnp.mean(mine, axis=0)


class BatchNorm(nn.Module):
    """Batch norm over `group` (see the module docstring); running stats in `batch_stats`."""

    group: BNGroup = "sync"
    axis_name: str | None = DATA_AXIS
    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: Callable[..., Any] = nn.initializers.ones
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)

        if not train:
            return self._normalise(x, running_mean.value, running_var.value, scale, bias)

        moments = batch_moments(x, self.group, self.axis_name)
        mean, var = moments[0], jnp.maximum(moments[1] - jnp.square(moments[0]), 0.0)
        if not self.is_initializing():
            batch_mean, batch_var = (mean, var) if mean.ndim == 1 else (mean.mean(0), var.mean(0))
            m = self.momentum
            running_mean.value = m * running_mean.value + (1 - m) * batch_mean
            running_var.value = m * running_var.value + (1 - m) * batch_var
        if mean.ndim == 1:
            return self._normalise(x, mean, var, scale, bias)
        groups = mean.shape[0]
        grouped = x.reshape((groups, -1) + x.shape[1:])
        expand = (slice(None),) + (None,) * (x.ndim - 1)
        y = self._normalise(grouped, mean[expand], var[expand], scale, bias)
        return y.reshape(x.shape)

    def _normalise(self, x, mean, var, scale, bias):
        dtype = self.dtype or x.dtype
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        y = (x.astype(jnp.float32) - mean) * inv + bias
        return y.astype(dtype)

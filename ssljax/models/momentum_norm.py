"""Momentum batch norm (Li, Liu & Sun 2021, "Momentum² Teacher", §3.2) for networks that
receive no gradient: the M²T teacher and, optionally, MoCo's key encoder.

Each layer normalises with a mix of the current batch's statistics and running ones:

    μ̃ = α·μ_batch + (1 − α)·μ_run,    σ̃² = α·σ²_batch + (1 − α)·σ²_run,

then applies its affine γ, β (ordinary parameters named like `BatchNorm`'s, so a teacher's
parameters are a plain EMA of the student's). σ²_batch is the *unbiased* variance,
corrected by n/(n − 1) once, n = the values per channel in a BN group (images × pixels);
the authors' code applies the correction twice. Batch statistics come from `group` as in
`ssljax.models.norm` ('local' by default: the per-device batch).

Running statistics live in their own collection, ``momentum_stats`` (never `batch_stats`,
never in the optimiser state) and are read through `stop_gradient`. The module never
writes them: in training mode it records the (stop-gradient) batch statistics it used in
the ``momentum_batch_stats`` collection when that collection is mutable, and the caller
folds the recorded statistics of all views in at once with `lazy_update`. Both views of a
step are thus normalised with the same pre-update running statistics (the paper's "lazy
update", which keeps one view's statistics out of the other view's targets).

α is a field rather than a call argument because backbones call their norm layers as
``bn(name=...)(x, train=...)``; build the network with `momentum_batch_norm(alpha)` inside
the step when α changes per step (a traced value is fine), or with a constant α (MoCo).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.norm import BNGroup, batch_moments, parse_bn_group
from ssljax.sharding import DATA_AXIS

MOMENTUM_STATS = "momentum_stats"
RECORDED_BATCH_STATS = "momentum_batch_stats"


def images_per_group(per_device: int, group: BNGroup, axis_name: str | None) -> int:
    """How many images share one set of statistics under `group` (see `batch_moments`)."""
    group = parse_bn_group(group)
    if group == "local" or (group == "sync" and axis_name is None):
        return per_device
    if group == "sync":
        return per_device * jax.lax.axis_size(axis_name)
    return group


def unbiased_batch_moments(
    x: jax.Array, group: BNGroup, axis_name: str | None
) -> tuple[jax.Array, jax.Array]:
    """(mean, unbiased variance) per channel over `group`: shapes [C] or [G, C] (G groups
    per device). The variance is E[x²] − E[x]² times n/(n − 1), applied once."""
    moments = batch_moments(x, group, axis_name)
    mean = moments[0]
    biased = jnp.maximum(moments[1] - jnp.square(mean), 0.0)
    n = images_per_group(x.shape[0], group, axis_name) * math.prod(x.shape[1:-1])
    return mean, biased * (n / max(n - 1, 1))


class MomentumBatchNorm(nn.Module):
    """Batch norm with α-mixed running statistics in ``momentum_stats`` (module docstring).

    train=True: normalise with α·batch + (1 − α)·running statistics and, if the
    ``momentum_batch_stats`` collection is mutable, record the batch statistics (averaged
    over the groups of this device) for `lazy_update`. train=False: the running statistics
    alone (the α = 0 map). `alpha` given at call time overrides the field.
    """

    alpha: Any = 1.0
    group: BNGroup = "local"
    axis_name: str | None = DATA_AXIS
    epsilon: float = 1e-5
    scale_init: Callable[..., Any] = nn.initializers.ones
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, alpha: Any = None) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable(MOMENTUM_STATS, "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable(MOMENTUM_STATS, "var", jnp.ones, (channels,), jnp.float32)
        run_mean = jax.lax.stop_gradient(running_mean.value)
        run_var = jax.lax.stop_gradient(running_var.value)
        if not train:
            return self._normalise(x, run_mean, run_var, scale, bias)

        alpha = self.alpha if alpha is None else alpha
        mean, var = unbiased_batch_moments(x, self.group, self.axis_name)
        if self.is_mutable_collection(RECORDED_BATCH_STATS):
            per_device = (mean, var) if mean.ndim == 1 else (mean.mean(0), var.mean(0))
            for name, value in zip(("mean", "var"), per_device):
                recorded = self.variable(RECORDED_BATCH_STATS, name, jnp.zeros, (channels,))
                recorded.value = jax.lax.stop_gradient(value)
        mean = alpha * mean + (1.0 - alpha) * run_mean
        var = alpha * var + (1.0 - alpha) * run_var
        if mean.ndim == 1:
            return self._normalise(x, mean, var, scale, bias)
        grouped = x.reshape((mean.shape[0], -1) + x.shape[1:])
        expand = (slice(None),) + (None,) * (x.ndim - 1)
        return self._normalise(grouped, mean[expand], var[expand], scale, bias).reshape(x.shape)

    def _normalise(self, x, mean, var, scale, bias):
        dtype = self.dtype or x.dtype
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        return ((x.astype(jnp.float32) - mean) * inv + bias).astype(dtype)


def momentum_batch_norm(
    alpha: Any, group: BNGroup = "local", axis_name: str | None = DATA_AXIS, epsilon: float = 1e-5
) -> Callable[..., MomentumBatchNorm]:
    """A `bn` factory for `ResNet` / `MLP` (they pass ``name`` and ``scale_init``)."""
    return functools.partial(
        MomentumBatchNorm,
        alpha=alpha,
        group=parse_bn_group(group),
        axis_name=axis_name,
        epsilon=epsilon,
    )


def apply_recording(
    module: nn.Module, params: Any, momentum_stats: Any, images: jax.Array, **kwargs
) -> tuple[Any, Any]:
    """One training-mode pass that leaves the running statistics alone.

    Returns (outputs, the batch statistics every Momentum BN used, in a tree shaped like
    `momentum_stats`). Other collections (`batch_stats` of ordinary BN layers) are not
    expected: a Momentum-BN network has none.
    """
    outputs, recorded = module.apply(
        {"params": params, MOMENTUM_STATS: momentum_stats},
        images,
        train=True,
        mutable=[RECORDED_BATCH_STATS],
        **kwargs,
    )
    return outputs, recorded[RECORDED_BATCH_STATS]


def lazy_update(running: Any, views: Sequence[Any], alpha: Any) -> Any:
    """running ← α·mean(views' batch statistics) + (1 − α)·running, leaf by leaf (paper eq. 6,
    with α weighting the batch as in eq. 8). One view gives the ordinary momentum update.
    The result is a stop-gradient: running statistics are never differentiated."""
    if not views:
        raise ValueError("lazy_update needs the recorded statistics of at least one view")

    def update(old, *new):
        return jax.lax.stop_gradient(alpha * (sum(new) / len(new)) + (1.0 - alpha) * old)

    return jax.tree_util.tree_map(update, running, *views)


def as_batch_norm_statistics(momentum_stats: Any, epsilon: float, bn_epsilon: float = 1e-5) -> Any:
    """Running statistics of Momentum BN (ε = `epsilon`) as an ordinary BN with ε =
    `bn_epsilon` reads them in inference mode: the same map, the ε difference moved into
    the variance (rsqrt(var + ε) = rsqrt((var + ε − ε_bn) + ε_bn)). For evaluating and
    exporting a Momentum-BN network as a plain one (its α = 0 map, train=False)."""
    shift = epsilon - bn_epsilon

    def convert(layer):
        return {"mean": layer["mean"], "var": layer["var"] + shift}

    def walk(tree):
        if isinstance(tree, dict) and set(tree) == {"mean", "var"}:
            return convert(tree)
        return {key: walk(value) for key, value in tree.items()}

    return walk(momentum_stats)

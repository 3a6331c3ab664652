"""Self-supervised losses as pure functions of embeddings.

Each loss returns the mean over its local batch. When `axis_name` is given the call runs
inside the sharded step and any cross-device term (negatives, gathered keys) uses the
global batch; means over devices are taken by the engine when it averages gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
    """x / max(‖x‖, eps), the `norm` of SPEC.md."""
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / jnp.maximum(norm, eps)


def regression_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """BYOL (Grill et al. 2020, eq. 2): mean_b ‖norm(p) − norm(t)‖² = 2 − 2·cos(p, t).

    The caller stops the gradient of `target`. Computed in float32.
    """
    p = l2_normalize(prediction.astype(jnp.float32))
    t = l2_normalize(target.astype(jnp.float32))
    return jnp.mean(jnp.sum(jnp.square(p - t), axis=-1))


def byol_loss(
    pred1: jax.Array, pred2: jax.Array, target1: jax.Array, target2: jax.Array
) -> jax.Array:
    """Symmetrised BYOL loss: view 1 predicts view 2's target and vice versa."""
    target1, target2 = jax.lax.stop_gradient(target1), jax.lax.stop_gradient(target2)
    return regression_loss(pred1, target2) + regression_loss(pred2, target1)

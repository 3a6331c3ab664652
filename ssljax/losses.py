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


def _gather_rows(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """(x of the whole global batch, the global index of this device's first row)."""
    if axis_name is None:
        return x, jnp.zeros((), jnp.int32)
    gathered = jax.lax.all_gather(x, axis_name, tiled=True)
    return gathered, jax.lax.axis_index(axis_name) * x.shape[0]


def _soft_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def nt_xent(
    z1: jax.Array, z2: jax.Array, temperature: float = 0.1, axis_name: str | None = None
) -> jax.Array:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1), averaged over the 2B embeddings.

    ℓ(i, j) = −log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ) over the 2B L2-normalised embeddings
    of the global batch, s = cosine similarity; L = (1/2B) Σ_k [ℓ(2k−1, 2k) + ℓ(2k, 2k−1)].
    With `axis_name`, this device's rows are the queries and the other devices' rows join
    the candidates (all_gather), so the value equals the single-device loss on the
    global batch. Returns the mean over this device's 2b queries.
    """
    z1 = l2_normalize(z1.astype(jnp.float32))
    z2 = l2_normalize(z2.astype(jnp.float32))
    all1, offset = _gather_rows(z1, axis_name)
    all2, _ = _gather_rows(z2, axis_name)
    positives = offset + jnp.arange(z1.shape[0])
    is_self = jax.nn.one_hot(positives, all1.shape[0])

    def one_direction(queries, same_view, other_view):
        logits = jnp.concatenate(
            [queries @ other_view.T, queries @ same_view.T - 1e9 * is_self], axis=1
        ) / temperature
        labels = jax.nn.one_hot(positives, logits.shape[1])
        return jnp.mean(_soft_cross_entropy(logits, labels))

    return 0.5 * (one_direction(z1, all1, all2) + one_direction(z2, all2, all1))


def moco_infonce(q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float) -> jax.Array:
    """MoCo's InfoNCE (He et al. 2020, eq. 1): −log exp(q·k₊/τ) / Σ exp(q·k/τ).

    `q` [b, D] queries, `k` [b, D] their positive keys (no gradient flows into them),
    `queue` [K, D] negative keys. Logits [q·k₊, q·queue]/τ, the positive at index 0, on
    L2-normalised vectors. Returns the mean over the b queries.
    """
    q = l2_normalize(q.astype(jnp.float32))
    k = jax.lax.stop_gradient(l2_normalize(k.astype(jnp.float32)))
    queue = jax.lax.stop_gradient(queue.astype(jnp.float32))
    positive = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = jnp.concatenate([positive, q @ queue.T], axis=1) / temperature
    return jnp.mean(-jax.nn.log_softmax(logits, axis=-1)[:, 0])


def detcon_loss(
    pred1: jax.Array,
    pred2: jax.Array,
    target1: jax.Array,
    target2: jax.Array,
    ids1: jax.Array,
    ids2: jax.Array,
    temperature: float = 0.1,
    axis_name: str | None = None,
) -> jax.Array:
    """DetCon's contrastive detection loss (Hénaff et al. 2021, eq. 3; ref. `byol_nce_detcon`).

    pred/target: [b, R, D] mask embeddings of each view; ids: [b, R] the segment id of each
    sampled mask. For mask r of image i in view 1 (query `pred1[i, r]`):
    - positives: the view-2 targets of image i with the same id (soft label 1/#positives);
    - candidates: all view-2 targets of the global batch, and all view-1 targets except
      image i's same-id ones (logit −1e9);
    - weight: 1/(#masks of image i in view 1 with that id), 0 when the id is absent from
      view 2.
    The loss is mean_{b·R}(w·CE) for view 1 → 2 plus the same for view 2 → 1, as the
    reference (so with one global mask and R = 1 it is 2 × `nt_xent`, which averages its
    two directions). Targets of other devices join the candidates via all_gather.
    """
    b, num_masks, _ = pred1.shape
    pred1, pred2 = l2_normalize(pred1.astype(jnp.float32)), l2_normalize(pred2.astype(jnp.float32))
    target1 = l2_normalize(target1.astype(jnp.float32))
    target2 = l2_normalize(target2.astype(jnp.float32))
    all_target1, offset = _gather_rows(target1, axis_name)
    all_target2, _ = _gather_rows(target2, axis_name)
    # [b, 1, B, 1]: candidate image u is the query's own image.
    own_image = jax.nn.one_hot(offset + jnp.arange(b), all_target1.shape[0])[:, None, :, None]

    def same_id(query_ids, key_ids):  # [b, R, 1, R]
        return (query_ids[:, :, None] == key_ids[:, None, :])[:, :, None, :].astype(jnp.float32)

    def one_direction(pred, all_other, all_same, ids_query, ids_other):
        positive = own_image * same_id(ids_query, ids_other)
        excluded = own_image * same_id(ids_query, ids_query)
        logits_other = jnp.einsum("irk,uvk->iruv", pred, all_other) / temperature
        logits_same = jnp.einsum("irk,uvk->iruv", pred, all_same) / temperature - 1e9 * excluded
        logits = jnp.concatenate([logits_other, logits_same], axis=2).reshape(b, num_masks, -1)
        labels = jnp.concatenate([positive, jnp.zeros_like(positive)], axis=2)
        labels = labels.reshape(b, num_masks, -1)
        num_positives = labels.sum(-1)
        labels = labels / jnp.maximum(num_positives, 1.0)[..., None]
        count = same_id(ids_query, ids_query).sum(axis=(2, 3))
        weight = (num_positives > 0).astype(jnp.float32) / count
        return jnp.mean(weight * _soft_cross_entropy(logits, labels))

    return one_direction(pred1, all_target2, all_target1, ids1, ids2) + one_direction(
        pred2, all_target1, all_target2, ids2, ids1
    )

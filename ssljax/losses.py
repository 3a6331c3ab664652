"""Self-supervised losses as pure functions of embeddings.

Each loss returns the mean over its local batch. When `axis_name` is given the call runs
inside the sharded step and any cross-device term (negatives, gathered keys) uses the
global batch; means over devices are taken by the engine when it averages gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
    """x / max(‖x‖, eps): the L2 normalisation of every loss here."""
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
        logits = (
            jnp.concatenate([queries @ other_view.T, queries @ same_view.T - 1e9 * is_self], axis=1)
            / temperature
        )
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
    all_ids1, _ = _gather_rows(ids1, axis_name)
    all_ids2, _ = _gather_rows(ids2, axis_name)
    # Query rows (image i, mask r) against candidate columns (image u, mask v), flattened.
    query_image = jnp.repeat(offset + jnp.arange(b), num_masks)[:, None]
    key_image = jnp.repeat(jnp.arange(all_target1.shape[0]), num_masks)[None, :]

    def one_direction(pred, own_other, all_other, all_same, ids_query, ids_other, all_ids_query):
        # CE with soft labels 1/#positives = log Σ exp(all logits) − mean positive logit,
        # so only the own-image block of positives is formed, never a dense label matrix.
        queries = pred.reshape(b * num_masks, -1)
        logits_other = queries @ all_other.reshape(-1, all_other.shape[-1]).T / temperature
        logits_same = queries @ all_same.reshape(-1, all_same.shape[-1]).T / temperature
        excluded = (query_image == key_image) & (
            ids_query.reshape(-1, 1) == all_ids_query.reshape(1, -1)
        )
        logits_same = jnp.where(excluded, -1e9, logits_same)
        log_partition = jnp.logaddexp(
            jax.nn.logsumexp(logits_other, axis=-1), jax.nn.logsumexp(logits_same, axis=-1)
        ).reshape(b, num_masks)
        positive = (ids_query[:, :, None] == ids_other[:, None, :]).astype(jnp.float32)
        positive_logits = jnp.einsum("irk,ivk->irv", pred, own_other) / temperature
        num_positives = positive.sum(-1)
        mean_positive = (positive * positive_logits).sum(-1) / jnp.maximum(num_positives, 1.0)
        count = (ids_query[:, :, None] == ids_query[:, None, :]).sum(-1)
        weight = (num_positives > 0).astype(jnp.float32) / count
        return jnp.mean(weight * (log_partition - mean_positive))

    return one_direction(
        pred1, target2, all_target2, all_target1, ids1, ids2, all_ids1
    ) + one_direction(pred2, target1, all_target1, all_target2, ids2, ids1, all_ids2)


def sage_generation_loss(
    target: jax.Array,
    reconstruction: jax.Array,
    features: dict[str, jax.Array],
    reconstruction_features: dict[str, jax.Array],
    weights: dict[str, float],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SaGe's generation loss L_G of one view (Xu et al. 2021, eq. 4 and App. A).

    L_G = w_pixels·MSE(x, x̃) + Σ_l w_l·MSE(h_l(x), h_l(x̃)), each MSE a mean over every
    element, as PyTorch's `MSELoss` in the authors' code. `target` x and `reconstruction`
    x̃ are images in [−1, 1]; `features`/`reconstruction_features` map each level l of the
    frozen evaluator h (e.g. 'projection', 'layer4', 'layer3', 'layer2') to its output on
    x and on x̃; the evaluator's outputs on x get no gradient. `weights` has 'pixels' and
    one entry per level (reference: pixels and projection 1/10, each stage 1/30); a level
    weighted 0 is skipped. Returns (L_G, {term: unweighted MSE}), in float32.
    """

    def mse(a, b):
        return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))

    terms = {"pixels": mse(jax.lax.stop_gradient(target), reconstruction)}
    for level, weight in weights.items():
        if level != "pixels" and weight:
            original = jax.lax.stop_gradient(features[level])
            terms[level] = mse(original, reconstruction_features[level])
    total = sum(weights[name] * value for name, value in terms.items())
    return jnp.asarray(total, jnp.float32), terms


def multicrop_cross_entropy(targets: jax.Array, student_logits: jax.Array) -> jax.Array:
    """Cross-entropy of every (target crop, student crop) pair, each a mean over the batch.

    `targets` [T, b, K] are distributions (DINO: the centred, sharpened teacher; SwAV: the
    Sinkhorn codes) of crops 0..T−1, `student_logits` [V, b, K] the student's logits of all
    V crops (already divided by the student temperature). Returns [T, V] with entry
    (t, v) = mean_b −Σ_k targets[t]·log_softmax(student_logits[v]); the caller drops
    t = v (`rebalanced_multicrop_loss` does).
    """
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    return -jnp.einsum("tbk,vbk->tv", targets.astype(jnp.float32), log_p) / log_p.shape[1]


def rebalanced_multicrop_loss(
    pair_losses: jax.Array, num_global: int, alpha: float | None
) -> jax.Array:
    """SSLight's re-balanced multi-crop loss (Tan et al. 2023, eq. 3).

    L = α·L_gg/P_gg + (1 − α)·L_gl/P_gl, where `pair_losses` [T, V] holds SL(t, v) for
    target crop t ∈ {0..T−1} (global crops) and student crop v ∈ {0..V−1} (the
    `num_global` globals first, then the locals); L_gg sums the pairs with v a global
    crop other than t (P_gg of them: N_g(N_g − 1) for DINO/SwAV, 1 for MoCo-v2*), L_gl the
    pairs with v local (P_gl = T·N_l). The diagonal t = v is never used. With
    `alpha=None` it is the plain mean over all P_gg + P_gl pairs (eq. 2), which equals
    α = P_gg/(P_gg + P_gl): 1/7 for 2 global and 6 local crops. Without local crops it is
    L_gg/P_gg whatever α: the two-view method the multi-crop one extends.
    """
    num_targets, num_crops = pair_losses.shape
    if not 1 <= num_targets <= num_global <= num_crops or num_crops < 2:
        raise ValueError(
            f"need 1 ≤ target crops ({num_targets}) ≤ global crops ({num_global}) < all "
            f"crops ({num_crops})"
        )
    target = jnp.arange(num_targets)[:, None]
    crop = jnp.arange(num_crops)[None, :]
    global_pairs = (crop < num_global) & (crop != target)
    local_pairs = jnp.broadcast_to(crop >= num_global, pair_losses.shape)
    pair_losses = pair_losses.astype(jnp.float32)
    sum_gg = jnp.sum(jnp.where(global_pairs, pair_losses, 0.0))
    sum_gl = jnp.sum(jnp.where(local_pairs, pair_losses, 0.0))
    p_gg = num_targets * (num_global - 1)
    p_gl = num_targets * (num_crops - num_global)
    if alpha is None or p_gl == 0:
        return (sum_gg + sum_gl) / (p_gg + p_gl)
    return alpha * sum_gg / p_gg + (1.0 - alpha) * sum_gl / p_gl


def dino_teacher_probabilities(
    teacher_logits: jax.Array, center: jax.Array, temperature: jax.Array | float
) -> jax.Array:
    """DINO's teacher targets (Caron et al. 2021, §3.1): softmax((g_t − c)/τ_t), no gradient."""
    logits = (teacher_logits.astype(jnp.float32) - center) / temperature
    return jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))


def dino_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    center: jax.Array,
    student_temperature: float,
    teacher_temperature: jax.Array | float,
    alpha: float | None,
) -> jax.Array:
    """DINO's multi-crop loss (Caron et al. 2021, eq. 3) with SSLight's re-balancing.

    `teacher_logits` [N_g, b, K] of the global crops, `student_logits` [V, b, K] of all
    crops (globals first). SL(t, v) = mean_b H(P_t, P_s(v)) with P_t the teacher's
    centred, sharpened softmax and P_s = softmax(g_s/τ_s); pairs combined by
    `rebalanced_multicrop_loss`.
    """
    targets = dino_teacher_probabilities(teacher_logits, center, teacher_temperature)
    student = student_logits.astype(jnp.float32) / student_temperature
    pairs = multicrop_cross_entropy(targets, student)
    return rebalanced_multicrop_loss(pairs, teacher_logits.shape[0], alpha)


def dino_center_update(
    center: jax.Array, teacher_logits: jax.Array, momentum: float, axis_name: str | None = None
) -> jax.Array:
    """c ← m·c + (1 − m)·mean of the teacher's outputs over the global batch and crops.

    `teacher_logits` [..., K]; with `axis_name` the mean is a pmean over devices, so the
    new centre is the same on every device (DINO's all_reduce).
    """
    axes = tuple(range(teacher_logits.ndim - 1))
    batch_center = jnp.mean(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axes)
    if axis_name is not None:
        batch_center = jax.lax.pmean(batch_center, axis_name)
    return momentum * center + (1.0 - momentum) * batch_center


def sinkhorn_knopp(
    scores: jax.Array,
    epsilon: float = 0.05,
    iterations: int = 3,
    axis_name: str | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """SwAV's codes (Caron et al. 2020, eq. 3; Algorithm 1 "distributed_sinkhorn").

    `scores` [n, K] are this device's samples × prototypes (z·c). Starting from
    Q = exp(scores/ε), `iterations` rounds of: scale every prototype's total over all B
    samples of the global batch to 1/K, then every sample's total to 1/B. Returns B·Q as
    [n, K]: each sample's codes sum to 1, each prototype's over the global batch to ≈ B/K.
    With `axis_name`, prototype totals and B are summed over devices; `valid` [n] (bool)
    leaves rows out (codes 0), e.g. an unfilled queue. No gradient flows.
    """
    scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
    valid = jnp.ones(scores.shape[:1], bool) if valid is None else valid
    weight = valid.astype(jnp.float32)[:, None]

    def total(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    peak = jnp.max(jnp.where(valid[:, None], scores, -jnp.inf))
    peak = peak if axis_name is None else jax.lax.pmax(peak, axis_name)
    q = jnp.exp((scores - peak) / epsilon) * weight  # the shift cancels in the first scaling
    num_samples = total(jnp.sum(weight))
    num_prototypes = scores.shape[1]
    q = q / total(jnp.sum(q))
    for _ in range(iterations):
        q = q / (total(jnp.sum(q, axis=0, keepdims=True)) * num_prototypes)
        q = q / (jnp.maximum(jnp.sum(q, axis=1, keepdims=True), 1e-30) * num_samples)
    return q * num_samples


def swav_loss(
    scores: jax.Array,
    codes: jax.Array,
    temperature: float,
    num_global: int,
    alpha: float | None,
) -> jax.Array:
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1–2) with SSLight's re-balancing.

    `codes` [T, b, K] of the crops used for assignment (the first T of the `num_global`
    global crops), `scores` [V, b, K] the prototype scores z·c of all crops (globals
    first). SL(t, v) =
    mean_b −Σ_k q_t log softmax(z_v·c/τ); pairs combined by `rebalanced_multicrop_loss`.
    """
    pairs = multicrop_cross_entropy(
        jax.lax.stop_gradient(codes), scores.astype(jnp.float32) / temperature
    )
    return rebalanced_multicrop_loss(pairs, num_global, alpha)

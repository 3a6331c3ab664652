import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssljax import losses
from ssljax.sharding import make_mesh


def _normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_nt_xent(z1, z2, temperature):
    """SimCLR eq. 1 written out: 2B embeddings, each row against the 2B − 1 others."""
    z = _normalize(np.concatenate([z1, z2]).astype(np.float64))
    n = len(z1)
    sims = z @ z.T / temperature
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        total += -(sims[i, j] - np.log(np.sum(np.exp(sims[i, others]))))
    return total / (2 * n)


def numpy_moco(q, k, queue, temperature):
    q, k, queue = _normalize(q), _normalize(k), _normalize(queue)
    logits = np.concatenate([np.sum(q * k, -1, keepdims=True), q @ queue.T], 1) / temperature
    return -np.mean(_log_softmax(logits)[:, 0])


def numpy_detcon(pred1, pred2, target1, target2, ids1, ids2, temperature):
    """The contrastive detection loss, one query at a time."""
    pred = [_normalize(pred1), _normalize(pred2)]
    target = [_normalize(target1), _normalize(target2)]
    ids = [ids1, ids2]
    b, num_masks, _ = pred1.shape
    total = 0.0
    for view, other in ((0, 1), (1, 0)):
        for i in range(b):
            for r in range(num_masks):
                q, query_id = pred[view][i, r], ids[view][i, r]
                logits, labels = [], []
                for u in range(b):
                    for v in range(num_masks):
                        logits.append(q @ target[other][u, v] / temperature)
                        labels.append(float(u == i and ids[other][u, v] == query_id))
                for u in range(b):
                    for v in range(num_masks):
                        if u == i and ids[view][u, v] == query_id:
                            continue  # same image, same id, same view: removed
                        logits.append(q @ target[view][u, v] / temperature)
                        labels.append(0.0)
                labels = np.asarray(labels)
                if labels.sum() == 0:
                    continue  # the id is absent from the other view: weight 0
                count = np.sum(ids[view][i] == query_id)
                ce = -np.sum(labels / labels.sum() * _log_softmax(np.asarray(logits)))
                total += ce / count
    return total / (b * num_masks)


def _sharded(fn, *args):
    mesh = make_mesh()
    specs = tuple(P("data") for _ in args)
    return jax.jit(
        jax.shard_map(
            lambda *a: jax.lax.pmean(fn(*a, axis_name="data"), "data"),
            mesh=mesh,
            in_specs=specs,
            out_specs=P(),
            check_vma=False,
        )
    )(*args)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_nt_xent_matches_the_written_out_simclr_loss(rng):
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    np.testing.assert_allclose(losses.nt_xent(z1, z2, 0.1), numpy_nt_xent(z1, z2, 0.1), rtol=1e-5)


def test_nt_xent_on_eight_devices_equals_one_device_on_the_global_batch(rng):
    z1, z2 = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
    sharded = _sharded(lambda a, b, axis_name: losses.nt_xent(a, b, 0.1, axis_name), z1, z2)
    np.testing.assert_allclose(sharded, losses.nt_xent(z1, z2, 0.1), rtol=1e-5)


def test_moco_infonce_matches_numpy_reference(rng):
    q, k, queue = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(32, 8))
    queue = _normalize(queue)
    np.testing.assert_allclose(
        losses.moco_infonce(q, k, queue, 0.2), numpy_moco(q, k, queue, 0.2), rtol=1e-5
    )


def test_moco_infonce_gives_no_gradient_to_keys_or_queue(rng):
    q, k, queue = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(32, 8))
    grads = jax.grad(losses.moco_infonce, argnums=(0, 1, 2))(q, k, queue, 0.2)
    assert np.abs(grads[0]).sum() > 0
    assert np.abs(grads[1]).sum() == 0 and np.abs(grads[2]).sum() == 0


def _detcon_batch(rng, b=3, num_masks=4, dim=6):
    pred1, pred2, target1, target2 = (rng.normal(size=(b, num_masks, dim)) for _ in range(4))
    ids1 = np.array([[0, 0, 1, 2], [3, 4, 4, 4], [7, 8, 9, 7]])
    ids2 = np.array([[1, 0, 5, 5], [4, 3, 3, 6], [7, 7, 8, 8]])  # 2, 5, 6, 9 absent across
    return pred1, pred2, target1, target2, ids1, ids2


def test_detcon_loss_matches_numpy_reference_with_duplicates_and_absent_ids(rng):
    batch = _detcon_batch(rng)
    np.testing.assert_allclose(
        losses.detcon_loss(*batch, temperature=0.1), numpy_detcon(*batch, 0.1), rtol=1e-5
    )


def test_detcon_on_eight_devices_equals_one_device(rng):
    pred1, pred2, target1, target2 = (rng.normal(size=(16, 4, 6)) for _ in range(4))
    ids1, ids2 = rng.integers(0, 3, size=(16, 4)), rng.integers(0, 3, size=(16, 4))
    args = (pred1, pred2, target1, target2, ids1, ids2)
    sharded = _sharded(lambda *a, axis_name: losses.detcon_loss(*a, 0.1, axis_name), *args)
    np.testing.assert_allclose(sharded, losses.detcon_loss(*args), rtol=1e-5)


def test_detcon_with_one_global_mask_equals_simclr(rng):
    """One mask per image, the same in both views: the candidates are exactly SimCLR's
    2B − 1, and DetCon's sum over its two directions is twice NT-Xent's mean."""
    z1, z2 = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    ids = np.zeros((8, 1), np.int32)
    detcon = losses.detcon_loss(z1[:, None], z2[:, None], z1[:, None], z2[:, None], ids, ids)
    np.testing.assert_allclose(detcon, 2 * losses.nt_xent(z1, z2, 0.1), rtol=1e-5)
    # 16 draws of the one global mask: the same gradient, up to the 1/16 weight and log 16.
    many = np.repeat(z1[:, None], 16, 1), np.repeat(z2[:, None], 16, 1)
    ids16 = np.zeros((8, 16), np.int32)
    detcon16 = losses.detcon_loss(many[0], many[1], many[0], many[1], ids16, ids16)
    np.testing.assert_allclose(detcon16, (detcon + 2 * np.log(16)) / 16, rtol=1e-5)


def test_byol_loss_is_two_minus_two_cosine_per_direction(rng):
    p, t = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    cos = np.sum(_normalize(p) * _normalize(t), -1)
    np.testing.assert_allclose(losses.regression_loss(p, t), np.mean(2 - 2 * cos), rtol=1e-5)


def numpy_sage_generation(target, reconstruction, features, reconstruction_features, weights):
    """SaGe's eq. 4 written out: weighted element-wise MSEs, pixels and evaluator levels."""
    total = weights["pixels"] * np.mean((target - reconstruction) ** 2)
    for level, weight in weights.items():
        if level != "pixels":
            total += weight * np.mean((features[level] - reconstruction_features[level]) ** 2)
    return total


def test_sage_generation_loss_matches_numpy_reference_and_stops_the_originals_gradient(rng):
    target = rng.uniform(-1, 1, size=(3, 8, 8, 3))
    reconstruction = np.tanh(rng.normal(size=(3, 8, 8, 3)))
    shapes = {"projection": (3, 5), "layer4": (3, 2, 2, 6), "layer2": (3, 4, 4, 2)}
    features = {k: rng.normal(size=s) for k, s in shapes.items()}
    recon_features = {k: rng.normal(size=s) for k, s in shapes.items()}
    weights = {"pixels": 0.1, "projection": 0.1, "layer4": 1 / 30, "layer2": 1 / 30}
    args = [jax.tree.map(np.float32, x) for x in (target, reconstruction, features, recon_features)]
    value, terms = losses.sage_generation_loss(*args, weights)
    expected = numpy_sage_generation(target, reconstruction, features, recon_features, weights)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(terms["pixels"], np.mean((target - reconstruction) ** 2), rtol=1e-5)
    assert set(terms) == {"pixels", "projection", "layer4", "layer2"}

    def total(target, features):
        return losses.sage_generation_loss(target, args[1], features, args[3], weights)[0]

    grad_target, grad_features = jax.grad(total, argnums=(0, 1))(args[0], args[2])
    assert not np.any(grad_target) and not any(np.any(g) for g in jax.tree.leaves(grad_features))
    # A level weighted 0 is neither computed nor needed.
    value0, terms0 = losses.sage_generation_loss(
        args[0], args[1], {}, {}, {"pixels": 0.1, "projection": 0.0}
    )
    np.testing.assert_allclose(value0, 0.1 * terms["pixels"], rtol=1e-6)
    assert set(terms0) == {"pixels"}

"""Tests for ssljax.methods.swav and SwAV's losses in ssljax.losses."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssljax import configlib, engine, losses, sharding
from ssljax.methods import get_method
from ssljax.methods.swav import SwAV
from ssljax.optim import build_optimizer
from ssljax.sharding import DATA_AXIS

CONFIGS = Path(__file__).parent.parent / "configs"
GLOBAL, LOCAL = 16, 8


def multicrop_batch(batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "global": rng.uniform(size=(batch_size, 2, GLOBAL, GLOBAL, 3)).astype(np.float32),
        "local": rng.uniform(size=(batch_size, 6, LOCAL, LOCAL, 3)).astype(np.float32),
        "pixel_scale_ratio": np.ones((batch_size,), np.float32),
        "label": rng.integers(0, 10, size=(batch_size,)).astype(np.int32),
    }


def _config(preset="smoke", **overrides):
    config = configlib.load(str(CONFIGS / f"sslight_swav.py:{preset}"))
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
    return config


def numpy_sinkhorn(scores, epsilon, iterations):
    """SwAV's Algorithm 1 as written, prototypes × samples."""
    q = np.exp(scores.astype(np.float64) / epsilon).T
    num_prototypes, num_samples = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= num_prototypes
        q /= q.sum(axis=0, keepdims=True)
        q /= num_samples
    return (q * num_samples).T


def _scores(n=24, k=6, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    c = rng.normal(size=(4, k))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=0))


def test_sinkhorn_matches_the_papers_algorithm():
    scores = _scores()
    got = losses.sinkhorn_knopp(jnp.asarray(scores, jnp.float32), 0.05, 3)
    np.testing.assert_allclose(got, numpy_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-7)


def test_sinkhorn_codes_have_unit_rows_and_equal_prototype_mass():
    """Each sample's codes sum to 1 exactly; each prototype's total tends to B/K."""
    scores = jnp.asarray(_scores(seed=1), jnp.float32)
    initial = np.asarray(jax.nn.softmax(scores / 0.05, axis=1)).sum(axis=0)
    three, many = (losses.sinkhorn_knopp(scores, 0.05, n) for n in (3, 200))
    for codes in (three, many):
        np.testing.assert_allclose(np.asarray(codes).sum(axis=1), 1.0, rtol=1e-5)
    target = scores.shape[0] / scores.shape[1]  # 24 samples / 6 prototypes = 4
    np.testing.assert_allclose(np.asarray(many).sum(axis=0), target, rtol=1e-3)
    assert np.abs(np.asarray(three).sum(0) - target).max() < np.abs(initial - target).max()


def test_sinkhorn_over_eight_devices_equals_one_device_on_the_global_batch():
    scores = jnp.asarray(_scores(n=32, seed=2), jnp.float32)
    sharded = jax.jit(
        jax.shard_map(
            lambda s: losses.sinkhorn_knopp(s, 0.05, 3, DATA_AXIS),
            mesh=sharding.make_mesh(),
            in_specs=P(DATA_AXIS),
            out_specs=P(DATA_AXIS),
            check_vma=False,
        )
    )
    np.testing.assert_allclose(
        sharded(scores), losses.sinkhorn_knopp(scores, 0.05, 3), rtol=1e-5, atol=1e-7
    )


def test_rows_left_out_of_sinkhorn_change_nothing_and_get_no_codes():
    scores = _scores(n=20, seed=3)
    valid = np.arange(20) % 3 != 0
    got = losses.sinkhorn_knopp(jnp.asarray(scores, jnp.float32), 0.05, 3, valid=jnp.asarray(valid))
    np.testing.assert_allclose(
        got[valid], numpy_sinkhorn(scores[valid], 0.05, 3), rtol=1e-4, atol=1e-7
    )
    assert np.all(np.asarray(got)[~valid] == 0)


def test_swav_loss_matches_numpy():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(8, 5, 6))
    codes = rng.dirichlet(np.ones(6), size=(2, 5))
    log_p = np.log(np.exp(scores / 0.1) / np.exp(scores / 0.1).sum(-1, keepdims=True))
    pair = lambda t, v: -(codes[t] * log_p[v]).sum(-1).mean()  # noqa: E731
    gg = (pair(0, 1) + pair(1, 0)) / 2
    gl = np.mean([pair(t, v) for t in range(2) for v in range(2, 8)])
    got = losses.swav_loss(jnp.asarray(scores), jnp.asarray(codes), 0.1, 2, 0.4)
    assert float(got) == pytest.approx(0.4 * gg + 0.6 * gl, rel=1e-5)


def _tiny_method(config, total_steps=10):
    method = SwAV(config, total_steps)
    encoder = method.online.encoder.clone(stage_sizes=(0, 0, 0, 0))
    method.online = method.online.clone(encoder=encoder)
    return method


def _run(config, devices, batches):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    method = _tiny_method(config)
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, 10)
    state = engine.make_init(method, tx, mesh, (GLOBAL, GLOBAL, 3), 10)(jax.random.PRNGKey(0))
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    metrics = []
    for batch in batches:
        state, m = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def test_eight_device_steps_equal_one_device_steps_with_the_queue_in_use():
    """The smoke queue holds two batches: filled by steps 1–2, in the codes at step 3."""
    config = _config()
    batches = [multicrop_batch(config.batch_size, seed=s) for s in range(3)]
    state1, metrics1 = _run(config, 1, batches)
    state8, metrics8 = _run(config, 8, batches)
    assert [float(m["queue_in_use"]) for m in metrics1] == [0.0, 0.0, 1.0]
    for m1, m8 in zip(metrics1, metrics8):
        assert float(m8["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-4)
    np.testing.assert_allclose(
        state8.queue["embeddings"], state1.queue["embeddings"], rtol=1e-3, atol=2e-4
    )
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        # atol: a bias ahead of a BN gets only float-noise gradients (values ~1e-7).
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    prototypes = state1.params["projector"]["prototypes"]["kernel"]
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=0), 1.0, rtol=1e-5)
    assert int(state1.queue["filled"]) == config.swav.queue_length


def test_registered_and_presets_hold_the_papers_numbers():
    assert get_method("swav") is SwAV
    config = _config("recipe")
    swav = config.swav
    assert (swav.num_prototypes, swav.epsilon, swav.sinkhorn_iterations, swav.temperature) == (
        3000,
        0.05,
        3,
        0.1,
    )
    assert (config.multicrop.local_size, config.multicrop.alpha) == (128, 0.4)
    assert _config("baseline").multicrop.alpha == pytest.approx(1 / 7)
    assert swav.queue_length % config.batch_size != 0  # a FIFO queue needs no multiple of B

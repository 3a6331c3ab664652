from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import assert_trees_close, two_view_batch

from ssljax import configlib, engine, sharding
from ssljax.methods.byol import Byol
from ssljax.optim import build_optimizer

CONFIGS = Path(__file__).parent.parent / "configs"


def _run_steps(config, devices, batches, total_steps=10):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    method = Byol(config, total_steps)
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, total_steps)
    state = engine.make_init(method, tx, mesh, (32, 32, 3), 10)(jax.random.PRNGKey(0))
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    losses = []
    for batch in batches:
        state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


@pytest.fixture(scope="module")
def smoke_config():
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    config.optimizer.warmup_epochs = 0.0
    return config


def test_eight_device_step_equals_one_device_step_with_sync_bn(smoke_config):
    batches = [two_view_batch(smoke_config.batch_size, 32, seed=s) for s in range(2)]
    state1, losses1 = _run_steps(smoke_config, 1, batches)
    state8, losses8 = _run_steps(smoke_config, 8, batches)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
    assert_trees_close(state8.params, state1.params, rtol=1e-4, atol=1e-6)
    assert_trees_close(state8.target_params, state1.target_params, rtol=1e-4, atol=1e-6)
    assert_trees_close(state8.batch_stats, state1.batch_stats, rtol=1e-4, atol=1e-6)
    assert int(state8.step) == 2


def test_a_step_moves_the_online_network_and_the_target_follows_by_ema(smoke_config):
    mesh = sharding.make_mesh()
    method = Byol(smoke_config, 10)
    tx, schedule = build_optimizer(smoke_config.optimizer, smoke_config.batch_size, 5, 10)
    state0 = jax.device_get(
        engine.make_init(method, tx, mesh, (32, 32, 3), 10)(jax.random.PRNGKey(0))
    )
    state = engine.make_init(method, tx, mesh, (32, 32, 3), 10)(jax.random.PRNGKey(0))
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    state, metrics = step(
        state, sharding.global_batch(two_view_batch(32, 32), mesh), jax.random.PRNGKey(1)
    )
    state = jax.device_get(state)
    tau = float(metrics["tau"])
    assert tau == pytest.approx(smoke_config.tau_base)
    kernel = ("encoder", "stem_conv", "kernel")

    def get(tree):
        for k in kernel:
            tree = tree[k]
        return np.asarray(tree)

    assert not np.allclose(get(state.params), get(state0.params))
    expected_target = tau * get(state0.target_params) + (1 - tau) * get(state.params)
    np.testing.assert_allclose(get(state.target_params), expected_target, rtol=1e-5, atol=1e-7)
    assert set(state.target_params) == {"encoder", "projector"}
    assert {"probe", "predictor"} <= set(state.params)


def test_a_non_finite_batch_is_skipped_exactly_as_if_its_update_never_happened(smoke_config):
    """Steps 1–4 with step 3's images NaN equal steps 1, 2, 4 with the counter advanced
    over 3: params, optimiser state, BN statistics, EMA target all untouched by step 3."""
    mesh = sharding.make_mesh()
    method = Byol(smoke_config, 10)
    tx, schedule = build_optimizer(smoke_config.optimizer, smoke_config.batch_size, 5, 10)
    init = engine.make_init(method, tx, mesh, (32, 32, 3), 10)
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    batches = [two_view_batch(32, 32, seed=s) for s in range(4)]
    poisoned = dict(batches[2], view1=np.full_like(batches[2]["view1"], np.nan))
    rng = jax.random.PRNGKey(1)

    def run(feed, advance_over_third=False):
        state, finite = init(jax.random.PRNGKey(0)), []
        for i, batch in enumerate(feed):
            if advance_over_third and i == 2:
                state = state.replace(step=state.step + 1)
                continue
            state, metrics = step(state, sharding.global_batch(batch, mesh), rng)
            finite.append(float(metrics["finite"]))
        return jax.device_get(state), finite

    skipped, flags = run(batches[:2] + [poisoned] + batches[3:])
    without, _ = run(batches, advance_over_third=True)
    normal, normal_flags = run(batches)
    assert flags == [1.0, 1.0, 0.0, 1.0] and normal_flags == [1.0] * 4
    assert int(skipped.step) == int(without.step) == 4
    for a, b in zip(jax.tree_util.tree_leaves(skipped), jax.tree_util.tree_leaves(without)):
        np.testing.assert_array_equal(a, b)
    # The comparison can fail: had step 3 been applied, the states would differ.
    assert not np.array_equal(
        jax.tree_util.tree_leaves(normal.params)[0], jax.tree_util.tree_leaves(without.params)[0]
    )

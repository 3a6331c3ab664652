import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssljax import optim
from ssljax.errors import UserError


def _opt(**overrides):
    c = ml_collections.ConfigDict(
        dict(
            name="lars",
            base_lr=0.3,
            weight_decay=1e-2,
            momentum=0.9,
            trust_coefficient=1e-3,
            warmup_epochs=2.0,
            schedule="cosine",
            decay_at=(),
            decay_factor=0.1,
        )
    )
    c.update(overrides)
    return c


def _toy_tree():
    rng = np.random.default_rng(0)
    return {
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        },
        "bn": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
        "zero": {"kernel": jnp.zeros((2, 2))},
    }


def _written_out_lars(params, grads_per_step, lrs, wd, eta, momentum):
    """LARS as the BYOL reference's `optimizers.py`: u = g + wd·w (not for biases/norm),
    u ← η‖w‖/‖u‖·u (1 when a norm is 0; not for biases/norm), v ← momentum·v + lr·u,
    w ← w − v."""
    params = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
    velocity = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
    for grads, lr in zip(grads_per_step, lrs):
        for module, leaves in params.items():
            for name, w in leaves.items():
                g = np.asarray(grads[module][name], np.float64)
                adapt = w.ndim > 1
                u = g + wd * w if adapt else g
                if adapt:
                    wn, un = np.linalg.norm(w), np.linalg.norm(u)
                    u = u * (eta * wn / un if wn > 0 and un > 0 else 1.0)
                velocity[module][name] = momentum * velocity[module][name] + lr * u
                leaves[name] = w - velocity[module][name]
    return params


def test_lars_equals_written_out_formula_with_bias_and_norm_excluded():
    params = _toy_tree()
    opt = _opt(warmup_epochs=0.0, schedule="constant")
    tx, schedule = optim.build_optimizer(opt, batch_size=512, steps_per_epoch=10, total_steps=30)
    rng = np.random.default_rng(1)
    grads_per_step = [
        jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        for _ in range(3)
    ]
    state, p = tx.init(params), params
    for g in grads_per_step:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
    expected = _written_out_lars(
        params, grads_per_step, [0.3 * 512 / 256] * 3, wd=1e-2, eta=1e-3, momentum=0.9
    )
    for module in expected:
        for name in expected[module]:
            np.testing.assert_allclose(
                p[module][name],
                expected[module][name],
                rtol=2e-5,
                atol=1e-7,
                err_msg=f"{module}/{name}",
            )
    # Biases and BN parameters move by plain momentum SGD: the first step is −lr·g exactly.
    tx1, _ = optim.build_optimizer(opt, 512, 10, 30)
    u, _ = tx1.update(grads_per_step[0], tx1.init(params), params)
    np.testing.assert_allclose(u["bn"]["scale"], -0.6 * grads_per_step[0]["bn"]["scale"], rtol=1e-6)


def test_adaptation_mask_excludes_vectors_depthwise_kernels_and_the_probe():
    tree = {
        "a": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)},
        "block_depthwise": {"kernel": jnp.ones((3, 3, 1, 8))},
        "probe": {"kernel": jnp.ones((3, 10))},
    }
    mask = optim.adaptation_mask(tree)
    assert mask == {
        "a": {"kernel": True, "bias": False},
        "block_depthwise": {"kernel": False},
        "probe": {"kernel": False},
    }


def test_lr_warms_up_linearly_then_follows_a_cosine_to_zero():
    schedule = optim.learning_rate_schedule(
        _opt(), batch_size=512, steps_per_epoch=10, total_steps=100
    )
    peak = 0.3 * 512 / 256
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(schedule(10), peak / 2, rtol=1e-6)
    np.testing.assert_allclose(schedule(20), peak, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), peak * 0.5, rtol=1e-5)  # half-way of the cosine
    np.testing.assert_allclose(schedule(100), 0.0, atol=1e-7)


def test_step_schedule_decays_at_the_given_fractions():
    opt = _opt(schedule="steps", decay_at=(0.6, 0.8), warmup_epochs=0.0)
    schedule = optim.learning_rate_schedule(opt, 256, 10, 100)
    np.testing.assert_allclose(
        [schedule(59), schedule(61), schedule(81)], [0.3, 0.03, 0.003], rtol=1e-5
    )


def test_ema_rate_is_tau_base_at_step_zero_and_one_at_the_end():
    assert float(optim.cosine_increase(0.99, jnp.asarray(0), 1000)) == pytest.approx(0.99)
    assert float(optim.cosine_increase(0.99, jnp.asarray(500), 1000)) == pytest.approx(0.995)
    assert float(optim.cosine_increase(0.99, jnp.asarray(1000), 1000)) == pytest.approx(1.0)


def test_negative_learning_rate_is_a_user_error():
    with pytest.raises(UserError, match="base_lr"):
        optim.build_optimizer(_opt(base_lr=-1.0), 256, 10, 100)


def test_cosine_ends_at_min_lr_as_dinos_cosine_scheduler():
    """DINO/SSLight `cosine_scheduler`: final + (peak − final)(1 + cos(π i / N))/2 after the
    warm-up (numbers typed here: peak 0.48 × 1024/256, final 0.0048)."""
    opt = _opt(base_lr=0.48, warmup_epochs=1.0, min_lr=0.0048)
    schedule = optim.learning_rate_schedule(opt, 1024, 10, 110)
    peak, final = 1.92, 0.0048
    for step in (10, 35, 60, 109, 110):
        i = step - 10
        expected = final + (peak - final) * (1 + np.cos(np.pi * i / 100)) / 2
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    assert float(optim.learning_rate_schedule(_opt(), 256, 10, 100)(100)) == 0.0
    with pytest.raises(UserError, match="min_lr"):
        optim.learning_rate_schedule(_opt(min_lr=10.0), 256, 10, 100)


def test_adamw_weight_decay_follows_a_cosine_from_weight_decay_to_weight_decay_end():
    """DINO's ViT recipe: wd 0.04 → 0.4 by a cosine over the run; with zero gradients
    AdamW's update is −lr·wd(k)·w (decoupled decay)."""
    opt = _opt(name="adamw", base_lr=5e-4, warmup_epochs=0.0, weight_decay=0.04)
    opt.weight_decay_end = 0.4
    total = 20
    tx, schedule = optim.build_optimizer(opt, 256, 10, total)
    params = {"dense": {"kernel": jnp.ones((2, 2))}}
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for step in range(total + 1):
        updates, state = tx.update(zeros, state, params)
        if step in (0, 10, 20):
            wd = 0.4 + (0.04 - 0.4) * (1 + np.cos(np.pi * step / total)) / 2
            expected = -float(schedule(step)) * wd
            np.testing.assert_allclose(updates["dense"]["kernel"], expected, rtol=1e-5)
    with pytest.raises(UserError, match="weight_decay_end"):
        optim.build_optimizer(_opt(weight_decay_end=0.4), 256, 10, total)

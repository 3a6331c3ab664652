import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssljax.models.momentum_norm import (
    MOMENTUM_STATS,
    RECORDED_BATCH_STATS,
    MomentumBatchNorm,
    apply_recording,
    lazy_update,
    unbiased_batch_moments,
)
from ssljax.sharding import make_mesh

EPS = 1e-5


def _images(n=16, c=3, seed=0, shift=1.0):
    return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, 4, 4, c)) * 3.0 + shift)


def _variables(channels=3, seed=1):
    """Non-trivial γ, β and running statistics, so each one's role is visible."""
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "scale": rng.uniform(0.5, 2.0, channels).astype(np.float32),
            "bias": rng.normal(size=channels).astype(np.float32),
        },
        MOMENTUM_STATS: {
            "mean": rng.normal(size=channels).astype(np.float32),
            "var": rng.uniform(0.5, 3.0, channels).astype(np.float32),
        },
    }


def _affine(x, mean, var, v):
    return (x - mean) / np.sqrt(var + EPS) * v["params"]["scale"] + v["params"]["bias"]


def test_alpha_one_is_batch_norm_on_the_batch_with_the_unbiased_variance():
    x, v = _images(), _variables()
    y = MomentumBatchNorm(group="local").apply(v, x, train=True, alpha=1.0)
    mean = x.mean(axis=(0, 1, 2))
    unbiased = x.var(axis=(0, 1, 2), ddof=1)  # n = 16 images × 16 pixels, corrected once
    np.testing.assert_allclose(y, _affine(x, mean, unbiased, v), rtol=1e-4, atol=1e-4)
    biased = x.var(axis=(0, 1, 2), ddof=0)
    assert not np.allclose(y, _affine(x, mean, biased, v), rtol=1e-4, atol=1e-4)


def test_the_variance_is_corrected_once_not_twice():
    x = _images(n=2)  # n = 2 × 16 values per channel: a double correction would show
    _, var = unbiased_batch_moments(jnp.asarray(x), "local", None)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2), ddof=1), rtol=1e-5)


def test_alpha_zero_is_the_fixed_affine_map_of_the_running_statistics():
    x, v = _images(), _variables()
    bn = MomentumBatchNorm(group="local")
    y = bn.apply(v, x, train=True, alpha=0.0)
    running = v[MOMENTUM_STATS]
    np.testing.assert_allclose(
        y, _affine(x, running["mean"], running["var"], v), rtol=1e-5, atol=1e-5
    )
    # Each image's output no longer depends on the rest of the batch, and equals inference.
    alone = bn.apply(v, x[:1], train=True, alpha=0.0)
    np.testing.assert_allclose(alone, y[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.apply(v, x, train=False), y, rtol=1e-5, atol=1e-5)


def test_alpha_mixes_batch_and_running_statistics():
    x, v = _images(), _variables()
    alpha = 0.3
    y = MomentumBatchNorm(alpha=alpha, group="local").apply(v, x, train=True)
    running = v[MOMENTUM_STATS]
    mean = alpha * x.mean(axis=(0, 1, 2)) + (1 - alpha) * running["mean"]
    var = alpha * x.var(axis=(0, 1, 2), ddof=1) + (1 - alpha) * running["var"]
    np.testing.assert_allclose(y, _affine(x, mean, var, v), rtol=1e-4, atol=1e-4)


def test_lazy_update_normalises_both_views_with_the_old_statistics_then_averages_them():
    v1, v2, v = _images(seed=2), _images(seed=3, shift=-2.0), _variables()
    alpha = 0.25
    bn = MomentumBatchNorm(alpha=alpha, group="local")
    old = v[MOMENTUM_STATS]
    y1, stats1 = apply_recording(bn, v["params"], old, v1)
    y2, stats2 = apply_recording(bn, v["params"], old, v2)
    for y, x in ((y1, v1), (y2, v2)):
        mean = alpha * x.mean(axis=(0, 1, 2)) + (1 - alpha) * old["mean"]
        var = alpha * x.var(axis=(0, 1, 2), ddof=1) + (1 - alpha) * old["var"]
        np.testing.assert_allclose(y, _affine(x, mean, var, v), rtol=1e-4, atol=1e-4)

    new = lazy_update(old, [stats1, stats2], alpha)
    for name, stat in (
        ("mean", lambda x: x.mean(axis=(0, 1, 2))),
        ("var", lambda x: x.var(axis=(0, 1, 2), ddof=1)),
    ):
        expected = alpha * (stat(v1) + stat(v2)) / 2 + (1 - alpha) * old[name]
        np.testing.assert_allclose(new[name], expected, rtol=1e-5, atol=1e-6)


def test_the_module_never_writes_its_running_statistics():
    x, v = _images(), _variables()
    _, mutated = MomentumBatchNorm(alpha=0.5).apply(
        v, x, train=True, mutable=[MOMENTUM_STATS, RECORDED_BATCH_STATS]
    )
    np.testing.assert_array_equal(mutated[MOMENTUM_STATS]["mean"], v[MOMENTUM_STATS]["mean"])
    np.testing.assert_array_equal(mutated[MOMENTUM_STATS]["var"], v[MOMENTUM_STATS]["var"])


def test_no_gradient_reaches_the_statistics():
    x, v = _images(), _variables()
    bn = MomentumBatchNorm(alpha=0.5)

    def loss(variables, x):
        y, stats = apply_recording(bn, variables["params"], variables[MOMENTUM_STATS], x)
        new = lazy_update(variables[MOMENTUM_STATS], [stats], 0.5)
        return jnp.sum(jnp.sin(y)) + sum(jnp.sum(s) for s in jax.tree_util.tree_leaves(new))

    grads = jax.grad(loss)(v, x)
    for leaf in jax.tree_util.tree_leaves(grads[MOMENTUM_STATS]):
        np.testing.assert_array_equal(leaf, 0.0)
    assert np.abs(grads["params"]["scale"]).sum() > 0
    # The recorded batch statistics carry no gradient to the input either: only y does.
    recorded_only = jax.grad(
        lambda x: sum(
            jnp.sum(s)
            for s in jax.tree_util.tree_leaves(
                apply_recording(bn, v["params"], v[MOMENTUM_STATS], x)[1]
            )
        )
    )(x)
    np.testing.assert_array_equal(recorded_only, 0.0)


@pytest.mark.parametrize("group", ["sync", 4])
def test_sharded_statistics_match_one_device(group):
    """Groups of n (and 'sync', with n the global count) give the same outputs and the
    same averaged recorded statistics on 8 devices as on one."""
    x, v = _images(n=32), _variables()
    bn = MomentumBatchNorm(alpha=0.5, group=group)

    def run(devices):
        def apply(v, x):
            y, stats = apply_recording(bn, v["params"], v[MOMENTUM_STATS], x)
            return y, jax.lax.pmean(stats, "data")

        mesh = make_mesh(jax.devices()[:devices])
        fn = jax.shard_map(
            apply, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()), check_vma=False
        )
        return jax.jit(fn)(v, x)

    y1, stats1 = run(1)
    y8, stats8 = run(8)
    np.testing.assert_allclose(y8, y1, rtol=1e-4, atol=1e-4)
    for name in ("mean", "var"):
        np.testing.assert_allclose(stats8[name], stats1[name], rtol=1e-4, atol=1e-5)
    if group == "sync":
        np.testing.assert_allclose(stats1["var"], x.var(axis=(0, 1, 2), ddof=1), rtol=1e-4)

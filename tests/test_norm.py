from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssljax.models.norm import BatchNorm, batch_moments
from ssljax.sharding import make_mesh


def _images(n=32, c=3, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, 4, 4, c)) * 3.0 + 1.0


def _reference_bn(x):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + 1e-5)


def _sharded_bn(group, x, devices=8):
    bn = BatchNorm(group=group)
    variables = bn.init(jax.random.PRNGKey(0), x[:2], train=False)

    def apply(v, x):
        y, new = bn.apply(v, x, train=True, mutable=["batch_stats"])
        return y, jax.lax.pmean(new["batch_stats"], "data")

    mesh = make_mesh(jax.devices()[:devices])
    fn = jax.shard_map(
        apply, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()), check_vma=False
    )
    return jax.jit(fn)(variables, x)


def test_sync_bn_over_eight_devices_normalises_with_global_batch_statistics():
    x = _images()
    y, stats = _sharded_bn("sync", x)
    np.testing.assert_allclose(y, _reference_bn(np.asarray(x)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        stats["var"], 0.9 + 0.1 * np.asarray(x).var(axis=(0, 1, 2)), rtol=1e-5
    )


def test_local_bn_uses_each_devices_own_images():
    x = _images()
    y, _ = _sharded_bn("local", x)
    expected = np.concatenate([_reference_bn(np.asarray(c)) for c in np.split(x, 8)])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group", [2, 8, 16])
def test_groups_of_n_images_do_not_depend_on_the_device_count(group):
    x = _images()
    expected = np.concatenate([_reference_bn(np.asarray(c)) for c in np.split(x, 32 // group)])
    for devices in (1, 2, 8):
        if 32 // devices > group and (32 // devices) % group:
            continue
        y, _ = _sharded_bn(group, x, devices)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4, err_msg=f"{devices} devices")


def test_eval_mode_uses_running_statistics():
    bn = BatchNorm(group="local", axis_name=None)
    x = _images()
    variables = bn.init(jax.random.PRNGKey(0), x, train=False)
    variables = {
        "params": variables["params"],
        "batch_stats": {"mean": jnp.full((3,), 2.0), "var": jnp.full((3,), 4.0)},
    }
    y = bn.apply(variables, x, train=False)
    np.testing.assert_allclose(y, (x - 2.0) / np.sqrt(4.0 + 1e-5), rtol=1e-5)


def test_moments_shape_says_how_many_groups_a_device_holds():
    x = _images(8)
    assert batch_moments(x, "local", None).shape == (2, 3)
    assert batch_moments(x, 2, None).shape == (2, 4, 3)
    assert partial(batch_moments, group="sync", axis_name=None)(x).shape == (2, 3)

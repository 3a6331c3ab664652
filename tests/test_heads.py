"""MLP heads (BYOL, SimCLR, MoCo v2 shapes) and the linear classifier."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.models import MLP, BatchNorm, LinearClassifier

LOCAL_BN = functools.partial(BatchNorm, axis_name=None)


def _params(module, in_dim, **kwargs):
    x = jnp.zeros((4, in_dim))
    return jax.eval_shape(lambda: module.init(jax.random.key(0), x, **kwargs))["params"]


def _shapes(tree):
    return jax.tree.map(lambda leaf: leaf.shape, tree)


def test_byol_projector_is_linear_bn_relu_linear_without_last_bias():
    params = _params(MLP([4096], 256, bn=LOCAL_BN), 2048, train=False)
    assert _shapes(params) == {
        "hidden0_dense": {"kernel": (2048, 4096), "bias": (4096,)},
        "hidden0_bn": {"scale": (4096,), "bias": (4096,)},
        "out_dense": {"kernel": (4096, 256)},
    }


def test_simclr_projector_has_two_hidden_layers_with_bn():
    params = _params(MLP([2048, 2048], 128, bn=LOCAL_BN), 2048, train=False)
    assert sorted(params) == [
        "hidden0_bn",
        "hidden0_dense",
        "hidden1_bn",
        "hidden1_dense",
        "out_dense",
    ]
    assert params["out_dense"]["kernel"].shape == (2048, 128)


def test_moco_v2_projector_has_no_bn_and_a_last_bias():
    params = _params(MLP([2048], 128, use_bn=False, last_bias=True), 2048, train=False)
    assert _shapes(params) == {
        "hidden0_dense": {"kernel": (2048, 2048), "bias": (2048,)},
        "out_dense": {"kernel": (2048, 128), "bias": (128,)},
    }


def test_hidden_bias_can_be_dropped_before_bn():
    params = _params(MLP([8], 4, hidden_bias=False, bn=LOCAL_BN), 16, train=False)
    assert "bias" not in params["hidden0_dense"]


def test_mlp_maps_batch_by_in_dim_to_batch_by_out_dim():
    mlp = MLP([32, 16], 8, bn=LOCAL_BN)
    x = jax.random.normal(jax.random.key(1), (6, 12))
    variables = mlp.init(jax.random.key(0), x, train=False)
    assert mlp.apply(variables, x, train=False).shape == (6, 8)


def test_mlp_in_train_mode_normalises_with_batch_statistics_and_updates_them():
    mlp = MLP([32], 8, bn=LOCAL_BN)
    x = 3.0 + 5.0 * jax.random.normal(jax.random.key(1), (64, 12))
    variables = mlp.init(jax.random.key(0), x, train=False)
    _, updates = mlp.apply(variables, x, train=True, mutable=["batch_stats"])
    old, new = variables["batch_stats"]["hidden0_bn"], updates["batch_stats"]["hidden0_bn"]
    assert not np.allclose(old["mean"], new["mean"])
    assert not np.allclose(old["var"], new["var"])


def test_mlp_rejects_feature_maps():
    mlp = MLP([8], 4, bn=LOCAL_BN)
    with pytest.raises(AssertionError):
        mlp.init(jax.random.key(0), jnp.zeros((2, 4, 4, 16)), train=False)


def test_zero_init_classifier_gives_zero_logits_with_a_bias():
    head = LinearClassifier(num_classes=10)
    x = jax.random.normal(jax.random.key(1), (3, 64))
    variables = head.init(jax.random.key(0), x)
    assert _shapes(variables["params"]) == {"dense": {"kernel": (64, 10), "bias": (10,)}}
    np.testing.assert_array_equal(head.apply(variables, x), 0.0)


def test_default_init_classifier_gives_nonzero_logits():
    head = LinearClassifier(num_classes=10, zero_init=False)
    x = jax.random.normal(jax.random.key(1), (3, 64))
    logits = head.apply(head.init(jax.random.key(0), x), x)
    assert logits.shape == (3, 10)
    assert float(jnp.abs(logits).max()) > 0

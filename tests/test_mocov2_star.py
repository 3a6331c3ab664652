"""Tests for ssljax.methods.mocov2_star."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import configlib, engine, losses, sharding
from ssljax.methods import crop_forward, get_method
from ssljax.methods.mocov2_star import MoCoV2Star
from ssljax.optim import build_optimizer

CONFIGS = Path(__file__).parent.parent / "configs"
GLOBAL, LOCAL = 16, 8


def _config(preset="smoke", **overrides):
    config = configlib.load(str(CONFIGS / f"sslight_mocov2.py:{preset}"))
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
    return config


def _batch(batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "global": rng.uniform(size=(batch_size, 2, GLOBAL, GLOBAL, 3)).astype(np.float32),
        "local": rng.uniform(size=(batch_size, 6, LOCAL, LOCAL, 3)).astype(np.float32),
        "pixel_scale_ratio": np.ones((batch_size,), np.float32),
        "label": rng.integers(0, 10, size=(batch_size,)).astype(np.int32),
    }


def test_key_is_global_crop_zero_and_queries_are_the_other_crops_rebalanced():
    """One step by hand: keys of global crop 0 (key encoder, BN groups of 4, no shuffle)
    enter the queue; the loss is α·InfoNCE(global 1) + (1 − α)·mean InfoNCE(locals)."""
    config = _config(key_bn="local", multicrop__alpha=0.4)
    method = MoCoV2Star(config, 10)
    for name in ("online", "target"):
        network = getattr(method, name)
        setattr(method, name, network.clone(encoder=network.encoder.clone(stage_sizes=(0,) * 4)))
    mesh = sharding.make_mesh(jax.devices()[:1])
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, 10)
    state = engine.make_init(method, tx, mesh, (GLOBAL, GLOBAL, 3), 10)(jax.random.PRNGKey(0))
    batch = _batch(config.batch_size)
    before = jax.device_get(state)
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    after, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))

    crops = crop_forward.crops_first(jnp.asarray(batch["global"]))
    out, _ = crop_forward.apply_crops(
        method.target,
        before.target_params,
        before.target_batch_stats,
        crops[:1],
        True,
        ("projection",),
    )
    keys = losses.l2_normalize(out["projection"][0])
    np.testing.assert_allclose(jax.device_get(after.queue["keys"])[:32], keys, atol=1e-5)
    queries = [
        crop_forward.apply_crops(
            method.online, before.params, before.batch_stats, c, True, ("projection",)
        )[0]["projection"]
        for c in (crops[1:], crop_forward.crops_first(jnp.asarray(batch["local"])))
    ]
    per_crop = [
        float(losses.moco_infonce(q, keys, before.queue["keys"], 0.2))
        for q in jnp.concatenate(queries)
    ]
    expected = 0.4 * per_crop[0] + 0.6 * np.mean(per_crop[1:])
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-4)
    assert float(metrics["global_pair_loss"]) == pytest.approx(per_crop[0], rel=1e-4)


def test_registered_and_presets_hold_the_papers_numbers():
    assert get_method("mocov2_star") is MoCoV2Star
    config = _config("recipe")
    assert (config.temperature, config.moco.queue_size, config.tau_base) == (0.2, 65536, 0.999)
    assert (config.optimizer.name, config.optimizer.base_lr, config.batch_size) == (
        "lars",
        0.48,
        1024,
    )
    assert (config.multicrop.local_size, config.multicrop.alpha) == (128, 0.4)
    assert not config.projector.use_bn and tuple(config.projector.hidden_dims) == (2048,)
    for preset in ("fashion_mnist", "fashion_mnist_baseline"):
        small = _config(preset)
        assert small.moco.queue_size % small.batch_size == 0
        assert small.batch_size // int(small.bn_group) >= 3  # shuffle BN needs 3 groups


def test_without_local_crops_it_is_moco_v2_with_global_crop_one_as_query():
    """SSLight §4.2: MoCo-v2* adds local queries to MoCo v2. With no local crops (α = 1,
    the one global pair) a training step equals MoCo's on view1 = global crop 1 (query)
    and view2 = global crop 0 (key), under the same config."""
    from ssljax.methods.moco import MoCo

    config = _config(key_bn="local", multicrop__alpha=1.0, multicrop__num_local=0)
    mesh = sharding.make_mesh(jax.devices()[:1])
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, 10)
    batch = _batch(config.batch_size)
    batch["local"] = batch["local"][:, :0]
    two_views = {
        "view1": batch["global"][:, 1],
        "view2": batch["global"][:, 0],
        "label": batch["label"],
    }
    results = []
    for cls, inputs in ((MoCoV2Star, batch), (MoCo, two_views)):
        method = cls(config, 10)
        for name in ("online", "target"):
            network = getattr(method, name)
            encoder = network.encoder.clone(stage_sizes=(0,) * 4)
            setattr(method, name, network.clone(encoder=encoder))
        state = engine.make_init(method, tx, mesh, (GLOBAL, GLOBAL, 3), 10)(jax.random.PRNGKey(0))
        step = engine.make_train_step(method, tx, schedule, mesh, 10)
        state, metrics = step(state, sharding.global_batch(inputs, mesh), jax.random.PRNGKey(1))
        results.append((float(metrics["loss"]), jax.device_get(state)))
    (star_loss, star), (moco_loss, moco) = results
    assert star_loss == pytest.approx(moco_loss, rel=1e-5)
    for field in ("params", "target_params", "batch_stats", "target_batch_stats", "queue"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            getattr(star, field),
            getattr(moco, field),
        )

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import two_view_batch
from jax.sharding import PartitionSpec as P

from ssljax import configlib, engine, losses, sharding
from ssljax.errors import UserError
from ssljax.methods import get_method
from ssljax.methods.base import apply_train
from ssljax.methods.moco import (
    MoCo,
    check_shuffle_groups,
    enqueue,
    init_queue,
    shuffle_permutation,
)
from ssljax.optim import build_optimizer
from ssljax.sharding import DATA_AXIS

CONFIGS = Path(__file__).parent.parent / "configs"
SIZE = 16


def queue_in_order(queue: dict[str, jax.Array]) -> jax.Array:
    """The queue's keys oldest first (the row at `ptr` is the next to be replaced)."""
    return jnp.roll(queue["keys"], -queue["ptr"], axis=0)


def _config(version=2, preset="smoke", **overrides):
    """A preset with `overrides` by dotted name (`moco__queue_size` for moco.queue_size)."""
    config = configlib.load(str(CONFIGS / f"moco_v{version}.py:{preset}"))
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
    return config


def _tiny_method(config, total_steps=10):
    """MoCo on the ResNet's stem alone (conv → BN → ReLU → pool): the BN groups, heads,
    shuffle and queue are the method's own, at a fraction of the compile time."""
    method = MoCo(config, total_steps)
    for name in ("online", "target"):
        network = getattr(method, name)
        encoder = network.encoder.clone(stage_sizes=(0, 0, 0, 0))
        setattr(method, name, network.clone(encoder=encoder))
    return method


def _setup(config, devices=8, total_steps=10):
    """(mesh, method, init(rng) -> state, step), each compiled once however often called."""
    mesh = sharding.make_mesh(jax.devices()[:devices])
    method = _tiny_method(config, total_steps)
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, total_steps)
    init = engine.make_init(method, tx, mesh, (SIZE, SIZE, 3), 10)
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    return mesh, method, init, step


@pytest.fixture(scope="module")
def unshuffled():
    """MoCo without the shuffle (keys recomputable without its permutation), m = 0.9 so
    that one momentum step is visible."""
    config = _config(key_bn="local", tau_base=0.9)
    return (config, *_setup(config))


def test_registered_and_presets_hold_the_papers_numbers():
    assert get_method("moco") is MoCo
    v1, v2 = _config(1, "imagenet"), _config(2, "imagenet")
    for c in (v1, v2):
        assert (c.batch_size, c.epochs, c.moco.queue_size, c.tau_base, c.tau_schedule) == (
            256,
            200,
            65536,
            0.999,
            "constant",
        )
        assert (
            c.optimizer.name,
            c.optimizer.base_lr,
            c.optimizer.weight_decay,
            c.optimizer.momentum,
            c.optimizer.warmup_epochs,
        ) == ("sgd", 0.03, 1e-4, 0.9, 0.0)
        assert c.optimizer.weight_decay_all and c.key_bn == "shuffle" and c.bn_group == "local"
        assert c.projector.out_dim == 128 and not c.projector.use_bn
    assert (v1.temperature, tuple(v1.projector.hidden_dims), v1.augment.preset) == (
        0.07,
        (),
        "moco_v1",
    )
    assert (v1.optimizer.schedule, tuple(v1.optimizer.decay_at)) == ("steps", (0.6, 0.8))
    assert (v2.temperature, tuple(v2.projector.hidden_dims), v2.augment.preset) == (
        0.2,
        (2048,),
        "moco_v2",
    )
    assert v2.optimizer.schedule == "cosine"
    for version in (1, 2):
        small = _config(version, "fashion_mnist")
        assert small.moco.queue_size % small.batch_size == 0


def test_weight_decay_reaches_biases_and_bn_but_not_the_online_probe():
    config = _config()
    tx, _ = build_optimizer(config.optimizer, config.batch_size, 5, 10)
    params = {
        "encoder": {"bn": {"scale": jnp.ones(3), "bias": jnp.ones(3)}, "kernel": jnp.ones((2, 3))},
        "probe": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
    }
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    lr_times_wd = config.optimizer.base_lr * config.batch_size / 256 * 1e-4
    for name in ("encoder", "probe"):
        expected = -lr_times_wd if name == "encoder" else 0.0
        for leaf in jax.tree.leaves(updates[name]):
            np.testing.assert_allclose(leaf, expected, rtol=1e-6)


def test_enqueue_replaces_the_oldest_rows_first_and_wraps_around():
    queue = {"keys": jnp.arange(8.0)[:, None], "ptr": jnp.zeros((), jnp.int32)}
    for new in ([10.0, 11.0], [12.0, 13.0], [14.0, 15.0], [16.0, 17.0], [18.0, 19.0]):
        queue = enqueue(queue, jnp.asarray(new)[:, None])
    assert int(queue["ptr"]) == 2
    np.testing.assert_array_equal(queue["keys"][:, 0], [18, 19, 12, 13, 14, 15, 16, 17])
    np.testing.assert_array_equal(queue_in_order(queue)[:, 0], [12, 13, 14, 15, 16, 17, 18, 19])


def test_initial_queue_is_random_unit_vectors():
    queue = init_queue(jax.random.PRNGKey(0), 64, 16)
    np.testing.assert_allclose(np.linalg.norm(queue["keys"], axis=1), 1.0, rtol=1e-6)
    assert int(queue["ptr"]) == 0 and np.linalg.matrix_rank(queue["keys"]) == 16


def test_queue_size_not_a_multiple_of_the_batch_is_refused():
    with pytest.raises(UserError, match="multiple of the global batch_size=32.*queue_size=64"):
        MoCo(_config(moco__queue_size=80), 10)


def test_shuffle_bn_needs_at_least_three_groups():
    with pytest.raises(UserError, match="at least 3 BN groups.*--config.bn_group=8 "):
        MoCo(_config(bn_group="16"), 10)  # a global batch of 32: 2 groups
    with pytest.raises(UserError, match="batch of 2 .*at least 3 images"):
        check_shuffle_groups(2, 1)
    with pytest.raises(UserError, match="bn_group='sync' is one group"):
        MoCo(_config(bn_group="sync"), 10)
    with pytest.raises(UserError, match="key_bn"):
        MoCo(_config(key_bn="none"), 10)


@pytest.mark.parametrize("batch_size,group_size", [(32, 4), (256, 32), (24, 8), (30, 5)])
def test_shuffle_permutation_moves_every_image_to_another_group(batch_size, group_size):
    groups = batch_size // group_size
    draw = jax.jit(jax.vmap(lambda rng: shuffle_permutation(rng, batch_size, group_size)))
    perms, positions = jax.device_get(draw(jax.random.split(jax.random.PRNGKey(0), 5)))
    for perm, position in zip(perms, positions):
        np.testing.assert_array_equal(np.sort(perm), np.arange(batch_size))
        np.testing.assert_array_equal(perm[position], np.arange(batch_size))
        source, destination = np.arange(batch_size) // group_size, position // group_size
        assert np.all(source != destination)
        # Every new group draws evenly from the other groups: ⌊n/(G−1)⌋ or ⌈n/(G−1)⌉ each.
        counts = np.zeros((groups, groups), int)
        np.add.at(counts, (destination, source), 1)
        off_diagonal = counts[~np.eye(groups, dtype=bool)]
        assert np.all(np.diag(counts) == 0)
        assert off_diagonal.min() >= group_size // (groups - 1)
        assert off_diagonal.max() <= -(-group_size // (groups - 1))


def _dependence(fn, x):
    """[i, j] = output row i depends on input image j (through BN statistics if i ≠ j)."""
    out, vjp = jax.vjp(fn, x)
    one_row = jnp.eye(len(x))[:, :, None] * jnp.ones_like(out)[None]  # [i, rows, D]
    grads = jax.jit(jax.vmap(lambda cotangent: vjp(cotangent)[0]))(one_row)
    return np.abs(np.asarray(grads)).reshape(len(x), len(x), -1).sum(-1) > 0


@pytest.mark.parametrize("key_bn", ["shuffle", "local"])
def test_on_8_devices_shuffle_bn_normalises_each_query_and_its_key_in_different_groups(key_bn):
    config = _config(key_bn=key_bn)
    mesh, method, init, _ = _setup(config)
    state = init(jax.random.PRNGKey(0))
    state = jax.device_get(state)
    rng = jax.random.PRNGKey(3)
    x = jnp.asarray(two_view_batch(32, SIZE)["view2"])

    def sharded(fn):
        return jax.jit(
            jax.shard_map(
                fn, mesh=mesh, in_specs=P(DATA_AXIS), out_specs=P(DATA_AXIS), check_vma=False
            )
        )

    def keys_fn(images):
        keys, all_keys, _ = method.encode_keys(
            state.target_params, state.target_batch_stats, images, rng
        )
        first = jax.lax.axis_index(DATA_AXIS) * images.shape[0]
        np_keys = jax.lax.dynamic_slice_in_dim(all_keys, first, images.shape[0])
        return jnp.concatenate([keys, np_keys - keys], axis=1)  # both views must agree

    def queries_fn(images):
        return apply_train(method.online, state.params, state.batch_stats, images)[0]["projection"]

    keys_out = sharded(keys_fn)(x)
    keys, difference = np.split(np.asarray(keys_out), 2, axis=1)
    np.testing.assert_allclose(difference, 0.0, atol=1e-7)

    device = np.arange(32) // 4  # 8 devices × 4 images; BN per device ('local' = groups of 4)
    same_device = device[:, None] == device[None, :]
    query_groups = _dependence(sharded(queries_fn), x)
    key_groups = _dependence(lambda images: sharded(keys_fn)(images)[:, : keys.shape[1]], x)
    np.testing.assert_array_equal(query_groups, same_device)
    if key_bn == "local":  # the leak shuffle BN removes: a key shares its query's images
        np.testing.assert_array_equal(key_groups, same_device)
        return

    perm, position = jax.device_get(shuffle_permutation(rng, 32, 4))
    key_device = position // 4
    # The statistics each key was normalised with are exactly its shuffled device's, ...
    np.testing.assert_array_equal(key_groups, key_device[:, None] == key_device[None, :])
    # ... that device is never its query's, and the only image of the query's group
    # among them is the image itself.
    assert np.all(key_device != device)
    np.testing.assert_array_equal(key_groups & query_groups, np.eye(32, dtype=bool))

    # The collective implementation equals the key encoder on the permuted batch with BN
    # over groups of 4 on one device, put back in image order.
    out, _ = apply_train(method.target, state.target_params, state.target_batch_stats, x[perm])
    expected = np.asarray(losses.l2_normalize(out["projection"]))[position]
    np.testing.assert_allclose(keys, expected, rtol=1e-5, atol=1e-6)


def test_queue_holds_exactly_the_last_k_keys_in_order_after_n_steps(unshuffled):
    config, mesh, method, init, step = unshuffled
    state = init(jax.random.PRNGKey(0))
    queue_size, batch_size = config.moco.queue_size, config.batch_size
    initial = np.asarray(jax.device_get(state.queue["keys"]))
    expected_keys = []
    for seed in range(3):
        batch = two_view_batch(batch_size, SIZE, seed)
        before = jax.device_get(state)
        out, _ = apply_train(
            method.target,
            before.target_params,
            before.target_batch_stats,
            jnp.asarray(batch["view2"]),
        )
        expected_keys.append(np.asarray(losses.l2_normalize(out["projection"])))
        state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
        assert np.isfinite(float(metrics["loss"]))
        queue = jax.device_get(state.queue)
        if seed == 0:  # one batch in: the oldest K − B random keys are still there
            assert int(queue["ptr"]) == batch_size
            np.testing.assert_array_equal(queue["keys"][batch_size:], initial[batch_size:])
    assert int(queue["ptr"]) == (3 * batch_size) % queue_size
    last_k = np.concatenate(expected_keys)[-queue_size:]
    np.testing.assert_allclose(queue_in_order(queue), last_k, rtol=1e-5, atol=1e-6)
    assert queue["keys"].dtype == np.float32


def test_key_encoder_gets_no_gradient_and_moves_only_by_the_momentum_rule(unshuffled):
    config, mesh, method, init, step = unshuffled
    state = init(jax.random.PRNGKey(0))
    batch = sharding.global_batch(two_view_batch(config.batch_size, SIZE), mesh)

    def loss_of_target(target_params, state, batch):
        return method.loss(
            state.params, state.replace(target_params=target_params), batch, jax.random.PRNGKey(2)
        )[0]

    grad_fn = jax.jit(
        jax.shard_map(
            jax.grad(loss_of_target),
            mesh=mesh,
            in_specs=(P(), P(), P(DATA_AXIS)),
            out_specs=P(),
            check_vma=False,
        )
    )
    grads = jax.device_get(grad_fn(state.target_params, state, batch))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.asarray(g) == 0), jax.tree_util.keystr(path)

    before = jax.device_get(state)
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    after = jax.device_get(state)
    assert float(metrics["tau"]) == pytest.approx(0.9)
    assert set(after.target_params) == {"encoder", "projector"}
    moved = 0
    for (path, key0), key1, query1, query0 in zip(
        jax.tree_util.tree_leaves_with_path(before.target_params),
        jax.tree_util.tree_leaves(after.target_params),
        jax.tree_util.tree_leaves({k: after.params[k] for k in ("encoder", "projector")}),
        jax.tree_util.tree_leaves({k: before.params[k] for k in ("encoder", "projector")}),
    ):
        np.testing.assert_allclose(
            key1,
            0.9 * key0 + 0.1 * query1,
            rtol=1e-6,
            atol=1e-7,
            err_msg=jax.tree_util.keystr(path),
        )
        moved += not np.allclose(query1, query0)
    assert moved > 0  # the query encoder did learn, so the rule was exercised


def _pipeline_available():
    return importlib.util.find_spec("ssljax.data.pipeline") is not None


@pytest.mark.skipif(not _pipeline_available(), reason="ssljax.data.pipeline not written yet")
def test_smoke_run_trains_moco_v2_end_to_end(tmp_path):
    from ssljax import train

    config = _config(2, "smoke")
    config.total_steps = 2
    state = train.train(config, tmp_path)
    assert int(state.step) == 2
    assert int(jax.device_get(state.queue["ptr"])) == 2 * config.batch_size % 64
    assert (tmp_path / "checkpoints").exists()


def test_momentum_key_bn_with_alpha_one_is_local_key_bn_up_to_the_unbiased_variance():
    """Momentum BN with α = 1 normalises with the batch's own statistics, as 'local' BN
    does, except that its variance is the unbiased one (× n/(n − 1), the M²T reference):
    two training steps agree to that factor (n = 4 images × 64 cells here, 0.4%), and a
    Momentum BN that still read its running statistics would not."""
    batches = [two_view_batch(32, SIZE, seed) for seed in range(2)]
    results = {}
    for key_bn in ("local", "momentum"):
        config = _config(key_bn=key_bn)
        config.key_bn_alpha = 1.0
        mesh, method, init, step = _setup(config, devices=8)
        assert key_bn == "local" or method.key_bn_alpha == 1.0
        state, losses_ = init(jax.random.PRNGKey(0)), []
        for batch in batches:
            state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
            losses_.append(float(metrics["loss"]))
        results[key_bn] = losses_, jax.device_get(state.queue["keys"])
    (local_losses, local_keys), (momentum_losses, momentum_keys) = results.values()
    np.testing.assert_allclose(momentum_losses, local_losses, rtol=2e-3)
    np.testing.assert_allclose(momentum_keys, local_keys, atol=2e-2)
    assert np.abs(momentum_keys - local_keys).max() > 0  # not the same code path

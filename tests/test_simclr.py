import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, two_view_batch

from ssljax import configlib, engine, sharding
from ssljax.methods import get_method
from ssljax.methods.simclr import SimCLR
from ssljax.optim import build_optimizer

CONFIGS = Path(__file__).parent.parent / "configs"
SIZE = 16


def _config(preset="smoke"):
    return configlib.load(str(CONFIGS / f"simclr.py:{preset}"))


def _tiny_method(config, total_steps):
    """SimCLR on the ResNet's stem alone (conv → sync BN → ReLU → pool) and the real
    projector: what the 8-device equality depends on, at a fraction of the compile time."""
    method = SimCLR(config, total_steps)
    encoder = method.online.encoder.clone(stage_sizes=(0, 0, 0, 0))
    method.online = method.online.clone(encoder=encoder)
    return method


def test_registered_and_imagenet_preset_holds_the_papers_numbers():
    assert get_method("simclr") is SimCLR
    c = _config("imagenet")
    assert (c.method, c.batch_size, c.epochs, c.temperature, c.bn_group, c.augment.preset) == (
        "simclr",
        4096,
        100,
        0.1,
        "sync",
        "simclr",
    )
    assert (
        c.optimizer.name,
        c.optimizer.base_lr,
        c.optimizer.weight_decay,
        c.optimizer.warmup_epochs,
        c.optimizer.schedule,
    ) == ("lars", 0.3, 1e-6, 10.0, "cosine")
    assert _config("imagenet_1000").epochs == 1000
    assert _config("fashion_mnist").batch_size == 256


def test_projector_is_the_papers_one_hidden_layer_2048_bn_relu_128_on_resnet50():
    """SimCLR §2.1: g(h) = W2 σ(W1 h); 2048 → 128 as the v1 code (and DetCon A.2) say."""
    method = SimCLR(_config("imagenet"), 10)
    images = jnp.zeros((2, 32, 32, 3))
    params = jax.eval_shape(lambda: method.init(jax.random.PRNGKey(0), images))["params"]
    shapes = jax.tree.map(lambda leaf: leaf.shape, params["projector"])
    assert shapes == {
        "hidden0_dense": {"kernel": (2048, 2048)},
        "hidden0_bn": {"scale": (2048,), "bias": (2048,)},
        "out_dense": {"kernel": (2048, 128)},
    }


def _run_steps(config, devices, batches, total_steps=10):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    method = _tiny_method(config, total_steps)
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, total_steps)
    state = engine.make_init(method, tx, mesh, (SIZE, SIZE, 3), 10)(jax.random.PRNGKey(0))
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    losses = []
    for batch in batches:
        state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def test_eight_device_step_equals_one_device_step_on_the_same_global_batch():
    config = _config()
    batches = [two_view_batch(config.batch_size, SIZE, seed=s) for s in range(2)]
    state1, losses1 = _run_steps(config, 1, batches)
    state8, losses8 = _run_steps(config, 8, batches)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
    # atol 1e-5: a BN bias before another BN gets a gradient that nearly cancels over the
    # batch, so the float32 summation order shows there and in what follows it.
    assert_trees_close(state8.params, state1.params, rtol=1e-4, atol=1e-5)
    assert_trees_close(state8.batch_stats, state1.batch_stats, rtol=1e-4, atol=1e-5)
    assert state8.target_params is None and state8.queue is None


def _pipeline_available():
    return importlib.util.find_spec("ssljax.data.pipeline") is not None


@pytest.mark.skipif(not _pipeline_available(), reason="ssljax.data.pipeline not written yet")
def test_smoke_run_trains_simclr_end_to_end(tmp_path):
    from ssljax import train

    config = _config("smoke")
    config.total_steps = 2
    state = train.train(config, tmp_path)
    assert int(state.step) == 2
    assert (tmp_path / "checkpoints").exists()

"""Tests for ssljax.methods.dino and DINO's losses in ssljax.losses."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssljax import configlib, engine, losses, sharding
from ssljax.methods import get_method
from ssljax.methods.dino import Dino, WeightNormDense
from ssljax.optim import build_optimizer
from ssljax.sharding import DATA_AXIS

CONFIGS = Path(__file__).parent.parent / "configs"
GLOBAL, LOCAL = 16, 8


def _config(preset="smoke", **overrides):
    config = configlib.load(str(CONFIGS / f"sslight_dino.py:{preset}"))
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
    return config


def _tiny_method(config, total_steps=10):
    """DINO on the ResNet's stem alone: heads, crops, centre and EMA are the method's own."""
    method = Dino(config, total_steps)
    encoder = method.online.encoder.clone(stage_sizes=(0, 0, 0, 0))
    method.online = method.target = method.online.clone(encoder=encoder)
    return method


def multicrop_batch(batch_size, num_local=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "global": rng.uniform(size=(batch_size, 2, GLOBAL, GLOBAL, 3)).astype(np.float32),
        "local": rng.uniform(size=(batch_size, num_local, LOCAL, LOCAL, 3)).astype(np.float32),
        "pixel_scale_ratio": rng.uniform(0.5, 1.5, size=(batch_size,)).astype(np.float32),
        "label": rng.integers(0, 10, size=(batch_size,)).astype(np.int32),
    }


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_dino(student, teacher, center, student_temp, teacher_temp, alpha):
    """DINO eq. 3 with SSLight's eq. 3, one pair at a time."""
    targets = _softmax((teacher - center) / teacher_temp)
    log_p = np.log(_softmax(student / student_temp))
    gg, gl = [], []
    for t in range(len(teacher)):
        for v in range(len(student)):
            if v != t:
                (gg if v < len(teacher) else gl).append(-(targets[t] * log_p[v]).sum(-1).mean())
    return alpha * np.mean(gg) + (1 - alpha) * np.mean(gl)


def test_dino_loss_matches_numpy():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(8, 4, 16)), rng.normal(size=(2, 4, 16))
    center = rng.normal(size=(16,)) * 0.1
    got = losses.dino_loss(
        jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(center), 0.1, 0.04, 0.4
    )
    expected = numpy_dino(student, teacher, center, 0.1, 0.04, 0.4)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_centre_moves_towards_the_mean_teacher_output_of_the_global_batch():
    """c ← 0.9·c + 0.1·mean over all devices' images and both global crops."""
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(2, 16, 5)).astype(np.float32)  # [crops, B, K]
    center = rng.normal(size=(5,)).astype(np.float32)
    mesh = sharding.make_mesh()
    update = jax.jit(
        jax.shard_map(
            lambda c, t: losses.dino_center_update(c, t, 0.9, DATA_AXIS),
            mesh=mesh,
            in_specs=(P(), P(None, DATA_AXIS)),
            out_specs=P(),
            check_vma=False,
        )
    )
    expected = 0.9 * center + 0.1 * teacher.mean(axis=(0, 1))
    np.testing.assert_allclose(update(center, teacher), expected, rtol=1e-5)
    single = losses.dino_center_update(jnp.asarray(center), jnp.asarray(teacher), 0.9)
    np.testing.assert_allclose(single, expected, rtol=1e-5)


def test_weight_normalised_last_layer_has_unit_columns():
    layer = WeightNormDense(7)
    x = losses.l2_normalize(jnp.asarray(np.random.default_rng(2).normal(size=(3, 4))))
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    assert set(params) == {"direction"}
    scaled = {"direction": params["direction"] * 5.0}
    np.testing.assert_allclose(
        layer.apply({"params": scaled}, x), layer.apply({"params": params}, x), rtol=1e-5
    )
    assert float(jnp.max(jnp.abs(layer.apply({"params": params}, x)))) <= 1.0 + 1e-6
    assert set(WeightNormDense(7, fixed_norm=False).init(jax.random.PRNGKey(0), x)["params"]) == {
        "direction",
        "norm",
    }


def test_teacher_temperature_warms_up_linearly_then_stays():
    config = _config(dino__warmup_teacher_temperature_epochs=2.0, epochs=10)
    method = Dino(config, total_steps=100)  # 10 steps an epoch: warm-up over 20 steps
    temps = [float(method.teacher_temperature(jnp.asarray(s))) for s in (0, 10, 20, 50)]
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)


def _setup(config, devices, total_steps=10):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    method = _tiny_method(config, total_steps)
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, total_steps)
    init = engine.make_init(method, tx, mesh, (GLOBAL, GLOBAL, 3), 10)
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    return mesh, method, init, step


def _run(config, devices, batches):
    mesh, _, init, step = _setup(config, devices)
    state = init(jax.random.PRNGKey(0))
    out = []
    for batch in batches:
        state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
        out.append(jax.device_get(metrics))
    return jax.device_get(state), out


def test_eight_device_step_equals_one_device_step():
    """Sync BN, the centre's pmean and the per-device batch means make 8 devices one."""
    config = _config(dino__freeze_last_layer_epochs=0.0)
    batches = [multicrop_batch(config.batch_size, seed=s) for s in range(2)]
    state1, metrics1 = _run(config, 1, batches)
    state8, metrics8 = _run(config, 8, batches)
    for m1, m8 in zip(metrics1, metrics8):
        for name in ("loss", "teacher_entropy", "pixel_scale_ratio"):
            assert float(m8[name]) == pytest.approx(float(m1[name]), rel=1e-4), name
    np.testing.assert_allclose(state8.center, state1.center, rtol=1e-4, atol=1e-7)
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        # near-zero parameters (|p| ~ 1e-6) differ by float32 reduction order
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-6)
    assert float(np.abs(state8.center).sum()) > 0


def test_last_layer_gets_no_gradient_during_the_first_epoch():
    config = _config(dino__freeze_last_layer_epochs=1.0, epochs=10)
    mesh, method, init, _ = _setup(config, 1, total_steps=100)  # frozen for 10 steps
    state = init(jax.random.PRNGKey(0))
    batch = sharding.global_batch(multicrop_batch(config.batch_size), mesh)

    def grads_at(step):
        s = state.replace(step=jnp.asarray(step, jnp.int32))
        fn = jax.shard_map(
            jax.grad(lambda p, b: method.loss(p, s, b, jax.random.PRNGKey(0))[0]),
            mesh=mesh,
            in_specs=(P(), P(DATA_AXIS)),
            out_specs=P(),
            check_vma=False,
        )
        return jax.device_get(jax.jit(fn)(state.params, batch))

    frozen, thawed = grads_at(0), grads_at(10)
    last = ("projector", "last_layer", "direction")
    assert np.all(frozen[last[0]][last[1]][last[2]] == 0)
    assert np.abs(thawed[last[0]][last[1]][last[2]]).max() > 0
    assert np.abs(frozen["projector"]["bottleneck_dense"]["kernel"]).max() > 0


def test_student_uses_drop_path_and_the_teacher_does_not():
    """DINO's main_dino.py (and SSLight's model/dino.py) give the student ViT
    drop_path_rate and build the teacher without: the teacher's outputs (here through the
    centre update) do not depend on the loss's rng, the student's do."""
    config = _config(
        model__name="vit_tiny",
        model__depth=2,
        model__patch_size=4,
        model__width=0.25,
        model__drop_path_rate=0.5,
        multicrop__num_local=2,
    )
    mesh = sharding.make_mesh(jax.devices()[:1])
    method = Dino(config, total_steps=10)
    assert method.online.encoder.drop_path_rate == 0.5
    assert method.target.encoder.drop_path_rate == 0.0
    assert method.encoder.drop_path_rate == 0.0  # evaluation: deterministic
    tx, _ = build_optimizer(config.optimizer, config.batch_size, 5, 10)
    state = engine.make_init(method, tx, mesh, (GLOBAL, GLOBAL, 3), 10)(jax.random.PRNGKey(0))
    batch = sharding.global_batch(multicrop_batch(config.batch_size, num_local=2), mesh)

    def outputs(rng):
        def loss(state, batch):
            aux = method.loss(state.params, state, batch, rng)[1]
            return aux["updates"]["center"], aux["features"]

        fn = jax.shard_map(
            loss, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=False
        )
        return jax.device_get(jax.jit(fn)(state, batch))

    center0, student0 = outputs(jax.random.PRNGKey(0))
    center1, student1 = outputs(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(center0, center1)
    assert np.abs(center0).sum() > 0
    assert not np.allclose(student0, student1)


def test_registered_and_presets_hold_the_papers_numbers():
    assert get_method("dino") is Dino
    config = _config("recipe")
    dino = config.dino
    assert (tuple(dino.hidden_dims), dino.bottleneck_dim, dino.out_dim) == (
        (2048, 2048),
        256,
        4096,
    )
    assert dino.norm_last_layer and dino.use_bn
    assert (
        dino.student_temperature,
        dino.warmup_teacher_temperature,
        dino.teacher_temperature,
    ) == (
        0.1,
        0.04,
        0.07,
    )
    assert (dino.center_momentum, config.tau_base, config.model.name) == (
        0.9,
        0.996,
        "mobilenet_v2",
    )


class _LinearEncoder(nn.Module):
    """A stand-in for the ResNet: one learnt linear map of fixed feature vectors."""

    features: int = 64

    @nn.compact
    def __call__(self, x, train):
        return {"pooled": nn.Dense(self.features, name="dense")(x.reshape(x.shape[0], -1))}


def _clustered_crops(rng, batch, dim=64, classes=10, crops=8):
    """Positive, strongly correlated vectors like a CNN's pooled ReLU features (mean pairwise
    cosine ≈ 0.7, as ResNet-18 × 1/8 at init on Fashion-MNIST): class centre + image
    offset + per-crop noise, shifted and rectified."""
    centres = np.random.default_rng(123).normal(size=(classes, dim))
    labels = rng.integers(0, classes, batch)
    images = centres[labels] + 0.7 * rng.normal(size=(batch, dim))
    views = np.maximum(images[:, None] + 0.5 * rng.normal(size=(batch, crops, dim)) + 1.0, 0)
    return views.astype(np.float32), labels.astype(np.int32)


@pytest.mark.parametrize("preset", ["fashion_mnist_baseline", "fashion_mnist"])
def test_fashion_mnist_preset_does_not_collapse_to_a_uniform_teacher(preset):
    """The CPU presets' head, temperatures, LARS and EMA (the real method and train step, a
    linear encoder) on clustered features: 150 of the 937 steps must leave the teacher far
    from uniform. The first preset (head without BN, τ_t warmed up 0.04 → 0.07 over 140
    steps) reached loss = teacher entropy = log K by step ~100 here, as its real run did;
    either change alone still left the teacher entropy above log K − 1.4 at step 150."""
    config = _config(preset)
    total = 937
    method = Dino(config, total)
    method.online = method.target = method.online.clone(encoder=_LinearEncoder())
    mesh = sharding.make_mesh(jax.devices()[:1])
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, total, total)
    state = engine.make_init(method, tx, mesh, (64,), 10)(jax.random.PRNGKey(0))
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    rng = np.random.default_rng(0)
    for _ in range(150):
        crops, labels = _clustered_crops(rng, config.batch_size)
        batch = {
            "global": crops[:, :2],
            "local": crops[:, 2:],
            "label": labels,
            "pixel_scale_ratio": np.ones(config.batch_size, np.float32),
        }
        state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
    metrics = jax.device_get(metrics)
    log_k = np.log(config.dino.out_dim)
    assert float(metrics["teacher_entropy"]) < log_k - 2.5
    assert float(metrics["loss"]) < log_k - 1.0


def test_cnn_and_vit_presets_hold_the_sslight_codes_dino_settings():
    """SSLight's dino_cnn_sslight.yaml / dino_vit_sslight.yaml (values typed here)."""
    cnn = _config("recipe_resnet18")
    assert (cnn.dino.out_dim, cnn.dino.use_bn, cnn.dino.norm_last_layer) == (4096, True, True)
    assert cnn.dino.warmup_teacher_temperature_epochs == 50
    assert (cnn.optimizer.name, cnn.optimizer.base_lr, cnn.optimizer.weight_decay) == (
        "lars",
        0.48,
        1e-6,
    )
    assert cnn.optimizer.min_lr == 0.0048 and cnn.optimizer.weight_decay_end is None
    vit = _config("recipe_vit_tiny")
    assert (vit.dino.out_dim, vit.dino.use_bn, vit.dino.norm_last_layer) == (65536, False, False)
    assert vit.dino.warmup_teacher_temperature_epochs == 30
    assert (vit.optimizer.name, vit.optimizer.base_lr, vit.optimizer.min_lr) == (
        "adamw",
        5e-4,
        1e-5,
    )
    assert (vit.optimizer.weight_decay, vit.optimizer.weight_decay_end) == (0.04, 0.4)
    # dino_vit_sslight.yaml and dino_vit_baseline.yaml: VIT.DROP_PATH_RATE 0.1 (the student's)
    for preset in ("recipe_vit_tiny", "baseline_vit_tiny", "recipe_vit_small"):
        assert _config(preset).model.drop_path_rate == 0.1, preset
    assert cnn.model.drop_path_rate == 0.0 and _config("smoke").model.drop_path_rate == 0.0

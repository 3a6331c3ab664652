import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close
from jax.sharding import PartitionSpec as P

from ssljax import configlib, engine, sharding
from ssljax.errors import UserError
from ssljax.methods import get_method
from ssljax.methods.base import apply_train
from ssljax.methods.byol import Byol
from ssljax.methods.detcon import head_bn_group, mask_pool
from ssljax.methods.detcon_b import DetConB
from ssljax.methods.detcon_s import DetConS
from ssljax.optim import build_optimizer
from ssljax.sharding import DATA_AXIS

CONFIGS = Path(__file__).parent.parent / "configs"
SIZE = 32
GRID = 4  # ResNet-18 small stem at 32 px


def _config(name, preset="smoke"):
    config = configlib.load(str(CONFIGS / f"{name}.py:{preset}"))
    config.optimizer.warmup_epochs = 0.0
    return config


def _contract_batch(batch_size, num_samples=16, seed=0, grid=GRID):
    """A batch in the masks pipeline's contract: ids are arbitrary int32 (> 255 too),
    each sampled id owns a cell of its own view, some are absent from the other view."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, SIZE, SIZE, 3)
    batch = {
        "view1": rng.uniform(size=shape).astype(np.float32),
        "view2": rng.uniform(size=shape).astype(np.float32),
        "label": rng.integers(0, 10, size=(batch_size,)).astype(np.int32),
    }
    mask1 = np.zeros((batch_size, grid, grid), np.int32)
    mask2 = np.zeros_like(mask1)
    ids1 = np.zeros((batch_size, num_samples), np.int32)
    ids2 = np.zeros_like(ids1)
    for i in range(batch_size):
        segments = rng.choice(100_000, size=rng.integers(2, 7), replace=False).astype(np.int32)
        mask1[i] = rng.choice(segments, size=(grid, grid))
        mask2[i] = rng.choice(segments[: max(1, len(segments) - 1)], size=(grid, grid))
        ids1[i] = rng.choice(np.unique(mask1[i]), size=num_samples)
        present2 = np.unique(mask2[i])
        fallback = rng.choice(present2, size=num_samples)
        ids2[i] = np.where(np.isin(ids1[i], present2), ids1[i], fallback)
    return dict(batch, mask1=mask1, mask2=mask2, ids1=ids1, ids2=ids2)


def _global_mask_batch(batch_size, num_samples=1, seed=0):
    batch = _contract_batch(batch_size, num_samples, seed)
    for key in ("mask1", "mask2", "ids1", "ids2"):
        batch[key] = np.zeros_like(batch[key])
    return batch


def _init(method, config, devices=8, num_classes=None):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    tx, _ = build_optimizer(config.optimizer, config.batch_size, 5, 10)
    init = engine.make_init(method, tx, mesh, (SIZE, SIZE, 3), num_classes)
    return mesh, init(jax.random.PRNGKey(0))


def _per_device(fn, mesh, out_specs=None):
    """fn(params, state, batch) run as the engine runs a loss: inside shard_map."""
    return jax.jit(
        jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=(P(), P(), P(DATA_AXIS)),
            out_specs=P() if out_specs is None else out_specs,
            check_vma=False,
        )
    )


def test_mask_pool_is_the_per_segment_mean_of_feature_cells():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
    mask = np.array(
        [
            [[7, 7, 300], [7, 300, 300], [70000, 7, 7]],
            [[0, 0, 0], [0, 0, 0], [0, 0, 1]],
        ],
        np.int32,
    )
    ids = np.array([[300, 7, 70000, 300, 12], [1, 0, 0, 1, 0]], np.int32)
    pooled = np.asarray(mask_pool(jnp.asarray(features), jnp.asarray(mask), jnp.asarray(ids)))
    assert pooled.shape == (2, 5, 5)
    for i in range(2):
        for r in range(5):
            cells = features[i][mask[i] == ids[i, r]]
            expected = cells.mean(0) if len(cells) else np.zeros(5)  # 12: absent, guarded
            np.testing.assert_allclose(pooled[i, r], expected, rtol=1e-6, atol=1e-6)


def test_mask_grid_that_does_not_match_the_features_is_a_user_error():
    with pytest.raises(UserError, match="feature grid"):
        mask_pool(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 7, 7), jnp.int32), jnp.zeros((2, 16)))


def test_config_without_masks_or_with_the_wrong_grid_is_a_user_error():
    config = _config("detcon_b")
    config.masks.kind = "none"
    with pytest.raises(UserError, match="masks.kind"):
        DetConB(config, 10)
    config = _config("detcon_s")
    config.masks.grid = 7
    with pytest.raises(UserError, match="masks.grid=4"):
        DetConS(config, 10)


def test_heads_normalise_over_all_masks_of_the_same_images():
    """The heads see b·R rows: 'sync'/'local' stay as they are, n images become n·R rows."""
    config = _config("detcon_b")
    assert head_bn_group(config) == "sync"
    config.bn_group = "2"
    assert head_bn_group(config) == 2 * config.masks.num_samples


def test_registered_and_presets_hold_the_papers_numbers():
    assert get_method("detcon_s") is DetConS and get_method("detcon_b") is DetConB
    b = _config("detcon_b", "imagenet")
    s = _config("detcon_s", "imagenet")
    for c in (b, s):
        assert c.model.name == "resnet50" and c.dataset.image_size == 224
        assert (c.batch_size, c.epochs, c.temperature, c.bn_group) == (4096, 1000, 0.1, "sync")
        assert (c.optimizer.name, c.optimizer.schedule) == ("lars", "cosine")
        assert (c.masks.kind, c.masks.fh_scales, c.masks.fh_sigma) == ("fh", (1000,), 0.8)
        assert (c.masks.fh_min_size, c.masks.grid, c.masks.num_samples) == (1000, 7, 16)
    assert (b.method, b.augment.preset, b.tau_base) == ("detcon_b", "byol", 0.996)
    assert (b.optimizer.base_lr, b.optimizer.weight_decay) == (0.2, 1.5e-6)
    assert (b.projector.hidden_dims, b.projector.out_dim) == ((4096,), 256)
    assert (b.predictor.hidden_dims, b.predictor.out_dim) == ((4096,), 256)
    assert (s.method, s.augment.preset) == ("detcon_s", "simclr")
    assert (s.optimizer.base_lr, s.optimizer.weight_decay) == (0.3, 1e-6)
    assert (s.projector.hidden_dims, s.projector.out_dim) == ((2048,), 128)
    for name in ("detcon_b", "detcon_s"):
        coco = _config(name, "coco")
        assert (coco.masks.fh_scales, coco.masks.fh_min_size) == ((500, 1000, 1500), 0)
        assert (coco.optimizer.schedule, coco.optimizer.decay_at) == ("steps", (0.96, 0.98))
        small = _config(name, "fashion_mnist")
        assert (small.masks.grid, small.masks.compute_in_pipeline) == (GRID, True)


def test_detcon_s_with_one_global_mask_is_twice_simclr_built_from_simclrs_own_preset():
    """Paper §3.1: one global mask recovers SimCLR. SimCLR is built from configs/simclr.py
    (its params drive both losses, so any difference in the heads fails). `detcon_loss`
    sums its two directions where `nt_xent` averages them: loss and gradient are 2×."""
    from ssljax.methods.simclr import SimCLR

    config = _config("detcon_s")
    config.masks.num_samples = 1
    simclr_config = configlib.load(str(CONFIGS / "simclr.py:smoke"))
    simclr_config.optimizer.warmup_epochs = 0.0
    assert simclr_config.batch_size == config.batch_size
    detcon, simclr = DetConS(config, 10), SimCLR(simclr_config, 10)
    mesh, state = _init(simclr, simclr_config)
    batch = sharding.global_batch(_global_mask_batch(config.batch_size), mesh)

    def both(params, state, batch):
        def loss_of(method):
            return lambda p: method.loss(p, state, batch, jax.random.PRNGKey(0))[0]

        grad_d = jax.lax.pmean(jax.grad(loss_of(detcon))(params), DATA_AXIS)
        grad_s = jax.lax.pmean(jax.grad(loss_of(simclr))(params), DATA_AXIS)
        values = jnp.stack([loss_of(detcon)(params), loss_of(simclr)(params)])
        return jax.lax.pmean(values, DATA_AXIS), grad_d, grad_s

    (loss_d, loss_s), grad_d, grad_s = _per_device(both, mesh)(state.params, state, batch)
    assert float(loss_d) == pytest.approx(2 * float(loss_s), rel=1e-5)
    twice = jax.tree.map(lambda g: 2 * g, grad_s)
    assert_trees_close(grad_d, twice, rtol=1e-3, atol=1e-6)


def test_detcon_s_and_simclr_presets_share_the_papers_head_and_optimiser():
    """DetCon A.2: DetCon_S's projector is SimCLR's two-layer MLP, 2048 → 128; both
    optimise with LARS base_lr 0.3, wd 1e-6 (SimCLR §B.1)."""
    for preset in ("imagenet", "fashion_mnist", "smoke"):
        s = configlib.load(str(CONFIGS / f"simclr.py:{preset}"))
        d = configlib.load(str(CONFIGS / f"detcon_s.py:{preset}"))
        assert s.projector.to_dict() == d.projector.to_dict(), preset
        assert (s.temperature, s.augment.preset, s.bn_group) == (
            d.temperature,
            d.augment.preset,
            d.bn_group,
        )
    s = configlib.load(str(CONFIGS / "simclr.py:imagenet"))
    assert (s.projector.hidden_dims, s.projector.out_dim) == ((2048,), 128)
    assert (s.optimizer.base_lr, s.optimizer.weight_decay, s.temperature) == (0.3, 1e-6, 0.1)


def test_sixteen_copies_of_the_global_mask_are_simclr_up_to_scale_and_shift():
    """Paper Table 4 (a): duplicating the global mask leaves the objective as it was. With
    the reference weighting (1/count per query, mean over b·R) R copies give
    L_R = (L_1 + 2 log R) / R: every logit appears R times (+log R per direction), and
    the R copies of a query share a weight of 1 where the mean divides by b·R."""
    config = _config("detcon_s")
    method = DetConS(config, 10)
    mesh, state = _init(method, config)

    def loss(params, state, batch):
        value = method.loss(params, state, batch, jax.random.PRNGKey(0))[0]
        return jax.lax.pmean(value, DATA_AXIS)

    run = _per_device(loss, mesh)
    once = float(run(state.params, state, sharding.global_batch(_global_mask_batch(32, 1), mesh)))
    copies = sharding.global_batch(_global_mask_batch(32, 16), mesh)
    sixteen = float(run(state.params, state, copies))
    assert sixteen == pytest.approx((once + 2 * np.log(16)) / 16, rel=1e-5)


def _numpy_log_partition(pred1, pred2, target1, target2, temperature):
    """Σ over directions of mean_i log(Σ_j e^{p_i·t'_j/T} + Σ_{j≠i} e^{p_i·t_j/T})."""

    def normalize(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    total = 0.0
    for pred, same, other in ((pred1, target1, target2), (pred2, target2, target1)):
        p, same, other = normalize(pred), normalize(same), normalize(other)
        logits_other = p @ other.T / temperature
        logits_same = p @ same.T / temperature
        np.fill_diagonal(logits_same, -np.inf)
        logits = np.concatenate([logits_other, logits_same], axis=1)
        top = logits.max(1, keepdims=True)
        total += np.mean(np.log(np.exp(logits - top).sum(1)) + top[:, 0])
    return total


def test_detcon_b_with_one_global_mask_is_nce_flavoured_byol():
    """With one global mask DetCon_B runs BYOL's networks, and its loss is BYOL's
    regression loss as the positive term plus a log-partition over negatives:
    L = (L_BYOL − 4) / (2T) + Σ_views mean_i log Σ_candidates exp(p_i·t_j / T),
    since ‖p − t‖² = 2 − 2 p·t for unit vectors."""
    config = _config("detcon_b")
    config.masks.num_samples = 1
    detcon, byol = DetConB(config, 10), Byol(config, 10)
    mesh, state = _init(byol, config)
    batch = sharding.global_batch(_global_mask_batch(config.batch_size), mesh)

    def run(params, state, batch):
        rng = jax.random.PRNGKey(0)
        loss_d = jax.lax.pmean(detcon.loss(params, state, batch, rng)[0], DATA_AXIS)
        loss_b = jax.lax.pmean(byol.loss(params, state, batch, rng)[0], DATA_AXIS)
        outputs = []
        for network, p, stats, key in (
            (byol.online, params, state.batch_stats, "prediction"),
            (byol.target, state.target_params, state.target_batch_stats, "projection"),
        ):
            for view in ("view1", "view2"):
                out, stats = apply_train(network, p, stats, batch[view])
                outputs.append(out[key])
        return loss_d, loss_b, outputs

    out_specs = (P(), P(), [P(DATA_AXIS)] * 4)
    loss_d, loss_b, outputs = _per_device(run, mesh, out_specs)(state.params, state, batch)
    pred1, pred2, target1, target2 = (np.asarray(x, np.float64) for x in outputs)
    log_partition = _numpy_log_partition(pred1, pred2, target1, target2, config.temperature)
    expected = (float(loss_b) - 4.0) / (2 * config.temperature) + log_partition
    assert float(loss_d) == pytest.approx(expected, rel=1e-4)


def test_detcon_b_target_gets_no_gradient():
    config = _config("detcon_b")
    method = DetConB(config, 10)
    mesh, state = _init(method, config)
    batch = sharding.global_batch(_contract_batch(config.batch_size), mesh)

    def target_grad(params, state, batch):
        def loss(target_params):
            moved = state.replace(target_params=target_params)
            return method.loss(params, moved, batch, jax.random.PRNGKey(0))[0]

        return jax.lax.pmean(jax.grad(loss)(state.target_params), DATA_AXIS)

    grads = _per_device(target_grad, mesh)(state.params, state, batch)
    for leaf in jax.tree.leaves(grads):
        assert not np.any(np.asarray(leaf))


def _run_steps(method, config, devices, batches, total_steps=10):
    """(state on the devices, losses, last metrics, the step function, its mesh)."""
    mesh = sharding.make_mesh(jax.devices()[:devices])
    tx, schedule = build_optimizer(config.optimizer, config.batch_size, 5, total_steps)
    state = engine.make_init(method, tx, mesh, (SIZE, SIZE, 3), 10)(jax.random.PRNGKey(0))
    step = engine.make_train_step(method, tx, schedule, mesh, 10)
    losses_, metrics = [], None
    for batch in batches:
        state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
        losses_.append(float(metrics["loss"]))
    return state, losses_, jax.device_get(metrics), step, mesh


def test_detcon_b_eight_device_step_equals_one_device_step_and_target_follows_ema():
    config = _config("detcon_b")
    method = DetConB(config, 10)
    batches = [_contract_batch(config.batch_size, seed=s) for s in range(2)]
    state1, losses1, _, _, _ = _run_steps(method, config, 1, batches)
    state8, losses8, metrics, step, mesh = _run_steps(method, config, 8, batches)
    state1, before = jax.device_get(state1), jax.device_get(state8)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
    for field in ("params", "target_params", "batch_stats", "target_batch_stats"):
        assert_trees_close(getattr(before, field), getattr(state1, field), rtol=1e-4, atol=1e-5)
    assert 1.0 <= metrics["distinct_masks"] <= 6.0 and 0.0 < metrics["matched_masks"] <= 1.0

    # One more step: the target moves by exactly the EMA rule, and only it.
    batch = sharding.global_batch(_contract_batch(config.batch_size, seed=5), mesh)
    after, metrics = step(state8, batch, jax.random.PRNGKey(1))
    after = jax.device_get(after)
    tau = float(metrics["tau"])
    assert config.tau_base < tau < 1.0
    assert set(after.target_params) == {"encoder", "projector"}
    online = {k: after.params[k] for k in after.target_params}
    expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, before.target_params, online)
    assert_trees_close(after.target_params, expected, rtol=1e-5, atol=1e-7)


def _masks_pipeline_available():
    if importlib.util.find_spec("ssljax.data.masks") is None:
        return False
    source = Path(importlib.util.find_spec("ssljax.data.pipeline").origin).read_text()
    return "mask1" in source


@pytest.mark.skipif(
    not _masks_pipeline_available(),
    reason="the masks pipeline (ssljax.data.masks, mask1/ids1 in the batches) is not in yet",
)
def test_smoke_run_trains_detcon_b_end_to_end(tmp_path):
    from ssljax import train

    config = _config("detcon_b")
    config.total_steps = 2
    state = train.train(config, tmp_path)
    assert int(state.step) == 2
    assert (tmp_path / "checkpoints").exists()

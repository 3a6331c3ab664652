from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import erf

from ssljax import config_checks, configlib, engine, sharding, train
from ssljax.errors import UserError
from ssljax.methods.base import build_encoder
from ssljax.methods.byol import Byol
from ssljax.models.backbones import BACKBONES, build_backbone
from ssljax.models.mobilenet_v2 import MobileNetV2, build_mobilenet_v2, make_divisible
from ssljax.models.vit import (
    EncoderBlock,
    VisionTransformer,
    build_vit,
    drop_path,
    resize_position_embedding,
)
from ssljax.optim import adaptation_mask, build_optimizer

CONFIGS = Path(__file__).parent.parent / "configs"


def _param_shapes(model, image_size):
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))


def _random_variables(model, image_size, seed=0):
    """Variables of `model` filled on the host: N(0, 0.05²) weights, unit scales and
    variances, zero biases and means. Cheaper than compiling the model's own init."""
    rng = np.random.default_rng(seed)

    def fill(path, shape):
        name = str(path[-1].key)
        if name in ("scale", "var"):
            return np.ones(shape.shape, np.float32)
        if name in ("bias", "mean"):
            return np.zeros(shape.shape, np.float32)
        return (0.05 * rng.standard_normal(shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, _param_shapes(model, image_size))


def _count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree))


def _paths(mask) -> dict[str, bool]:
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    return {"/".join(str(k.key) for k in path): value for path, value in flat}


@pytest.mark.parametrize(
    "model, paper, reference",
    [
        # Sandler et al. 2018 (Table 4: 3.4 M with the 1000-way classifier); torchvision's
        # features without the classifier.
        (build_mobilenet_v2(), 2.2e6, 2_223_872),
        # ViT-Ti/16, ViT-S/16 without the head (DeiT, Touvron et al. 2021: 5 M / 22 M with
        # it); timm's vit_{tiny,small}_patch16_224 (5,717,416 / 22,050,664) less the
        # 1000-way head.
        (build_vit("vit_tiny"), 5.5e6, 5_524_416),
        (build_vit("vit_small"), 21.7e6, 21_665_664),
    ],
    ids=["mobilenet_v2", "vit_tiny", "vit_small"],
)
def test_parameter_counts_without_heads_match_the_papers(model, paper, reference):
    variables = _param_shapes(model, 224)
    count = _count(variables["params"])
    assert count == reference
    assert abs(count - paper) / paper < 0.03


def test_make_divisible_rounds_widths_like_torchvision():
    assert [make_divisible(32 * w) for w in (1.0, 0.5, 0.35, 0.25)] == [32, 16, 16, 8]
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(24 * 0.75) == 24  # 18 → 16 would lose > 10%


@pytest.mark.parametrize("small_stem, image_size", [(False, 224), (True, 32)])
def test_mobilenet_feature_grid_agrees_with_the_real_output_for_every_layer(small_stem, image_size):
    model = build_mobilenet_v2(width=0.25, small_stem=small_stem)
    images = jnp.zeros((2, image_size, image_size, 3))
    shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), images, False))
    out = shapes[0]
    assert set(out) == {"layer1", "layer2", "layer3", "layer4", "pooled"}
    for layer, channels in model.layer_features.items():
        side = model.feature_grid(image_size, layer)
        assert out[layer].shape == (2, side, side, channels), layer
    assert model.layer_features == {"layer1": 8, "layer2": 8, "layer3": 24, "layer4": 1280}
    assert out["pooled"].shape == (2, model.num_features) == (2, 1280)
    assert model.feature_grid(image_size) == (7 if image_size == 224 else 4)
    assert model.total_stride == (32 if not small_stem else 8)


@pytest.fixture(scope="module")
def tiny_mobilenet():
    """MobileNetV2 × 0.25 with the 32-px stem, and variables for it."""
    model = build_mobilenet_v2(width=0.25, small_stem=True, axis_name=None)
    return model, _random_variables(model, 32)


def test_mobilenet_at_32px_pools_layer4_and_has_residuals_only_where_shapes_agree(tiny_mobilenet):
    model, variables = tiny_mobilenet
    images = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
    out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, images
    )
    assert out["layer4"].shape == (4, 4, 4, 1280)
    np.testing.assert_allclose(out["pooled"], out["layer4"].mean(axis=(1, 2)), rtol=1e-5)
    assert np.all(np.asarray(out["layer4"]) >= 0) and np.all(np.asarray(out["layer4"]) <= 6)
    params = variables["params"]
    assert "expand_conv" not in params["stage0_block0"]  # t = 1
    kernel = params["stage1_block0"]["depthwise_conv"]["kernel"]
    assert kernel.shape == (3, 3, 1, 8 * 6)  # one 3×3 filter per channel


def test_vit_outputs_the_cls_token_and_a_patch_token_map_at_32px():
    model = build_vit("vit_tiny", image_size=32, patch_size=4, width=0.25, depth=2)
    assert (model.dim, model.num_heads, model.depth, model.pos_grid) == (48, 3, 2, 8)
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))
    assert set(_param_shapes(model, 32)) == {"params"}  # no batch norm
    variables = _random_variables(model, 32)
    out = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, images)
    assert set(out) == {"layer4", "pooled"}
    assert out["layer4"].shape == (2, 8, 8, 48) and out["pooled"].shape == (2, 48)
    assert model.num_features == 48 and model.feature_grid(32) == 8
    # Both come out of the final LayerNorm (scale 1, bias 0 here): zero mean per token.
    np.testing.assert_allclose(out["pooled"].mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out["layer4"].mean(-1), 0.0, atol=1e-5)


def test_vit_position_embedding_is_resized_for_other_image_sizes():
    model = build_vit("vit_tiny", image_size=224, width=0.25, depth=1)
    variables = _param_shapes(model, 224)
    assert variables["params"]["pos_embedding"].shape == (1 + 14 * 14, 48)
    for size, grid in ((96, 6), (32, 2), (240, 15)):
        images = jnp.zeros((1, size, size, 3))
        out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
        assert out["layer4"].shape == (1, grid, grid, 48)

    cls, per_channel = jnp.full((1, 4), -1.0), jnp.arange(4.0)
    table = jnp.concatenate([cls, jnp.tile(per_channel, (14 * 14, 1))])
    resized = resize_position_embedding(table, 6, 5)
    assert resized.shape == (1 + 6 * 5, 4)
    np.testing.assert_array_equal(resized[0], cls[0])  # the CLS position is kept
    np.testing.assert_allclose(resized[1:], jnp.tile(per_channel, (30, 1)), atol=1e-5)
    assert resize_position_embedding(table, 14, 14) is table


def test_vit_rejects_images_smaller_than_a_patch():
    with pytest.raises(UserError, match="patch_size"):
        build_vit("vit_tiny", image_size=8, patch_size=16)


def _numpy_drop_path(x, rate, uniform):
    """DINO's `drop_path` (vision_transformer.py) given its per-sample U[0, 1) draws."""
    keep = 1 - rate
    random_tensor = np.floor(keep + uniform.reshape((-1,) + (1,) * (x.ndim - 1)))
    return x / keep * random_tensor


def test_drop_path_zeroes_a_fraction_rate_of_samples_and_scales_the_rest_like_dinos():
    samples, rate = 20_000, 0.3
    x = np.random.default_rng(0).normal(size=(samples, 3, 2)).astype(np.float32)
    rng = jax.random.PRNGKey(7)
    got = np.asarray(drop_path(jnp.asarray(x), rate, rng))
    uniform = np.asarray(jax.random.uniform(rng, (samples, 1, 1)))
    np.testing.assert_allclose(got, _numpy_drop_path(x, rate, uniform), rtol=1e-6)
    dropped = np.all(got == 0, axis=(1, 2))
    assert abs(dropped.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / samples)
    np.testing.assert_allclose(got[~dropped], x[~dropped] / (1 - rate), rtol=1e-6)


def _numpy_block(x, p, rate, uniforms):
    """DINO's `Block.forward` in float64 numpy; `uniforms` are its two DropPath calls' draws."""

    def norm(x, q):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

    def dense(x, q):
        return x @ q["kernel"] + q["bias"]

    batch, tokens, dim = x.shape
    heads = 3
    qkv = dense(norm(x, p["norm1"]), p["attention"]["qkv"])
    q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).transpose(2, 0, 3, 1, 4)
    logits = q @ k.transpose(0, 1, 3, 2) * (dim // heads) ** -0.5
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    y = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    x = x + _numpy_drop_path(dense(y, p["attention"]["proj"]), rate, uniforms[0])
    h = dense(norm(x, p["norm2"]), p["mlp_fc1"])
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return x + _numpy_drop_path(dense(h, p["mlp_fc2"]), rate, uniforms[1])


def test_vit_block_drops_its_attention_and_mlp_branches_per_sample_independently():
    """Each sample's output is DINO's block with each branch kept (×1/(1 − p)) or dropped;
    each branch is dropped for a fraction p of the samples, both for p²."""
    samples, rate = 2000, 0.3
    block = EncoderBlock(num_heads=3, drop_path_rate=rate)
    x = np.random.default_rng(1).normal(size=(samples, 5, 12)).astype(np.float32)
    shapes = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0), x[:1]))
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape), shapes)["params"]
    got = np.asarray(
        jax.jit(lambda p, x, key: block.apply({"params": p}, x, train=True, rngs={"dropout": key}))(
            params, x, jax.random.PRNGKey(3)
        )
    )
    deterministic = block.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(
        deterministic, _numpy_block(x, params, 0.0, np.full((2, samples), 0.999)), atol=1e-4
    )
    # U = 0 drops a branch, U → 1 keeps it (floor(1 − p + U)).
    combos = [(a, m) for a in (0.0, 0.999) for m in (0.0, 0.999)]
    errors = []
    for draws in combos:
        uniforms = np.broadcast_to(np.array(draws)[:, None], (2, samples))
        error = np.abs(got - _numpy_block(x, params, rate, uniforms))
        errors.append(error.reshape(samples, -1).max(-1))
    errors = np.stack(errors)
    assert np.all(np.sort(errors, axis=0)[0] < 1e-4)  # every sample is one of the four
    assert np.all(np.sort(errors, axis=0)[1] > 1e-2)  # and only one
    which = np.argmin(errors, axis=0)
    attention_dropped = np.isin(which, (0, 1))
    mlp_dropped = np.isin(which, (0, 2))
    tolerance = 4 * np.sqrt(rate * (1 - rate) / samples)
    assert abs(attention_dropped.mean() - rate) < tolerance
    assert abs(mlp_dropped.mean() - rate) < tolerance
    assert abs((attention_dropped & mlp_dropped).mean() - rate**2) < tolerance


def test_vit_drop_path_rate_rises_linearly_over_the_blocks_like_dinos():
    model = build_vit("vit_tiny", 32, patch_size=4, width=0.25, drop_path_rate=0.1)
    # vision_transformer.py: dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
    np.testing.assert_allclose(model.drop_path_rates, [0.1 * i / 11 for i in range(12)])
    assert build_vit("vit_tiny", 32, patch_size=4, depth=1, drop_path_rate=0.1).drop_path_rates == (
        0.0,
    )


def test_vit_drop_path_acts_only_in_training_and_needs_a_dropout_rng_only_then():
    images = jax.random.uniform(jax.random.PRNGKey(1), (8, 32, 32, 3))
    plain = build_vit("vit_tiny", 32, patch_size=4, width=0.25, depth=2)
    stochastic = plain.clone(drop_path_rate=0.5)
    variables = _random_variables(plain, 32)
    expected = plain.apply(variables, images, train=False)
    for model, mode in ((plain, True), (stochastic, False)):  # no rng: none is needed
        out = model.apply(variables, images, train=mode)
        for name in expected:
            np.testing.assert_array_equal(out[name], expected[name])
    with pytest.raises(ValueError, match="'dropout' rng"):
        stochastic.apply(variables, images, train=True)

    def pooled(seed):
        rngs = {"dropout": jax.random.PRNGKey(seed)}
        return np.asarray(stochastic.apply(variables, images, train=True, rngs=rngs)["pooled"])

    np.testing.assert_array_equal(pooled(0), pooled(0))
    assert not np.allclose(pooled(0), pooled(1))
    assert not np.allclose(pooled(0), expected["pooled"])


def test_drop_path_rate_is_checked_and_only_dino_and_vits_take_it():
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    assert config.model.drop_path_rate == 0.0
    config.model.drop_path_rate = 1.0
    with pytest.raises(UserError, match="drop_path_rate=1.0: must be in"):
        config_checks.check(config)
    config.model.drop_path_rate = 0.1
    with pytest.raises(UserError, match="ViTs only, not resnet18"):
        build_encoder(config)
    config.model.name = "vit_tiny"
    config.model.patch_size = 4
    assert build_encoder(config).drop_path_rate == 0.1
    assert build_encoder(config, drop_path=False).drop_path_rate == 0.0
    with pytest.raises(UserError, match="byol does not train with stochastic depth"):
        Byol(config, total_steps=10)


def test_build_encoder_dispatches_on_the_model_name_and_keeps_bn_options():
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    config.model.name = "mobilenet_v2"
    encoder = build_encoder(config, bn_group=8, axis_name="data")
    assert isinstance(encoder, MobileNetV2)
    assert encoder.small_stem and encoder.width == config.model.width
    assert encoder.bn.keywords == {"group": 8, "axis_name": "data", "momentum": 0.9}

    config.model.name = "vit_small"
    config.model.patch_size = 4
    encoder = build_encoder(config)
    assert isinstance(encoder, VisionTransformer)
    assert (encoder.patch_size, encoder.pos_grid, encoder.depth) == (4, 8, 12)

    config.model.name = "vgg16"
    with pytest.raises(UserError, match="mobilenet_v2, vit_tiny, vit_small"):
        build_encoder(config)
    assert set(BACKBONES) >= {"resnet18", "resnet50", "mobilenet_v2", "vit_tiny", "vit_small"}


def test_resnet_configs_build_the_same_resnet_as_before():
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    encoder = build_backbone(config.model, 32, bn_group="sync")
    assert encoder.stage_sizes == (2, 2, 2, 2) and encoder.small_stem
    assert encoder.width == 1 / 16


def test_lars_leaves_depthwise_kernels_biases_and_bn_out_of_decay_and_trust_ratio(
    tiny_mobilenet,
):
    params = tiny_mobilenet[1]["params"]
    mask = _paths(adaptation_mask(params))
    depthwise = [p for p in mask if "depthwise_conv" in p]
    assert len(depthwise) == 17  # one per inverted residual block
    assert not any(mask[p] for p in depthwise)
    assert not any(v for p, v in mask.items() if p.endswith(("scale", "bias")))
    adapted = {p for p, v in mask.items() if v}
    assert adapted == {p for p in mask if p.endswith("kernel") and "depthwise" not in p}

    # One LARS step: an excluded leaf moves by -lr·g; an adapted one by the trust ratio
    # η‖w‖/‖g + wd·w‖ times -lr·(g + wd·w).
    opt = configlib.base_config().optimizer
    opt.weight_decay = 0.1
    opt.warmup_epochs = 0.0
    opt.schedule = "constant"
    tx, _ = build_optimizer(opt, batch_size=256, steps_per_epoch=10, total_steps=100)
    block = {"stage1_block0": params["stage1_block0"]}  # one block keeps the jit small
    grads = jax.tree_util.tree_map(jnp.ones_like, block)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, block)
    block, block_updates = block["stage1_block0"], updates["stage1_block0"]
    lr = opt.base_lr
    np.testing.assert_allclose(block_updates["depthwise_conv"]["kernel"], -lr, rtol=1e-6)
    np.testing.assert_allclose(block_updates["depthwise_bn"]["bias"], -lr, rtol=1e-6)
    w = block["project_conv"]["kernel"]
    g = 1.0 + opt.weight_decay * w
    trust = opt.trust_coefficient * jnp.linalg.norm(w) / jnp.linalg.norm(g)
    np.testing.assert_allclose(block_updates["project_conv"]["kernel"], -lr * trust * g, rtol=1e-5)


def test_vit_mask_excludes_norms_biases_position_embedding_and_cls_token():
    model = build_vit("vit_tiny", image_size=32, patch_size=4, width=0.25, depth=1)
    params = _param_shapes(model, 32)["params"]
    mask = _paths(adaptation_mask(params))
    assert {p for p, v in mask.items() if v} == {
        "patch_embedding/kernel",
        "block0/attention/qkv/kernel",
        "block0/attention/proj/kernel",
        "block0/mlp_fc1/kernel",
        "block0/mlp_fc2/kernel",
    }
    for name in ("pos_embedding", "cls_token", "norm/scale", "block0/norm1/bias"):
        assert mask[name] is False


def _one_engine_step(config):
    """Set up a run from `config` as `train.train` does and take one sharded step."""
    run = train.setup(config)
    state = run.init(run.rngs()[0])
    initial = jax.device_get(state)  # the step donates `state`
    step = engine.make_train_step(run.method, run.tx, run.schedule, run.mesh, run.num_classes)
    images = np.random.default_rng(0).uniform(size=(2, config.batch_size, 32, 32, 3))
    batch = {"view1": images[0].astype(np.float32), "view2": images[1].astype(np.float32)}
    state, metrics = step(state, sharding.global_batch(batch, run.mesh), run.rngs()[1])
    assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 1
    return run, initial, jax.device_get(state)


def _smoke_config(name):
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    config.model.name = name
    config.model.width = 0.25
    config.online_probe = False
    return config


def test_one_byol_step_with_mobilenet_v2_runs_through_the_engine():
    run, initial, state = _one_engine_step(_smoke_config("mobilenet_v2"))
    assert isinstance(run.method.encoder, MobileNetV2) and run.method.encoder.small_stem
    before, after = initial.params["encoder"], state.params["encoder"]
    for module in ("depthwise_conv", "project_conv"):
        kernel = after["stage1_block0"][module]["kernel"]
        assert np.all(np.isfinite(kernel))
        assert not np.array_equal(kernel, before["stage1_block0"][module]["kernel"]), module
    assert np.any(state.batch_stats["encoder"]["last_bn"]["mean"] != 0)  # running stats moved


def test_one_byol_step_with_vit_tiny_and_adamw_runs_through_the_engine():
    config = _smoke_config("vit_tiny")
    config.model.depth = 2
    config.model.patch_size = 4
    config.optimizer.name = "adamw"  # the low-compute paper's ViT optimiser
    config.optimizer.base_lr = 5e-4
    config.optimizer.weight_decay = 0.04
    run, initial, state = _one_engine_step(config)
    assert isinstance(run.method.encoder, VisionTransformer)
    before, after = initial.params["encoder"], state.params["encoder"]
    assert not np.array_equal(before["pos_embedding"], after["pos_embedding"])
    assert set(state.batch_stats) == {"projector", "predictor"}  # the heads' BN only
    adam = [
        s
        for s in jax.tree_util.tree_leaves(
            state.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    assert len(adam) == 1 and int(adam[0].count) == 1
    assert state.params["encoder"]["pos_embedding"].shape == (1 + 8 * 8, 48)


@pytest.mark.parametrize("name", ["mobilenet_v2", "vit_tiny"])
def test_bfloat16_backbones_keep_float32_parameters_and_pooled_features(name):
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    config.model.name = name
    config.model.dtype = "bfloat16"
    config.model.patch_size = 4
    encoder = build_encoder(config)
    images = jnp.zeros((2, 32, 32, 3))
    out, variables = jax.eval_shape(
        lambda: encoder.init_with_output(jax.random.PRNGKey(0), images, train=False)
    )
    assert out["layer4"].dtype == jnp.bfloat16 and out["pooled"].dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}

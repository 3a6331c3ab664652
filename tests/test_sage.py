"""SaGe: decoder, evaluator, generation loss, optimisers, the two-stage run, perceptual test.

The two-stage tests train `configs/byol.py:smoke` (the evaluator) and then
`configs/sage.py:smoke` with it, on ResNets cut to one block a stage to keep the
compilation short; the decoder, heads, evaluator loading and engine are the real ones.
"""

import argparse
import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from ssljax import configlib, train
from ssljax.errors import UserError
from ssljax.methods import base, byol, get_method, sage
from ssljax.methods.sage import SaGe
from ssljax.models.decoder import Decoder, UpConv, kaiming_fan_in, num_up_blocks
from ssljax.optim import build_optimizer
from ssljax.run import load_run
from ssljax.sharding import DATA_AXIS

CONFIGS = Path(__file__).parent.parent / "configs"
ONE_BLOCK_A_STAGE = (1, 1, 1, 1)


def _config(preset="smoke", **evaluator):
    config = configlib.load(str(CONFIGS / f"sage.py:{preset}"))
    for key, value in evaluator.items():
        config.evaluator[key] = value
    return config


def _short_encoder(config, bn_group=None, axis_name=DATA_AXIS):
    return base.build_encoder(config, bn_group, axis_name).clone(stage_sizes=ONE_BLOCK_A_STAGE)


@pytest.fixture(scope="module")
def short_resnets():
    """Every backbone a method, the evaluator or the perceptual classifier builds is short."""
    with pytest.MonkeyPatch.context() as patch:
        for module in (byol, sage):
            patch.setattr(module, "build_encoder", _short_encoder)
        original = base.build_encoder
        patch.setattr(
            base,
            "build_encoder",
            lambda *a, **k: original(*a, **k).clone(stage_sizes=ONE_BLOCK_A_STAGE),
        )
        yield


def test_registered_and_presets_hold_the_papers_values():
    assert get_method("sage") is SaGe
    imagenet = _config("imagenet")
    assert imagenet.generation_weight == 1.0
    assert imagenet.generation.to_dict() == pytest.approx(
        {"pixels": 0.1, "projection": 0.1, "layer4": 1 / 30, "layer3": 1 / 30, "layer2": 1 / 30}
    )
    assert imagenet.batch_size == 4096 and imagenet.optimizer.name == "lars"
    assert imagenet.optimizer.base_lr * 4096 / 256 == pytest.approx(4.8)
    decoder = imagenet.optimizer.decoder
    assert decoder.name == "adam" and decoder.base_lr * 4096 / 256 == pytest.approx(0.048)
    assert tuple(imagenet.decoder.channels) == (512, 256, 128, 64, 32)
    assert imagenet.evaluator.model.name == "resnet50" and imagenet.evaluator.checkpoint is None
    fashion = _config("fashion_mnist")
    byol_fashion = configlib.load(str(CONFIGS / "byol.py:fashion_mnist"))
    # The same network as the BYOL run it loads (the CPU presets share one initialisation).
    evaluator_model, byol_model = fashion.evaluator.model.to_dict(), byol_fashion.model.to_dict()
    assert evaluator_model == byol_model
    assert fashion.evaluator.projector.to_dict() == byol_fashion.projector.to_dict()
    assert "configs/byol.py:fashion_mnist" in configlib.load_module(CONFIGS / "sage.py").__doc__


@pytest.mark.parametrize("grid,size,blocks", [(7, 224, 5), (4, 32, 3), (4, 28, 3), (2, 16, 3)])
def test_decoder_output_has_the_image_shape_and_lies_in_minus_one_to_one(grid, size, blocks):
    assert num_up_blocks(grid, size) == blocks
    decoder = Decoder(grid, size, 32, 16, (32, 16, 16, 8, 8), dtype=jnp.float32)
    features = jnp.asarray(np.random.default_rng(0).normal(size=(2, grid, grid, 24)) * 100)
    if size == 224:  # traced only
        out = jax.eval_shape(
            lambda: decoder.init_with_output(jax.random.PRNGKey(0), features, train=False)[0]
        )
        assert out.shape == (2, 224, 224, 3)
        return
    init = jax.jit(lambda f: decoder.init_with_output(jax.random.PRNGKey(0), f, train=False))
    out, _ = init(features)
    assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32
    assert float(jnp.min(out)) >= -1.0 and float(jnp.max(out)) <= 1.0
    assert float(jnp.max(jnp.abs(out))) > 0.99  # large features saturate the tanh
    with pytest.raises(UserError, match="up-blocks"):
        Decoder(grid, size, channels=(8, 8)).up_block_channels()


@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (4, 4)])
def test_up_conv_is_flax_conv_transpose_in_value_and_gradients(height, width):
    """The decoder's up-blocks: nn.ConvTranspose's function of the same kernel, computed
    as four phase convolutions (decoder.UpConv)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, height, width, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 4, 3, 5)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(2, 2 * height, 2 * width, 5)), jnp.float32)
    flax_up = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)
    ours = UpConv(5)

    def value_and_grads(module):
        def f(k, x):
            return jnp.sum(module.apply({"params": {"kernel": k}}, x) * cotangent)

        return module.apply({"params": {"kernel": kernel}}, x), jax.grad(f, (0, 1))(kernel, x)

    (want, want_grads), (got, got_grads) = value_and_grads(flax_up), value_and_grads(ours)
    assert got.shape == want.shape == (2, 2 * height, 2 * width, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
    init = ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, init) == {"params": {"kernel": (4, 4, 3, 5)}}
    # The same initial kernel as before, so the same seed gives the same SaGe run.
    flax_init = nn.ConvTranspose(
        5, (4, 4), strides=(2, 2), padding="SAME", use_bias=False, kernel_init=kaiming_fan_in
    ).init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(init["params"]["kernel"], flax_init["params"]["kernel"])


def test_decoder_parameters_are_updated_by_adam_and_the_rest_by_lars():
    config = _config()
    config.optimizer.warmup_epochs = config.optimizer.decoder.warmup_epochs = 0.0
    rng = np.random.default_rng(0)

    def tree(*shapes):
        return {f"p{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}

    params = {
        "encoder": tree((3, 3, 2, 4), (4,)),
        "projector": tree((4, 8)),
        "probe": tree((4, 10)),
        "decoder": tree((2, 2, 4, 8), (8,)),
    }
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    tx, _ = build_optimizer(config.optimizer, config.batch_size, 10, 100)
    updates, _ = tx.update(grads, tx.init(params), params)

    lars_config = config.optimizer.copy_and_resolve_references()
    lars_config.decoder = None
    lars, _ = build_optimizer(lars_config, config.batch_size, 10, 100)
    rest = {k: v for k, v in params.items() if k != "decoder"}
    lars_updates, _ = lars.update({k: grads[k] for k in rest}, lars.init(rest), rest)
    lr = config.optimizer.decoder.base_lr * config.batch_size / 256
    adam = optax.adam(lr)
    adam_updates, _ = adam.update(grads["decoder"], adam.init(params["decoder"]))
    for name in rest:
        jax.tree.map(np.testing.assert_array_equal, updates[name], lars_updates[name])
    jax.tree.map(np.testing.assert_allclose, updates["decoder"], adam_updates)
    # Adam's first step is ±lr on every leaf; LARS would give something else.
    assert np.allclose(np.abs(updates["decoder"]["p0"]), lr, rtol=1e-4)


def test_evaluator_gets_no_gradient_and_lives_outside_the_optimised_params():
    config = _config(checkpoint="random")
    config.bn_group = "local"  # method.loss runs outside the sharded step here
    config.dataset.image_size = 16
    method = SaGe(config, 10)
    short = method.online.encoder.clone(stage_sizes=ONE_BLOCK_A_STAGE)
    method.online = method.online.clone(encoder=short)
    method.target = method.target.clone(encoder=short)
    method.evaluator = method.evaluator.clone(
        encoder=method.evaluator.encoder.clone(stage_sizes=ONE_BLOCK_A_STAGE)
    )
    rng = np.random.default_rng(0)
    batch = {v: rng.uniform(size=(4, 16, 16, 3)).astype(np.float32) for v in ("view1", "view2")}
    fields = jax.jit(method.init)(jax.random.PRNGKey(0), batch["view1"])
    assert set(fields["params"]) == {"encoder", "projector", "predictor", "decoder"}
    # The random evaluator has PyTorch's BN scales of 1, not our zero-initialised ones.
    scales = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(fields["frozen"])
        if "scale" in jax.tree_util.keystr(path)
    ]
    assert scales and all(np.all(s == 1) for s in scales)
    feature_map = rng.normal(size=(4, 2, 2, method.online.encoder.num_features))

    @jax.jit
    def gradients(params, frozen):
        def generation(params, frozen):
            stats = fields["batch_stats"]
            value, terms, _ = method.generation_loss(
                params, stats, frozen, batch["view1"], feature_map.astype(np.float32)
            )
            return value, terms

        return jax.grad(generation, argnums=(0, 1), has_aux=True)(params, frozen)

    (param_grads, frozen_grads), terms = gradients(fields["params"], fields["frozen"])
    assert all(not np.any(g) for g in jax.tree.leaves(frozen_grads))
    assert all(np.any(g) for g in jax.tree.leaves(param_grads["decoder"]["out_conv"]))
    assert set(terms) == {"pixels", "projection", "layer4", "layer3", "layer2"}
    assert all(float(t) > 0 for t in terms.values())


def test_missing_evaluator_stops_the_run_before_anything_is_written(tmp_path):
    for checkpoint, message in ((None, "not set"), (str(tmp_path / "nowhere"), "no config.json")):
        workdir = tmp_path / f"run_{checkpoint is None}"
        with pytest.raises(UserError, match=message) as error:
            train.train(_config(checkpoint=checkpoint), workdir)
        assert "pre-train BYOL first" in str(error.value)
        assert "configs/byol.py:smoke" in str(error.value)
        assert not (workdir / "config.json").exists()
    config = _config(checkpoint=None)
    config.generation.projection = config.generation.layer4 = 0.0
    config.generation.layer3 = config.generation.layer2 = 0.0
    assert SaGe(config, 10).evaluator is None  # pixel-MSE only: no evaluator to load


@pytest.fixture(scope="module")
def two_stage(short_resnets, tmp_path_factory):
    """BYOL smoke (the evaluator), then SaGe smoke with λ = 0 on it: same seed, data, steps."""
    root = tmp_path_factory.mktemp("sage")
    byol_config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    byol_state = jax.device_get(train.train(byol_config, root / "byol"))
    config = _config(checkpoint=str(root / "byol"))
    config.generation_weight = 0.0
    # The same views as the BYOL run (SaGe's preset follows its PyTorch reference's jitter).
    config.augment.jitter_style = byol_config.augment.jitter_style
    sage_state = jax.device_get(train.train(config, root / "sage"))
    return root, byol_state, sage_state


def test_evaluator_is_bit_identical_to_its_checkpoint_after_training_steps(two_stage):
    _, byol_state, sage_state = two_stage
    assert int(sage_state.step) == 6
    parts = ("encoder", "projector")
    loaded = {
        "params": {k: byol_state.params[k] for k in parts},
        "batch_stats": {k: byol_state.batch_stats[k] for k in parts},
    }
    jax.tree.map(np.testing.assert_array_equal, sage_state.frozen, loaded)


def test_with_lambda_zero_the_encoder_update_equals_byols(two_stage):
    root, byol_state, sage_state = two_stage
    for field in ("params", "batch_stats", "target_params", "target_batch_stats"):
        ours, theirs = getattr(sage_state, field), getattr(byol_state, field)
        for name in theirs:
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                ours[name],
                theirs[name],
            )
    # ... while the decoder keeps learning to invert BYOL's features: steps 4-6 move it.
    earlier = jax.device_get(load_run(root / "sage", step=3).state.params["decoder"])
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), sage_state.params["decoder"], earlier)
    assert all(jax.tree.leaves(moved))


def test_evaluator_of_another_architecture_stops_the_run(two_stage, tmp_path):
    root, _, _ = two_stage
    config = _config(checkpoint=str(root / "byol"))
    config.evaluator.model.width = 0.125
    with pytest.raises(UserError, match="asks for a resnet18 ×0.125") as error:
        train.train(config, tmp_path / "run")
    assert "pre-train BYOL first" in str(error.value)
    assert not (tmp_path / "run" / "config.json").exists()
    # Same config fields, other shapes (two blocks a stage here): caught by the shape check.
    config = _config(checkpoint=str(root / "byol"))
    evaluator = sage.build_evaluator(config)
    evaluator = evaluator.clone(encoder=evaluator.encoder.clone(stage_sizes=(2, 2, 2, 2)))
    state = load_run(root / "byol").state
    with pytest.raises(UserError, match="does not fit config.evaluator"):
        sage.evaluator_variables(config, evaluator, state.params, state.batch_stats)


def test_perceptual_command_reports_both_accuracies_and_saves_a_grid(two_stage, capsys):
    from ssljax.eval import __main__ as cli
    from ssljax.eval import perceptual

    root, _, _ = two_stage
    workdir, classifier = root / "sage", root / "classifier"
    flags = [
        "perceptual",
        f"--workdir={workdir}",
        "--split=test[:40]",
        "--classifier-split=train[:64]",
        "--classifier-epochs=1",
        "--classifier-batch-size=32",
        "--grid-images=8",
        f"--classifier-dir={classifier}",
    ]
    args = cli.parse_args(flags)
    result = perceptual.run(args)
    assert result["accuracy"] == "top1" and result["num_images"] == 40
    assert 0 <= result["original"] <= 1 and 0 <= result["reconstruction"] <= 1
    assert result["classifier"]["trained_now"] and result["checkpoint"] == 6
    assert 0 < result["reconstruction_mse"] < 4
    assert json.loads((workdir / "eval" / "perceptual.json").read_text()) == result
    png = tf.io.decode_png((workdir / "eval" / "perceptual.png").read_bytes()).numpy()
    assert png.shape == (2 * 66 + 2, 8 * 66 + 2, 3)  # 8 pairs of 32-px images ×2, gaps of 2
    grid = np.load(workdir / "eval" / "perceptual_grid.npz")
    assert grid["originals"].shape == grid["reconstructions"].shape == (8, 32, 32, 3)

    cli.main(flags)  # the command line: one JSON line; the cached classifier is reused
    line = capsys.readouterr().out.strip().splitlines()[-1]
    again = json.loads(line)
    assert not again["classifier"]["trained_now"]
    assert again["original"] == result["original"]
    assert again["reconstruction"] == result["reconstruction"]
    with pytest.raises(UserError, match="holds a classifier"):
        perceptual.run(argparse.Namespace(**{**vars(args), "classifier_epochs": 2}))


def _short_sage(config):
    """SaGe on 16-px images with one block a stage, run outside the sharded step."""
    config.bn_group = "local"
    config.dataset.image_size = 16
    method = SaGe(config, 10)
    short = method.online.encoder.clone(stage_sizes=ONE_BLOCK_A_STAGE)
    method.online = method.online.clone(encoder=short)
    method.target = method.target.clone(encoder=short)
    method.evaluator = method.evaluator.clone(
        encoder=method.evaluator.encoder.clone(stage_sizes=ONE_BLOCK_A_STAGE)
    )
    return method


def test_evaluator_bn_defaults_to_the_references_batch_statistics_and_is_checked():
    """The reference's evaluator is a sub-module of the model the runner puts in train
    mode (`model.train()`): it normalises with batch statistics."""
    assert _config("imagenet").evaluator.bn == "batch"
    with pytest.raises(UserError, match="evaluator.bn"):
        SaGe(_config(checkpoint="random", bn="frozen"), 10)


def test_evaluator_normalises_as_evaluator_bn_says_and_never_changes():
    method = _short_sage(_config(checkpoint="random", bn="batch"))
    assert method.evaluator_bn == "batch"
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
    fields = jax.eval_shape(method.init, jax.random.PRNGKey(0), images)

    def features_and_calls(mode):
        """The features `mode` gives, and the batch sizes of the evaluator passes of one
        generation loss (traced only)."""
        method.evaluator_bn, calls = mode, []

        def record(frozen, images):
            calls.append(images.shape[0])
            return sage.SaGe.evaluator_features(method, frozen, images)

        method.evaluator_features = record
        grid, channels = method.decoder.grid, method.online.encoder.num_features
        feature_map = jax.ShapeDtypeStruct((4, grid, grid, channels), np.float32)
        jax.eval_shape(
            lambda p, s, f, m: method.generation_loss(p, s, f, images, m),
            fields["params"],
            fields["batch_stats"],
            fields["frozen"],
            feature_map,
        )
        del method.evaluator_features
        return calls

    # Both modes pass the views and the reconstructions separately: 'batch' for their own
    # statistics (the reference's r_function(img) and r_function(recon)), 'running' so that
    # the evaluator's backward pass covers b images, not 2b (same outputs in inference mode).
    assert features_and_calls("batch") == [4, 4]
    assert features_and_calls("running") == [4, 4]

    @jax.jit
    def features(frozen, images):
        out = {}
        for mode in sage.EVALUATOR_BN:
            method.evaluator_bn = mode
            out[mode] = method.evaluator_features(frozen, images)
        batch, _ = method.evaluator.apply(frozen, images, train=True, mutable=["batch_stats"])
        running = method.evaluator.apply(frozen, images, train=False)
        return out, batch, running

    frozen = jax.jit(functools.partial(method.evaluator.init, train=False))(
        jax.random.PRNGKey(0), images
    )
    # Running statistics far from any batch's, so the two modes cannot agree by chance.
    frozen = {**frozen, "batch_stats": jax.tree.map(lambda s: s + 3.0, frozen["batch_stats"])}
    ours, batch, running = features(frozen, images)
    for level in ("layer4", "projection"):
        np.testing.assert_allclose(ours["batch"][level], batch[level], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours["running"][level], running[level], rtol=1e-5, atol=1e-6)
        assert np.abs(batch[level] - running[level]).max() > 1e-3


class _ConcatenatedEvaluatorSaGe(SaGe):
    """The earlier formulation with running statistics: one evaluator pass over
    [view; x̃], split afterwards."""

    def generation_loss(self, params, stats, frozen, view, feature_map):
        from ssljax import losses

        reconstruction, decoder_stats = self.reconstruct(params, stats, feature_map)
        both = self.evaluator_features(frozen, jnp.concatenate([view, (reconstruction + 1) / 2]))
        b = view.shape[0]
        features, reconstruction_features = {}, {}
        for level in sage.LEVELS:
            features[level], reconstruction_features[level] = jnp.split(both[level], [b])
        value, terms = losses.sage_generation_loss(
            2.0 * view - 1.0, reconstruction, features, reconstruction_features, self.weights
        )
        return value, terms, decoder_stats


def test_separate_evaluator_passes_equal_the_concatenated_pass_with_running_statistics():
    method = _short_sage(_config(checkpoint="random", bn="running"))
    rng = np.random.default_rng(1)
    view = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
    fields = jax.jit(method.init)(jax.random.PRNGKey(0), view)
    feature_map = rng.normal(size=(4, 2, 2, method.online.encoder.num_features))
    feature_map = feature_map.astype(np.float32)

    @jax.jit
    def both(params, feature_map):
        def generation(params, feature_map, loss):
            stats = fields["batch_stats"]
            return loss(method, params, stats, fields["frozen"], view, feature_map)[0]

        return [
            jax.value_and_grad(generation, argnums=(0, 1))(params, feature_map, loss)
            for loss in (SaGe.generation_loss, _ConcatenatedEvaluatorSaGe.generation_loss)
        ]

    (value, grads), (old_value, old_grads) = both(fields["params"], feature_map)
    np.testing.assert_allclose(value, old_value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(old_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

"""Tests for ssljax.data.multicrop, ssljax.methods.crop_forward and the re-balanced loss."""

import dataclasses
import math
from itertools import islice
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from ssljax import configlib, losses
from ssljax.data import augment, fashion_mnist, multicrop, pipeline
from ssljax.errors import UserError
from ssljax.methods import crop_forward
from ssljax.models.norm import BatchNorm
from ssljax.models.vit import EncoderBlock

CONFIGS = Path(__file__).parent.parent / "configs"
BASELINE = multicrop.MultiCrop()  # 224 / 96, S_g = S_l = 0.14
RECIPE = multicrop.MultiCrop(global_min_scale=0.3, local_max_scale=0.3, local_size=128)
IMAGENET_SHAPES = [(224, 224), (375, 500)]  # square, and the common 4:3 ImageNet photo


def sample_pixel_scale_ratios(
    geometry: multicrop.MultiCrop,
    image_shape: tuple[int, int],
    num_images: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """The pixel-scale ratio of each of `num_images` H×W images whose seeds are
    `fold_seed([seed, 0], i)`: the crop windows `multicrop_views` draws for those seeds
    (same streams, same rule), without rendering the views. Float32 [num_images]."""
    global_presets, local_preset = multicrop.crop_presets(augment.PRESETS["byol"], geometry)
    shape = tf.constant([image_shape[0], image_shape[1], 3])

    def window(image_seed, crop, preset):
        view_seed = multicrop.crop_seed(image_seed, crop)
        crop_stream = augment.fold_seed(view_seed, augment.CROP_STREAM)
        return tf.stack(augment.crop_window(shape, crop_stream, preset.s_min, preset.s_max))

    @tf.function
    def one(index):
        image_seed = augment.fold_seed(tf.constant([seed, 0], tf.int64), index)
        n = geometry.num_global
        g = tf.stack([window(image_seed, i, global_presets[i]) for i in range(n)])
        loc = tf.stack([window(image_seed, n + j, local_preset) for j in range(geometry.num_local)])
        return multicrop.pixel_scale_ratio(g, loc, geometry.global_size, geometry.local_size)

    ratios = tf.data.Dataset.range(num_images).map(one).batch(num_images).get_single_element()
    return ratios.numpy()


def _config(preset):
    return configlib.load(str(CONFIGS / f"sslight_dino.py:{preset}"))


@pytest.mark.parametrize("shape", IMAGENET_SHAPES)
def test_recipe_pixel_scale_ratio_is_about_one(shape):
    measured = sample_pixel_scale_ratios(RECIPE, shape, 4000).mean()
    assert abs(measured - 1.0) < 0.08
    assert abs(multicrop.expected_pixel_scale_ratio(RECIPE, shape) - 1.0) < 0.08


@pytest.mark.parametrize("geometry", [BASELINE, RECIPE], ids=["baseline", "recipe"])
@pytest.mark.parametrize("shape", IMAGENET_SHAPES)
def test_measured_pixel_scale_ratio_is_what_the_crop_geometry_implies(geometry, shape):
    measured = sample_pixel_scale_ratios(geometry, shape, 4000).mean()
    assert measured == pytest.approx(
        multicrop.expected_pixel_scale_ratio(geometry, shape), rel=0.03
    )


def test_baseline_pixel_scale_ratio_is_the_papers_geometry():
    """(224/96)²·E[Area(l)]·E[1/Area(g)]: 1.18 with uniform areas; the crop rule rejects
    large windows of a mismatched aspect, so global crops are smaller and the ratio is
    1.29 on square images, 1.40 on 4:3 ones. LC = 103 brings it to ≈ 1 (paper §3.2.2)."""
    uniform = (224 / 96) ** 2 * (0.05 + 0.14) / 2 * math.log(1 / 0.14) / (1 - 0.14)
    assert uniform == pytest.approx(1.1825, abs=1e-4)
    square, photo = (multicrop.expected_pixel_scale_ratio(BASELINE, s) for s in IMAGENET_SHAPES)
    assert square == pytest.approx(1.293, abs=0.005) and photo == pytest.approx(1.399, abs=0.005)
    lc103 = multicrop.MultiCrop(local_size=103)
    assert multicrop.expected_pixel_scale_ratio(lc103, (224, 224)) == pytest.approx(1.0, abs=0.15)


def test_crop_windows_that_always_fit_have_uniform_area_moments():
    mean, mean_inverse = multicrop._accepted_area_moments((0.05, 0.3), (224, 224))
    assert mean == pytest.approx(0.175, rel=1e-6)
    assert mean_inverse == pytest.approx(math.log(0.3 / 0.05) / 0.25, rel=1e-6)


def test_sampled_ratios_are_the_pipelines_for_the_same_seeds():
    geometry = multicrop.MultiCrop(global_size=32, local_size=18, global_min_scale=0.3)
    sampled = sample_pixel_scale_ratios(geometry, (40, 30), num_images=3, seed=5)
    image = tf.zeros([40, 30, 1], tf.uint8)
    for i in range(3):
        seed = augment.fold_seed(tf.constant([5, 0], tf.int64), i)
        views = multicrop.multicrop_views(image, seed, augment.PRESETS["byol"], geometry)
        assert float(views["pixel_scale_ratio"]) == pytest.approx(sampled[i], rel=1e-6)


def test_views_have_their_sizes_and_the_first_two_globals_are_two_views():
    """Global crops 0 and 1 draw with `two_views`' seeds: same window, flip, colour."""
    geometry = multicrop.MultiCrop(global_size=32, local_size=16, global_min_scale=0.2)
    preset = augment.get_preset("byol")
    image = tf.cast(tf.random.stateless_uniform([28, 28, 1], [1, 2], maxval=255), tf.uint8)
    seed = tf.constant([3, 4], tf.int64)
    views = multicrop.multicrop_views(image, seed, preset, geometry)
    assert views["global"].shape == (2, 32, 32, 3) and views["local"].shape == (6, 16, 16, 3)
    view1, view2 = augment.two_views(image, seed, dataclasses.replace(preset, s_min=0.2), 32)
    np.testing.assert_allclose(views["global"][0], view1, atol=1e-6)
    np.testing.assert_allclose(views["global"][1], view2, atol=1e-6)


def test_presets_set_the_papers_view_sampling():
    baseline, recipe = _config("baseline"), _config("recipe")
    assert (baseline.multicrop.global_min_scale, baseline.multicrop.local_max_scale) == (0.14, 0.14)
    assert baseline.multicrop.local_size == 96 and baseline.multicrop.alpha == pytest.approx(1 / 7)
    assert (recipe.multicrop.global_min_scale, recipe.multicrop.local_max_scale) == (0.3, 0.3)
    assert (recipe.multicrop.local_size, recipe.multicrop.alpha) == (128, 0.4)
    for c in (baseline, recipe):
        assert (c.multicrop.num_global, c.multicrop.num_local, c.dataset.image_size) == (2, 6, 224)
        assert (c.batch_size, c.epochs, c.optimizer.name, c.optimizer.base_lr) == (
            1024,
            200,
            "lars",
            0.48,
        )
    assert (
        _config("fashion_mnist").multicrop.local_size,
        _config("fashion_mnist_baseline").multicrop.local_size,
    ) == (18, 14)
    vit = _config("baseline_vit_tiny")
    assert (vit.optimizer.name, vit.multicrop.num_local, vit.multicrop.global_min_scale) == (
        "adamw",
        10,
        0.25,
    )
    assert vit.multicrop.alpha == pytest.approx(1 / 11)


def test_bad_geometry_is_a_user_error():
    config = _config("smoke")
    config.multicrop.num_local = 0
    with pytest.raises(UserError, match="num_local"):
        multicrop.from_config(config)


@pytest.mark.skipif(not fashion_mnist.debian_files_present(), reason="needs Fashion-MNIST")
def test_fashion_mnist_batches_hold_the_crops_and_their_pixel_scale_ratio():
    config = _config("fashion_mnist")
    config.batch_size = 64
    batches = list(islice(pipeline.train_batches(config, process_index=0, process_count=1), 4))
    for batch in batches:
        assert set(batch) == {"global", "local", "pixel_scale_ratio", "label"}
        assert batch["global"].shape == (64, 2, 32, 32, 3)
        assert batch["local"].shape == (64, 6, 18, 18, 3)
        assert 0.0 <= batch["local"].min() and batch["local"].max() <= 1.0
    measured = np.mean([b["pixel_scale_ratio"] for b in batches])
    expected = multicrop.expected_pixel_scale_ratio(multicrop.from_config(config), (28, 28))
    assert abs(measured - 1.0) < 0.15 and abs(measured - expected) < 0.15


def _pairs(num_targets, num_crops, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 3.0, (num_targets, num_crops))


def test_alpha_one_seventh_with_two_global_and_six_local_crops_is_the_plain_mean():
    pairs = _pairs(2, 8)
    off_diagonal = pairs[~np.eye(2, 8, dtype=bool)]
    plain = losses.rebalanced_multicrop_loss(jnp.asarray(pairs), 2, None)
    rebalanced = losses.rebalanced_multicrop_loss(jnp.asarray(pairs), 2, 1 / 7)
    assert float(plain) == pytest.approx(off_diagonal.mean(), rel=1e-6)
    assert float(rebalanced) == pytest.approx(off_diagonal.mean(), rel=1e-6)


def test_rebalanced_loss_weights_global_and_local_pair_means_by_alpha():
    pairs = _pairs(2, 8, seed=1)
    pairs[0, 0] = pairs[1, 1] = 1e9  # the same crop on both sides is never a pair
    gg = (pairs[0, 1] + pairs[1, 0]) / 2
    gl = pairs[:, 2:].mean()
    value = losses.rebalanced_multicrop_loss(jnp.asarray(pairs), 2, 0.4)
    assert float(value) == pytest.approx(0.4 * gg + 0.6 * gl, rel=1e-6)


def test_one_target_crop_as_mocov2_star_has_one_global_pair():
    pairs = _pairs(1, 8, seed=2)
    value = losses.rebalanced_multicrop_loss(jnp.asarray(pairs), 2, 0.4)
    assert float(value) == pytest.approx(0.4 * pairs[0, 1] + 0.6 * pairs[0, 2:].mean(), rel=1e-6)
    plain = losses.rebalanced_multicrop_loss(jnp.asarray(pairs), 2, 1 / 7)
    assert float(plain) == pytest.approx(pairs[0, 1:].mean(), rel=1e-6)


def test_multicrop_cross_entropy_matches_numpy():
    rng = np.random.default_rng(3)
    targets = rng.dirichlet(np.ones(5), size=(2, 4))  # [T, b, K]
    logits = rng.normal(size=(3, 4, 5))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.array(
        [[-(targets[t] * log_p[v]).sum(-1).mean() for v in range(3)] for t in range(2)]
    )
    got = losses.multicrop_cross_entropy(jnp.asarray(targets), jnp.asarray(logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


class _NormalisedOutput(BatchNorm):
    """BatchNorm whose output is a dict, as the networks' are."""

    def __call__(self, x, train):
        return {"out": super().__call__(x, train)}


@pytest.mark.parametrize("per_crop_bn", [True, False])
def test_apply_crops_normalises_each_crop_alone_or_all_crops_together(per_crop_bn):
    module = _NormalisedOutput(group="local", axis_name=None)
    shift = np.arange(3)[:, None, None]
    crops = jnp.asarray(np.random.default_rng(4).normal(size=(3, 8, 2)) + shift, jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), crops[0], train=False)
    outputs, stats = crop_forward.apply_crops(
        module, variables["params"], variables["batch_stats"], crops, per_crop_bn, ("out",)
    )
    out = np.asarray(outputs["out"])
    assert out.shape == (3, 8, 2) and stats["mean"].shape == (2,)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0.0, atol=1e-5)
    per_crop_means = np.abs(out.mean(axis=1)).max()
    assert per_crop_means < 1e-5 if per_crop_bn else per_crop_means > 0.5
    # Running mean: momentum 0.9 from 0 towards the mean of all crops either way.
    np.testing.assert_allclose(stats["mean"], 0.1 * np.asarray(crops).mean(axis=(0, 1)), rtol=1e-4)


class _DropPathBlock(nn.Module):
    """A ViT block with drop path 0.5 whose output is a dict, as the networks' are."""

    @nn.compact
    def __call__(self, x, train):
        return {"out": EncoderBlock(num_heads=1, drop_path_rate=0.5)(x, train=train)}


@pytest.mark.parametrize("per_crop_bn", [True, False])
def test_every_crop_and_resolution_draws_its_own_drop_path(per_crop_bn):
    """Identical crops (2 global, 2 local) get different drop decisions: each crop and
    each resolution has its own 'dropout' key, with or without per-crop BN."""
    module = _DropPathBlock()
    one = np.random.default_rng(5).normal(size=(16, 3, 4)).astype(np.float32)
    same = jnp.asarray(np.broadcast_to(one[:, None], (16, 2, 3, 4)))  # [b, N, tokens, dim]
    batch = {"global": same, "local": same}
    params = module.init(jax.random.PRNGKey(0), one, train=False)["params"]
    forward = jax.jit(
        lambda p, b, rng: crop_forward.apply_all_crops(module, p, {}, b, per_crop_bn, ("out",), rng)
    )
    outputs, _ = forward(params, batch, jax.random.PRNGKey(1))
    out = np.asarray(outputs["out"]).reshape(4, 16, -1)  # global 0, 1, local 0, 1
    for i in range(4):
        for j in range(i):
            assert not np.allclose(out[i], out[j]), (i, j)

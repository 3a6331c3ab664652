"""Tests for ssljax.data.augment: each preset's paper values show in sampled views.

Frequencies are checked against binomial tolerances of 5 σ (flaky-free, still able to
fail), and every random decision is also checked through its observable effect: the
view with an operation switched off (same seed, so every other draw is unchanged)
differs from the full view exactly when the operation was drawn.
"""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from ssljax.data import augment
from ssljax.errors import UserError

N = 1500  # samples per view and preset
IN_SIZE, OUT_SIZE = 24, 16


def _colourful_image(size=IN_SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def _assert_binomial(successes, n, p, what):
    sigma = math.sqrt(max(p * (1 - p), 1e-12) / n)
    freq = successes / n
    assert abs(freq - p) <= 5 * sigma + 1e-9, f"{what}: frequency {freq:.3f}, expected {p}"


def _sample(preset, view, switched_off):
    """Full views, decisions and, per op, the views with that op's probability set to 0."""
    image = _colourful_image()
    variants = {
        name: dataclasses.replace(preset, **{field: off})
        for name, (field, off) in switched_off.items()
    }

    def one(i):
        seed = tf.stack([i, tf.constant(7, tf.int64)])
        full, decisions = augment.augment_view(
            image, seed, preset, view, OUT_SIZE, return_decisions=True
        )
        ablated = {
            k: augment.augment_view(image, seed, p, view, OUT_SIZE) for k, p in variants.items()
        }
        return full, decisions, ablated

    ds = tf.data.Dataset.range(N).map(one, num_parallel_calls=tf.data.AUTOTUNE).batch(N)
    return next(ds.as_numpy_iterator())


def _off(preset):
    """Fields that switch each random operation off, for the ops this preset uses."""
    ops = {"flip": ("p_flip", 0.0), "jitter": ("p_jit", 0.0)}
    if max(preset.p_blur) > 0:
        ops["blur"] = ("p_blur", (0.0, 0.0))
    if max(preset.p_solarize) > 0:
        ops["solarize"] = ("p_solarize", (0.0, 0.0))
    return ops


def test_presets_match_the_papers_tables():
    byol, simclr, v1, v2 = (augment.PRESETS[k] for k in ("byol", "simclr", "moco_v1", "moco_v2"))
    assert (byol.s_min, byol.p_jit, byol.brightness, byol.contrast) == (0.08, 0.8, 0.4, 0.4)
    assert (byol.saturation, byol.hue, byol.p_gray) == (0.2, 0.1, 0.2)
    assert byol.p_blur == (1.0, 0.1) and byol.p_solarize == (0.0, 0.2)
    assert (simclr.brightness, simclr.contrast, simclr.saturation, simclr.hue) == (
        0.8,
        0.8,
        0.8,
        0.2,
    )
    assert simclr.p_blur == (1.0, 0.0) and simclr.p_solarize == (0.0, 0.0)
    assert (v1.s_min, v1.p_jit, v1.hue, v1.p_blur) == (0.2, 1.0, 0.4, (0.0, 0.0))
    assert (v2.s_min, v2.p_jit, v2.hue, v2.p_blur) == (0.2, 0.8, 0.1, (0.5, 0.5))
    assert v1.gray_before_jitter and not any(p.gray_before_jitter for p in (byol, simclr, v2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        byol.p_jit = 1.0


def test_unknown_preset_is_a_user_error_naming_the_presets():
    with pytest.raises(UserError, match="moco_v2"):
        augment.get_preset("byol_v3")


@pytest.mark.parametrize("channels", [1, 3])
def test_view_is_float32_rgb_in_unit_range(channels):
    image = _colourful_image(40)[:, :30, :channels]
    v1, v2 = augment.two_views(image, tf.constant([1, 2]), "simclr", 32)
    for v in (v1, v2):
        assert v.shape == (32, 32, 3) and v.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(v)) and float(tf.reduce_max(v)) <= 1.0


def test_same_seed_gives_identical_views_and_other_seeds_differ():
    image = _colourful_image(32)
    a = augment.two_views(image, tf.constant([3, 4]), "byol", 24)
    b = augment.two_views(image, tf.constant([3, 4]), "byol", 24)
    c = augment.two_views(image, tf.constant([3, 5]), "byol", 24)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def _reference_crop_areas(height, width, s_min, n, rng):
    """Relative areas of numpy draws of torchvision's RandomResizedCrop rule (10 tries, then
    centre)."""
    areas = np.empty(n)
    for i in range(n):
        for _ in range(augment.CROP_ATTEMPTS):
            area = height * width * rng.uniform(s_min, 1.0)
            aspect = math.exp(rng.uniform(*augment.LOG_ASPECT_RANGE))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                areas[i] = w * h / (height * width)
                break
        else:
            areas[i] = 1.0
    return areas


@pytest.mark.parametrize("s_min", sorted({p.s_min for p in augment.PRESETS.values()}))
def test_crop_window_area_and_aspect_follow_the_torchvision_rule(s_min):
    n, height, width = 4000, 300, 400
    seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.ones(n, tf.int64)], axis=1)
    windows = next(
        tf.data.Dataset.from_tensor_slices(seeds)
        .map(lambda s: tf.stack(augment.crop_window([height, width, 3], s, s_min)))
        .batch(n)
        .as_numpy_iterator()
    )
    y, x, h, w = windows.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= height).all() and (x + w <= width).all()
    area = h * w / (height * width)
    assert area.min() >= s_min * 0.97 and area.max() <= 1.0
    assert area.min() < s_min + 0.02 and area.max() > 0.9  # the whole range is used
    reference = _reference_crop_areas(height, width, s_min, 20000, np.random.default_rng(0))
    tolerance = 5 * reference.std() * math.sqrt(1 / n + 1 / len(reference))
    assert abs(area.mean() - reference.mean()) < tolerance
    log_aspect = np.log(w / h)
    assert log_aspect.min() >= math.log(3 / 4) - 0.03
    assert log_aspect.max() <= math.log(4 / 3) + 0.03
    assert np.median(np.abs(log_aspect)) > 0.05  # aspect is really randomised
    offsets = x / np.maximum(width - w, 1)
    assert abs(offsets[w < width].mean() - 0.5) < 0.05  # positions are uniform, not centred


def test_crop_window_falls_back_to_a_centre_crop_when_no_draw_fits():
    offset_y, offset_x, h, w = (int(v) for v in augment.crop_window([10, 400, 3], [0, 1], 0.5))
    assert (h, w) == (10, round(10 * 4 / 3)) and offset_y == 0 and offset_x == (400 - w) // 2


@pytest.mark.parametrize("name", sorted(augment.PRESETS))
@pytest.mark.parametrize("view", [0, 1])
def test_preset_probabilities_show_in_sampled_views(name, view):
    preset = augment.PRESETS[name]
    full, decisions, ablated = _sample(preset, view, _off(preset))
    diff = {k: np.abs(full - v).reshape(N, -1).max(axis=1) for k, v in ablated.items()}

    flip = decisions["flip"]
    _assert_binomial(flip.sum(), N, 0.5, "flip")
    # Every later operation is pointwise or mirror-symmetric, so a flipped view is the
    # mirror image of its never-flipped twin.
    np.testing.assert_array_equal(full[~flip], ablated["flip"][~flip])
    np.testing.assert_allclose(full[flip], ablated["flip"][flip][:, :, ::-1], atol=2e-5)
    assert (diff["flip"][flip] > 1e-3).mean() > 0.98  # (a few views jitter to one flat colour)

    jitter = decisions["jitter"]
    _assert_binomial(jitter.sum(), N, preset.p_jit, "jitter gate")
    assert not (diff["jitter"][~jitter] > 0).any(), "jitter changed a view it was not drawn for"
    assert (diff["jitter"][jitter] > 1e-3).mean() > 0.99, "drawn jitter left the view unchanged"

    gray = decisions["gray"]
    _assert_binomial(gray.sum(), N, preset.p_gray, "grayscale")
    looks_gray = np.abs(full - full[..., :1]).reshape(N, -1).max(axis=1) < 1e-4
    assert (looks_gray == gray).mean() > 0.99, "grayscale draws and gray-looking views disagree"

    blur = decisions["blur"]
    _assert_binomial(blur.sum(), N, preset.p_blur[view], "blur")
    if blur.any():
        assert not (diff["blur"][~blur] > 0).any()
        visible = blur & (decisions["blur_sigma"] > 0.5)
        assert (diff["blur"][visible] > 1e-3).mean() > 0.98
    sigma = decisions["blur_sigma"]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and abs(sigma.mean() - 1.05) < 0.06

    solar = decisions["solarize"]
    _assert_binomial(solar.sum(), N, preset.p_solarize[view], "solarize")
    if solar.any():
        unsolarized = ablated["solarize"]
        np.testing.assert_array_equal(full[~solar], unsolarized[~solar])
        expected = np.where(unsolarized[solar] < 0.5, unsolarized[solar], 1 - unsolarized[solar])
        np.testing.assert_allclose(full[solar], expected, atol=1e-6)
        assert (diff["solarize"][solar] > 1e-3).mean() > 0.9


@pytest.mark.parametrize("name", ["moco_v1", "byol"])
def test_grayscale_comes_before_jitter_only_in_moco_v1(name):
    preset = dataclasses.replace(
        augment.PRESETS[name], p_jit=1.0, p_gray=1.0, p_blur=(0.0, 0.0), p_solarize=(0.0, 0.0)
    )
    image, seed = _colourful_image(), tf.constant([5, 6], tf.int64)
    view, d = augment.augment_view(image, seed, preset, 0, OUT_SIZE, return_decisions=True)
    crop = augment.crop_flip_resize(image, tf.unstack(d["window"]), d["flip"], OUT_SIZE, "bicubic")
    crop = tf.clip_by_value(crop / 255.0, 0.0, 1.0)
    gray_first = augment.color_jitter(augment.to_grayscale(crop), seed, preset)
    jitter_first = augment.to_grayscale(augment.color_jitter(crop, seed, preset))
    expected, other = (
        (gray_first, jitter_first) if name == "moco_v1" else (jitter_first, gray_first)
    )
    np.testing.assert_allclose(view, expected, atol=1e-6)
    assert np.abs(view - other).max() > 1e-3


def test_jitter_applies_its_four_ops_in_a_uniformly_random_order():
    n = 2400
    seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.zeros(n, tf.int64)], axis=1)
    orders = next(
        tf.data.Dataset.from_tensor_slices(seeds)
        .map(augment.jitter_order)
        .batch(n)
        .as_numpy_iterator()
    )
    assert (np.sort(orders, axis=1) == np.arange(4)).all()
    _, counts = np.unique(orders, axis=0, return_counts=True)
    assert len(counts) == 24 and np.abs(counts - n / 24).max() < 5 * math.sqrt(n / 24)

    # The order matters and is the one drawn: replay the ops by hand.
    preset = augment.PRESETS["simclr"]
    image = tf.constant(_colourful_image(8).numpy() / 255.0, tf.float32)
    for seed in seeds[:4]:
        u = tf.random.stateless_uniform(
            [4], augment.fold_seed(seed, augment._JITTER_FACTORS), -1.0, 1.0
        ).numpy()
        ops = [
            lambda x, u=u: tf.image.adjust_brightness(x, u[0] * preset.brightness),
            lambda x, u=u: tf.image.adjust_contrast(x, 1 + u[1] * preset.contrast),
            lambda x, u=u: tf.image.adjust_saturation(x, 1 + u[2] * preset.saturation),
            lambda x, u=u: tf.image.adjust_hue(x, u[3] * preset.hue),
        ]
        expected = image
        for i in augment.jitter_order(seed).numpy():
            expected = tf.clip_by_value(ops[i](expected), 0.0, 1.0)
        np.testing.assert_allclose(augment.color_jitter(image, seed, preset), expected, atol=1e-6)


def test_extra_maps_get_the_same_crop_and_flip_as_the_image():
    """A label map painted onto the image stays on the same pixels (DetCon masks)."""
    rng = np.random.default_rng(1)
    ids = np.kron(rng.integers(0, 6, size=(6, 6)), np.ones((12, 12), int))  # 12-px blocks
    palette = np.array(
        [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 255, 255]]
    )
    image = tf.constant(palette[ids].astype(np.uint8))
    mask = tf.constant(ids[..., None].astype(np.int32))
    preset = augment.crop_and_flip(augment.PRESETS["byol"].s_min)
    flips, interior_fraction = set(), []
    for i in range(40):
        seed = tf.constant([i, 3], tf.int64)
        view, (out_mask,), d = augment.augment_view(
            image, seed, preset, 1, 32, extra=[mask], return_decisions=True
        )
        np.testing.assert_array_equal(view, augment.augment_view(image, seed, preset, 1, 32))
        assert out_mask.shape == (32, 32, 1) and out_mask.dtype == tf.int32
        colours = view.numpy() * 255
        nearest = np.argmin(((colours[:, :, None] - palette) ** 2).sum(-1), axis=-1)
        m = out_mask.numpy()[..., 0]
        interior = np.ones_like(m, bool)  # pixels whose 3×3 neighbourhood has one id
        padded = np.pad(m, 1, constant_values=-1)
        for dy in range(3):
            for dx in range(3):
                interior &= padded[dy : dy + 32, dx : dx + 32] == m
        assert (nearest[interior] == m[interior]).all()
        assert (nearest == m).mean() > 0.75  # only block edges may blur into a neighbour
        flips.add(bool(d["flip"]))
        interior_fraction.append(interior.mean())
    assert flips == {False, True} and np.mean(interior_fraction) > 0.5


# ---- Colour jitter, each style against a numpy transcription of its reference ------


def _np_rgb_to_hsv(rgb):
    """Hexcone HSV with hue in [0, 1): the conversion TF and torchvision both use."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(-1)
    chroma = value - rgb.min(-1)
    sat = np.where(value > 0, chroma / np.where(value > 0, value, 1), 0.0)
    safe = np.where(chroma > 0, chroma, 1)
    hue = np.where(
        value == r,
        (g - b) / safe,
        np.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe),
    )
    hue = np.where(chroma > 0, (hue / 6) % 1.0, 0.0)
    return hue, sat, value


def _np_hsv_to_rgb(hue, sat, value):
    sector = hue * 6
    k = lambda n: (n + sector) % 6  # noqa: E731
    channel = lambda n: value - value * sat * np.clip(np.minimum(k(n), 4 - k(n)), 0, 1)  # noqa: E731
    return np.stack([channel(5), channel(3), channel(1)], axis=-1)


def _np_gray(rgb):
    return rgb @ np.array([0.2989, 0.5870, 0.1140])


REFERENCE_JITTER = {
    # BYOL's augmentations.py (the TF/JAX references): additive brightness, contrast
    # around each channel's mean, saturation scaled in HSV and clipped.
    "tf": {
        "brightness": lambda x, a: x + a,
        "contrast": lambda x, a: (
            a * (x - x.mean(axis=(0, 1), keepdims=True)) + x.mean(axis=(0, 1), keepdims=True)
        ),
        "saturation": lambda x, a: _np_hsv_to_rgb(
            *(lambda h, s, v: (h, np.clip(s * a, 0, 1), v))(*_np_rgb_to_hsv(x))
        ),
    },
    # torchvision.transforms.functional_tensor: blends with black, with the mean gray
    # level of the image, and with the per-pixel gray image.
    "torchvision": {
        "brightness": lambda x, a: a * x,
        "contrast": lambda x, a: a * x + (1 - a) * _np_gray(x).mean(),
        "saturation": lambda x, a: a * x + (1 - a) * _np_gray(x)[..., None],
    },
}
HUE = lambda x, a: _np_hsv_to_rgb(  # noqa: E731  both references: shift on the hue circle
    *(lambda h, s, v: ((h + a) % 1.0, s, v))(*_np_rgb_to_hsv(x))
)


@pytest.mark.parametrize("style", augment.JITTER_STYLES)
@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_each_jitter_op_equals_its_references_formula(style, op):
    image = _colourful_image(12, seed=3).numpy() / 255.0
    index = ["brightness", "contrast", "saturation", "hue"].index(op)
    reference = HUE if op == "hue" else REFERENCE_JITTER[style][op]
    shift = op == "hue" or (op == "brightness" and style == "tf")
    amounts = (-0.3, 0.25) if shift else (0.6, 1.35)  # shifts or factors
    for amount in amounts:
        ours = augment.JITTER_OPS[style][index](tf.constant(image, tf.float32), amount)
        expected = np.clip(reference(image, amount), 0, 1)
        np.testing.assert_allclose(np.clip(ours.numpy(), 0, 1), expected, atol=2e-5)


def test_jitter_amounts_follow_each_references_ranges():
    preset = dataclasses.replace(
        augment.PRESETS["byol"], brightness=0.4, contrast=1.5, saturation=0.2, hue=0.1
    )
    ends = tf.constant([[-1.0] * 4, [1.0] * 4])
    tf_style = np.array([augment.jitter_amounts(u, preset) for u in ends])
    tv_style = np.array(
        [
            augment.jitter_amounts(u, dataclasses.replace(preset, jitter_style="torchvision"))
            for u in ends
        ]
    )
    # TF: δ_b ∈ [−0.4, 0.4]; factors 1 ± s (even below 0). torchvision: [max(0, 1 − s), 1 + s].
    np.testing.assert_allclose(tf_style, [[-0.4, -0.5, 0.8, -0.1], [0.4, 2.5, 1.2, 0.1]], 1e-6)
    np.testing.assert_allclose(tv_style, [[0.6, 0.0, 0.8, -0.1], [1.4, 2.5, 1.2, 0.1]], 1e-6)


def test_torchvision_jitter_replays_its_ops_in_the_drawn_order():
    preset = dataclasses.replace(augment.PRESETS["moco_v2"], p_jit=1.0)
    assert preset.jitter_style == "torchvision"
    image = _colourful_image(8).numpy() / 255.0
    for seed in tf.constant([[i, 1] for i in range(4)], tf.int64):
        u = tf.random.stateless_uniform(
            [4], augment.fold_seed(seed, augment._JITTER_FACTORS), -1.0, 1.0
        ).numpy()
        factors = [0.6 + (v + 1) / 2 * 0.8 for v in u[:3]]
        ops = [
            lambda x, f=factors[0]: REFERENCE_JITTER["torchvision"]["brightness"](x, f),
            lambda x, f=factors[1]: REFERENCE_JITTER["torchvision"]["contrast"](x, f),
            lambda x, f=factors[2]: REFERENCE_JITTER["torchvision"]["saturation"](x, f),
            lambda x, a=u[3] * 0.1: HUE(x, a),
        ]
        expected = image
        for i in augment.jitter_order(seed).numpy():
            expected = np.clip(ops[i](expected), 0, 1)
        ours = augment.color_jitter(tf.constant(image, tf.float32), seed, preset)
        np.testing.assert_allclose(ours, expected, atol=5e-5)


@pytest.mark.parametrize(
    "config_name, style",
    [
        ("byol", "tf"),
        ("detcon_b", "tf"),
        ("detcon_s", "tf"),
        ("simclr", "tf"),
        ("moco_v1", "torchvision"),
        ("moco_v2", "torchvision"),
        ("m2_teacher", "torchvision"),
        ("sage", "torchvision"),
        ("sslight_dino", "torchvision"),
        ("sslight_swav", "torchvision"),
        ("sslight_mocov2", "torchvision"),
    ],
)
def test_each_methods_jitter_follows_its_reference_code(config_name, style):
    """TF/JAX references (BYOL, DetCon, SimCLR) vs PyTorch ones using ColorJitter."""
    from pathlib import Path

    from ssljax import configlib

    configs = Path(__file__).parent.parent / "configs"
    config = configlib.load(str(configs / f"{config_name}.py"))
    assert augment.preset_from_config(config.augment).jitter_style == style


def test_an_unknown_jitter_style_is_a_user_error():
    import ml_collections

    config = ml_collections.ConfigDict({"preset": "byol", "jitter_style": "pil"})
    with pytest.raises(UserError, match="jitter_style"):
        augment.preset_from_config(config)

"""Per-image two-view augmentations in TensorFlow, each preset as its paper's reference.

Colour jitter comes in two styles, each preset following its own reference code
(docs/fidelity.md): 'tf' as the TensorFlow/JAX references of BYOL, DetCon and SimCLR
(additive brightness, per-channel contrast, saturation in HSV), 'torchvision' as
`torchvision.transforms.ColorJitter` in the PyTorch references of MoCo, Momentum²
Teacher, SaGe and SSLight (multiplicative brightness, contrast towards the mean gray
level, saturation towards the gray image). Both apply the four ops in a random order.

Every random draw is stateless and comes from its own seed folded out of the view seed,
so a view is a pure function of (image, seed): resuming a run or re-deriving a DetCon
mask crop reproduces it exactly, and switching one operation off leaves the draws of
the others unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import tensorflow as tf

from ssljax.errors import UserError


@dataclasses.dataclass(frozen=True)
class AugmentPreset:
    """One augmentation setting; per-view pairs are (view 1, view 2).

    `jitter_style`: 'tf' or 'torchvision' (see the module docstring).
    """

    s_min: float
    p_jit: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    p_gray: float
    p_blur: tuple[float, float]
    p_solarize: tuple[float, float]
    gray_before_jitter: bool = False
    s_max: float = 1.0
    p_flip: float = 0.5
    jitter_style: str = "tf"


JITTER_STYLES = ("tf", "torchvision")
PRESETS: dict[str, AugmentPreset] = {
    "byol": AugmentPreset(0.08, 0.8, 0.4, 0.4, 0.2, 0.1, 0.2, (1.0, 0.1), (0.0, 0.2)),
    "simclr": AugmentPreset(0.08, 0.8, 0.8, 0.8, 0.8, 0.2, 0.2, (1.0, 0.0), (0.0, 0.0)),
    "moco_v1": AugmentPreset(
        0.2,
        1.0,
        0.4,
        0.4,
        0.4,
        0.4,
        0.2,
        (0.0, 0.0),
        (0.0, 0.0),
        gray_before_jitter=True,
        jitter_style="torchvision",
    ),
    "moco_v2": AugmentPreset(
        0.2, 0.8, 0.4, 0.4, 0.4, 0.1, 0.2, (0.5, 0.5), (0.0, 0.0), jitter_style="torchvision"
    ),
}

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
LOG_ASPECT_RANGE = (math.log(3 / 4), math.log(4 / 3))
CROP_ATTEMPTS = 10
BLUR_SIGMA_RANGE = (0.1, 2.0)

# One stream per random decision: switching an operation off never shifts the others.
(
    _CROP,
    _FLIP,
    _JITTER,
    _JITTER_ORDER,
    _JITTER_FACTORS,
    _GRAY,
    _BLUR,
    _BLUR_SIGMA,
    _SOLARIZE,
) = range(9)
CROP_STREAM = _CROP  # the fold of a view's seed that draws its crop window (multicrop reads it)


def crop_and_flip(s_min: float) -> AugmentPreset:
    """Random-resized crop (scale in [s_min, 1]) and horizontal flip, nothing photometric."""
    return AugmentPreset(
        s_min=s_min,
        p_jit=0.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        p_gray=0.0,
        p_blur=(0.0, 0.0),
        p_solarize=(0.0, 0.0),
    )


def get_preset(preset: AugmentPreset | str) -> AugmentPreset:
    """Look a preset up by name; an `AugmentPreset` passes through."""
    if isinstance(preset, AugmentPreset):
        return preset
    if preset not in PRESETS:
        raise UserError(
            f"Unknown augmentation preset {preset!r}; set config.augment.preset to one of "
            f"{sorted(PRESETS)}."
        )
    return PRESETS[preset]


def preset_from_config(augment_config) -> AugmentPreset:
    """`config.augment.preset` with the fields a config sets explicitly replaced.

    The small-image presets use this to soften crops or drop blur; every other field keeps
    the paper's value from `PRESETS`.
    """
    preset = get_preset(augment_config.preset)
    overrides = {
        name: tuple(value) if isinstance(value, list | tuple) else value
        for name, value in augment_config.items()
        if name != "preset" and value is not None
    }
    unknown = set(overrides) - {f.name for f in dataclasses.fields(AugmentPreset)}
    if unknown:
        raise UserError(f"config.augment has no field(s) {sorted(unknown)}")
    preset = dataclasses.replace(preset, **overrides)
    if preset.jitter_style not in JITTER_STYLES:
        raise UserError(
            f"config.augment.jitter_style={preset.jitter_style!r}; use one of {JITTER_STYLES}"
        )
    return preset


def fold_seed(seed: tf.Tensor, data) -> tf.Tensor:
    """A new int64 [2] seed from `seed` and an integer; the dtype is fixed on purpose.

    `stateless_fold_in` gives different streams for int32 and int64 data, so every
    fold in this package goes through here.
    """
    seed = tf.cast(seed, tf.int64)
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))


def _uniform(seed: tf.Tensor, shape=(), minval=0.0, maxval=1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def crop_window(
    image_shape: Sequence[int] | tf.Tensor,
    seed: tf.Tensor,
    min_area: float,
    max_area: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Random-resized-crop window `(offset_y, offset_x, height, width)` as int32 scalars.

    Area ~ U(min_area, max_area)·A and log-aspect ~ U(log 3/4, log 4/3), the first of 10
    draws that fits, else a centre crop of the largest in-range aspect (torchvision's
    rule). `tf.image.sample_distorted_bounding_box` is not used: it draws the height,
    not the area, uniformly and the aspect linearly.
    """
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)
    area_seed, aspect_seed, offset_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    )
    area = height * width * _uniform(area_seed, [CROP_ATTEMPTS], min_area, max_area)
    aspect = tf.exp(_uniform(aspect_seed, [CROP_ATTEMPTS], *LOG_ASPECT_RANGE))
    crop_w = tf.round(tf.sqrt(area * aspect))
    crop_h = tf.round(tf.sqrt(area / aspect))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)

    image_aspect = width / height
    lo, hi = math.exp(LOG_ASPECT_RANGE[0]), math.exp(LOG_ASPECT_RANGE[1])
    fallback_w = tf.where(image_aspect > hi, tf.round(height * hi), width)
    fallback_h = tf.where(image_aspect < lo, tf.round(width / lo), height)

    first = tf.argmax(tf.cast(fits, tf.int32))
    any_fits = tf.reduce_any(fits)
    crop_h = tf.where(any_fits, crop_h[first], fallback_h)
    crop_w = tf.where(any_fits, crop_w[first], fallback_w)
    u = _uniform(offset_seed, [2])
    offset_y = tf.where(any_fits, tf.floor(u[0] * (height - crop_h + 1)), (height - crop_h) // 2)
    offset_x = tf.where(any_fits, tf.floor(u[1] * (width - crop_w + 1)), (width - crop_w) // 2)
    return tuple(tf.cast(v, tf.int32) for v in (offset_y, offset_x, crop_h, crop_w))


def flip_decision(seed: tf.Tensor, p_flip: float = 0.5) -> tf.Tensor:
    """Whether the view is mirrored left-right."""
    return _uniform(seed) < p_flip


def crop_flip_resize(
    image: tf.Tensor, window: Sequence[tf.Tensor], flip: tf.Tensor, out_size: int, method: str
) -> tf.Tensor:
    """Apply a crop window and flip to an [H, W, C] image, then resize to out_size².

    Images use "bicubic"; label maps (DetCon masks) use "nearest" so ids stay ids.
    """
    offset_y, offset_x, crop_h, crop_w = window
    crop = tf.image.crop_to_bounding_box(image, offset_y, offset_x, crop_h, crop_w)
    if method != "nearest":
        crop = tf.cast(crop, tf.float32)
    crop = tf.image.resize(crop, [out_size, out_size], method=method)
    crop = tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    return tf.ensure_shape(crop, [out_size, out_size, image.shape[-1]])


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma with weights 0.2989/0.5870/0.1140, tiled back to 3 channels."""
    luma = tf.tensordot(image, tf.constant(GRAY_WEIGHTS, image.dtype), axes=[[-1], [0]])
    return tf.tile(luma[..., None], [1, 1, 3])


def jitter_order(seed: tf.Tensor) -> tf.Tensor:
    """Per-image order of (brightness, contrast, saturation, hue): a permutation of 0..3."""
    return tf.argsort(_uniform(fold_seed(seed, _JITTER_ORDER), [4]))


def _gray_level(image: tf.Tensor) -> tf.Tensor:
    """[H, W, 1] luma with the grayscale weights (torchvision's `rgb_to_grayscale`)."""
    return tf.tensordot(image, tf.constant(GRAY_WEIGHTS, image.dtype), axes=[[-1], [0]])[..., None]


def brightness_tf(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """x + δ (BYOL/SimCLR reference, `tf.image.adjust_brightness`)."""
    return image + delta


def contrast_tf(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """(x − μ_c)·f + μ_c with μ_c each channel's spatial mean (`tf.image.adjust_contrast`)."""
    return tf.image.adjust_contrast(image, factor)


def saturation_tf(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """HSV saturation × f, clipped to [0, 1] (`tf.image.adjust_saturation`)."""
    return tf.image.adjust_saturation(image, factor)


def hue_shift(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """HSV hue + δ on the [0, 1) circle; TF's and torchvision's `adjust_hue` agree."""
    return tf.image.adjust_hue(image, delta)


def brightness_torchvision(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """f·x (torchvision `adjust_brightness`: a blend with black)."""
    return image * factor


def contrast_torchvision(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """f·x + (1 − f)·m with m the image's mean gray level (torchvision `adjust_contrast`)."""
    return factor * image + (1.0 - factor) * tf.reduce_mean(_gray_level(image))


def saturation_torchvision(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """f·x + (1 − f)·gray(x), per pixel (torchvision `adjust_saturation`)."""
    return factor * image + (1.0 - factor) * _gray_level(image)


def jitter_amounts(u: tf.Tensor, preset: AugmentPreset) -> list[tf.Tensor]:
    """Brightness, contrast, saturation, hue amounts from u ~ U[−1, 1]^4.

    'tf': δ_b ~ U[−b, b], contrast and saturation factors ~ U[1 − s, 1 + s] (BYOL's
    `_random_*`); 'torchvision': every factor ~ U[max(0, 1 − s), 1 + s] (ColorJitter's
    `_check_input`). The hue shift is ~ U[−h, h] in both.
    """
    if preset.jitter_style == "tf":
        return [
            u[0] * preset.brightness,
            1.0 + u[1] * preset.contrast,
            1.0 + u[2] * preset.saturation,
            u[3] * preset.hue,
        ]

    def factor(v, strength):
        low = max(0.0, 1.0 - strength)
        return low + (v + 1.0) / 2.0 * (1.0 + strength - low)

    return [
        factor(u[0], preset.brightness),
        factor(u[1], preset.contrast),
        factor(u[2], preset.saturation),
        u[3] * preset.hue,
    ]


JITTER_OPS = {
    "tf": (brightness_tf, contrast_tf, saturation_tf, hue_shift),
    "torchvision": (
        brightness_torchvision,
        contrast_torchvision,
        saturation_torchvision,
        hue_shift,
    ),
}


def color_jitter(image: tf.Tensor, seed: tf.Tensor, preset: AugmentPreset) -> tf.Tensor:
    """Brightness, contrast, saturation, hue in a per-image random order; clip after each
    (both references clip every op to [0, 1]), in the preset's `jitter_style`."""
    amounts = jitter_amounts(_uniform(fold_seed(seed, _JITTER_FACTORS), [4], -1.0, 1.0), preset)
    ops = [
        lambda x, op=op, amount=amount: op(x, amount)
        for op, amount in zip(JITTER_OPS[preset.jitter_style], amounts, strict=True)
    ]
    order = jitter_order(seed)
    for i in range(4):
        branches = [lambda op=op, x=image: tf.clip_by_value(op(x), 0.0, 1.0) for op in ops]
        image = tf.ensure_shape(tf.switch_case(order[i], branches), image.shape)
    return image


def blur_kernel_size(out_size: int) -> int:
    """Odd kernel of about out_size/10 taps (23 at 224 px, the BYOL reference), at least 3."""
    return 2 * max(1, (out_size // 10) // 2) + 1


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable gaussian blur of an [H, W, C] image with reflected borders."""
    radius = kernel_size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-(x**2) / (2.0 * sigma**2))
    taps /= tf.reduce_sum(taps)
    channels = image.shape[-1]
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    kernel_h = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
    kernel_w = tf.reshape(kernel_h, [1, -1, channels, 1])
    out = tf.nn.depthwise_conv2d(padded[None], kernel_h, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kernel_w, [1, 1, 1, 1], "VALID")
    return out[0]


def solarize(image: tf.Tensor) -> tf.Tensor:
    """x < 0.5 ? x : 1 − x."""
    return tf.where(image < 0.5, image, 1.0 - image)


def _maybe(apply: tf.Tensor, fn, image: tf.Tensor) -> tf.Tensor:
    return tf.cond(apply, lambda: fn(image), lambda: image)


def augment_view(
    image: tf.Tensor,
    seed: tf.Tensor,
    preset: AugmentPreset | str,
    view: int,
    out_size: int,
    extra: Sequence[tf.Tensor] | None = None,
    return_decisions: bool = False,
):
    """One augmented view: uint8 [H, W, 1 or 3] → float32 [out_size, out_size, 3] in [0, 1].

    `view` (0 or 1) picks the per-view blur and solarize probabilities. `extra` maps
    ([H, W, k] ints, e.g. DetCon masks) get the same crop window and flip with
    nearest-neighbour resizing; they never change the image. Returns the image, then
    the list of transformed maps if `extra` is given, then a dict of the random
    decisions if `return_decisions`.
    """
    preset = get_preset(preset)
    if view not in (0, 1):
        raise ValueError(f"view must be 0 or 1, got {view}")
    seed = tf.cast(seed, tf.int64)
    if image.shape[-1] == 1:
        image = tf.tile(image, [1, 1, 3])

    window = crop_window(tf.shape(image), fold_seed(seed, _CROP), preset.s_min, preset.s_max)
    flip = flip_decision(fold_seed(seed, _FLIP), preset.p_flip)
    out = crop_flip_resize(image, window, flip, out_size, "bicubic")
    out = tf.clip_by_value(out / 255.0, 0.0, 1.0)

    jitter = _uniform(fold_seed(seed, _JITTER)) < preset.p_jit
    gray = _uniform(fold_seed(seed, _GRAY)) < preset.p_gray
    blur = _uniform(fold_seed(seed, _BLUR)) < preset.p_blur[view]
    sigma = _uniform(fold_seed(seed, _BLUR_SIGMA), (), *BLUR_SIGMA_RANGE)
    solar = _uniform(fold_seed(seed, _SOLARIZE)) < preset.p_solarize[view]

    def jittered(x):
        return color_jitter(x, seed, preset)

    if preset.gray_before_jitter:
        out = _maybe(gray, to_grayscale, out)
        out = _maybe(jitter, jittered, out)
    else:
        out = _maybe(jitter, jittered, out)
        out = _maybe(gray, to_grayscale, out)
    kernel_size = blur_kernel_size(out_size)
    out = _maybe(blur, lambda x: gaussian_blur(x, sigma, kernel_size), out)
    out = _maybe(solar, solarize, out)
    out = tf.ensure_shape(tf.clip_by_value(out, 0.0, 1.0), [out_size, out_size, 3])

    result = [out]
    if extra is not None:
        result.append([crop_flip_resize(m, window, flip, out_size, "nearest") for m in extra])
    if return_decisions:
        result.append(
            {
                "window": tf.stack(window),
                "flip": flip,
                "jitter": jitter,
                "jitter_order": jitter_order(seed),
                "gray": gray,
                "blur": blur,
                "blur_sigma": sigma,
                "solarize": solar,
            }
        )
    return result[0] if len(result) == 1 else tuple(result)


def two_views(
    image: tf.Tensor, seed: tf.Tensor, preset: AugmentPreset | str, out_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """The two differently augmented views of one image (view seeds folded from `seed`)."""
    seed = tf.cast(seed, tf.int64)
    return tuple(
        augment_view(image, fold_seed(seed, view), preset, view, out_size) for view in (0, 1)
    )

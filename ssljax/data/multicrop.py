"""Multi-crop views (Caron et al. 2020) with the view-sampling knobs of SSLight.

Tan, Saleh, Martinez, "Improving the generalization of supervised/self-supervised
low-compute models by view sampling" (ICLR 2023; docs/fidelity.md):
N_g global crops of GC² pixels (GC = `config.dataset.image_size`) with area fraction in
(S_g, 1), N_l local crops of LC² pixels from (0.05, S_l), each cropped by the same
torchvision rule as the two-view presets (`augment.crop_window`), then flip, colour
jitter, grayscale, blur and solarize from `config.augment.preset` with per-crop blur and
solarize probabilities `(global 1, global 2 and later, local)`.

Pixel scale (paper §3.2.2, eq. 1): PS = output pixels / source pixels of the crop,
PS_g = GC²/Area(g), PS_l = LC²/Area(l). Each image reports the mean of PS_g/PS_l over its
N_g·N_l global–local pairs as `pixel_scale_ratio`; the paper's best settings make the
mean over the training set ≈ 1.0. `expected_pixel_scale_ratio` gives the value the crop
geometry implies, with the crop rule's rejection of windows that do not fit.

A training example is `{'global': [N_g, GC, GC, 3], 'local': [N_l, LC, LC, 3] float32 in
[0, 1], 'pixel_scale_ratio': float32}`; batched, the crop axis follows the batch axis.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np
import tensorflow as tf

from ssljax.data import augment
from ssljax.errors import UserError


@dataclasses.dataclass(frozen=True)
class MultiCrop:
    """The view-sampling geometry of a run (`config.multicrop` plus the global size)."""

    num_global: int = 2
    num_local: int = 6
    global_size: int = 224  # GC
    local_size: int = 96  # LC
    global_min_scale: float = 0.14  # S_g: global crops cover (S_g, 1) of the image
    local_min_scale: float = 0.05
    local_max_scale: float = 0.14  # S_l: local crops cover (0.05, S_l)
    p_blur: tuple[float, float, float] = (1.0, 0.1, 0.5)  # (global 1, global 2+, local)
    p_solarize: tuple[float, float, float] = (0.0, 0.2, 0.0)

    def global_probabilities(self, index: int) -> tuple[float, float]:
        """(p_blur, p_solarize) of global crop `index` (the second entry serves 1, 2, …)."""
        i = min(index, 1)
        return self.p_blur[i], self.p_solarize[i]

    def local_probabilities(self) -> tuple[float, float]:
        return self.p_blur[2], self.p_solarize[2]


def from_config(config: ml_collections.ConfigDict) -> MultiCrop:
    """The `MultiCrop` of a config with a `multicrop` field; a UserError if it is unusable."""
    mc = config.multicrop
    geometry = MultiCrop(
        num_global=int(mc.num_global),
        num_local=int(mc.num_local),
        global_size=int(config.dataset.image_size),
        local_size=int(mc.local_size),
        global_min_scale=float(mc.global_min_scale),
        local_min_scale=float(mc.local_min_scale),
        local_max_scale=float(mc.local_max_scale),
        p_blur=tuple(float(p) for p in mc.p_blur),
        p_solarize=tuple(float(p) for p in mc.p_solarize),
    )
    if geometry.num_global < 2 or geometry.num_local < 1:
        raise UserError(
            f"multicrop needs num_global ≥ 2 and num_local ≥ 1, got {geometry.num_global} "
            f"and {geometry.num_local}"
        )
    if not 0 < geometry.global_min_scale <= 1 or not (
        0 < geometry.local_min_scale < geometry.local_max_scale <= 1
    ):
        raise UserError(
            "multicrop scales must satisfy 0 < global_min_scale ≤ 1 and "
            "0 < local_min_scale < local_max_scale ≤ 1"
        )
    if len(geometry.p_blur) != 3 or len(geometry.p_solarize) != 3:
        raise UserError("multicrop.p_blur and p_solarize are (global 1, global 2, local)")
    if geometry.local_size < 8:
        raise UserError(f"multicrop.local_size={geometry.local_size} is too small (≥ 8)")
    return geometry


def _crop_preset(
    preset: augment.AugmentPreset, scale: tuple[float, float], p_blur: float, p_solarize: float
) -> augment.AugmentPreset:
    """The colour preset with one crop kind's scale range and blur/solarize probabilities."""
    return dataclasses.replace(
        preset,
        s_min=scale[0],
        s_max=scale[1],
        p_blur=(p_blur, p_blur),
        p_solarize=(p_solarize, p_solarize),
    )


def crop_presets(
    preset: augment.AugmentPreset, geometry: MultiCrop
) -> tuple[list[augment.AugmentPreset], augment.AugmentPreset]:
    """(one preset per global crop, the local crops' preset)."""
    global_scale = (geometry.global_min_scale, 1.0)
    local_scale = (geometry.local_min_scale, geometry.local_max_scale)
    globals_ = [
        _crop_preset(preset, global_scale, *geometry.global_probabilities(i))
        for i in range(geometry.num_global)
    ]
    return globals_, _crop_preset(preset, local_scale, *geometry.local_probabilities())


def crop_seed(seed: tf.Tensor, crop: int) -> tf.Tensor:
    """The seed of crop `crop` (globals first, then locals) of an image seeded `seed`;
    crops 0 and 1 get the seeds of `augment.two_views`' two views."""
    return augment.fold_seed(seed, crop)


def pixel_scale_ratio(
    global_windows: tf.Tensor, local_windows: tf.Tensor, global_size: int, local_size: int
) -> tf.Tensor:
    """mean over global–local pairs of PS_g/PS_l = (GC²/Area(g)) / (LC²/Area(l)).

    Windows are int [n, 4] rows `(offset_y, offset_x, height, width)` in source pixels.
    """
    area_g = tf.cast(global_windows[:, 2] * global_windows[:, 3], tf.float32)
    area_l = tf.cast(local_windows[:, 2] * local_windows[:, 3], tf.float32)
    ps_g = float(global_size**2) / area_g
    ps_l = float(local_size**2) / area_l
    return tf.reduce_mean(ps_g[:, None] / ps_l[None, :])


def multicrop_views(
    image: tf.Tensor, seed: tf.Tensor, preset: augment.AugmentPreset, geometry: MultiCrop
) -> dict[str, tf.Tensor]:
    """The global and local views of one uint8 [H, W, C] image and its pixel-scale ratio."""
    seed = tf.cast(seed, tf.int64)
    global_presets, local_preset = crop_presets(preset, geometry)
    views, windows = [], []
    for i in range(geometry.num_global + geometry.num_local):
        is_global = i < geometry.num_global
        view, decisions = augment.augment_view(
            image,
            crop_seed(seed, i),
            global_presets[i] if is_global else local_preset,
            0,
            geometry.global_size if is_global else geometry.local_size,
            return_decisions=True,
        )
        views.append(view)
        windows.append(decisions["window"])
    n = geometry.num_global
    ratio = pixel_scale_ratio(
        tf.stack(windows[:n]), tf.stack(windows[n:]), geometry.global_size, geometry.local_size
    )
    return {
        "global": tf.stack(views[:n]),
        "local": tf.stack(views[n:]),
        "pixel_scale_ratio": tf.cast(ratio, tf.float32),
    }


def _accepted_area_moments(
    scale: tuple[float, float], image_shape: tuple[int, int], points: int = 100_001
) -> tuple[float, float]:
    """(E[a], E[1/a]) of the area fraction a of a window drawn by `augment.crop_window`.

    A draw (a ~ U(scale), log r ~ U(±log 4/3)) fits an H×W image iff a·r ≤ W/H and
    a/r ≤ H/W, so P(fit | a) is the overlap of two log-r intervals; the first of 10 draws
    that fits is kept (density ∝ P(fit | a)), else the largest centred window of an
    in-range aspect. Pixel rounding is ignored.
    """
    height, width = image_shape
    bound = augment.LOG_ASPECT_RANGE[1]
    rho = math.log(width / height)
    a = np.linspace(scale[0], scale[1], points)
    low = np.maximum(np.log(a) + rho, -bound)
    high = np.minimum(-np.log(a) + rho, bound)
    p_fit = np.clip(high - low, 0.0, None) / (2 * bound)
    mass = np.trapezoid(p_fit, a)
    mean_a = np.trapezoid(a * p_fit, a) / mass
    mean_inv = np.trapezoid(p_fit / a, a) / mass
    fallback = (1.0 - mass / (scale[1] - scale[0])) ** augment.CROP_ATTEMPTS
    lo, hi = math.exp(-bound), math.exp(bound)
    fallback_area = min(width, height * hi) * min(height, width / lo) / (width * height)
    return (
        (1 - fallback) * mean_a + fallback * fallback_area,
        (1 - fallback) * mean_inv + fallback / fallback_area,
    )


def expected_pixel_scale_ratio(geometry: MultiCrop, image_shape: tuple[int, int]) -> float:
    """E[PS_g/PS_l] = (GC/LC)²·E[Area(l)]·E[1/Area(g)] for H×W images (the two crops are
    drawn independently), under the crop rule of `augment.crop_window`."""
    _, inv_global = _accepted_area_moments((geometry.global_min_scale, 1.0), image_shape)
    local, _ = _accepted_area_moments(
        (geometry.local_min_scale, geometry.local_max_scale), image_shape
    )
    return (geometry.global_size / geometry.local_size) ** 2 * local * inv_global


def describe(geometry: MultiCrop, image_shape: tuple[int, int] | None) -> str:
    """One line for the start of training: the crops and the pixel-scale ratio they imply."""
    shapes = [image_shape] if image_shape else [(224, 224), (375, 500)]
    implied = ", ".join(
        f"{expected_pixel_scale_ratio(geometry, s):.3f} on {s[0]}×{s[1]} images" for s in shapes
    )
    return (
        f"multi-crop: {geometry.num_global}×{geometry.global_size}² from "
        f"({geometry.global_min_scale:g}, 1), {geometry.num_local}×{geometry.local_size}² from "
        f"({geometry.local_min_scale:g}, {geometry.local_max_scale:g}); mean PS_g/PS_l implied "
        f"by the geometry: {implied} (measured per batch: metric `pixel_scale_ratio`)"
    )

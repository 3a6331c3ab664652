"""Felzenszwalb–Huttenlocher (FH) segmentations of one image, with numpy and scikit-image only.

DetCon's unsupervised masks (Hénaff et al. 2021, §3.2). The precompute command's worker
processes (`ssljax.data.mask_cache`) import this module and nothing heavier; the pipeline
(`ssljax.data.masks`) uses it when it computes masks in tf.data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ssljax.errors import UserError


def felzenszwalb_mask(
    image: np.ndarray, scale: float = 1000, sigma: float = 0.8, min_size: int = 1000
) -> np.ndarray:
    """FH segmentation of a uint8 [H, W(, C)] image as int32 [H, W] ids 0..n−1.

    Defaults are the paper's ImageNet values (§3.2), to be run on the full-size image.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    from skimage.segmentation import felzenszwalb

    channel_axis = -1 if image.ndim == 3 else None
    segments = felzenszwalb(
        image, scale=scale, sigma=sigma, min_size=int(min_size), channel_axis=channel_axis
    )
    return segments.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class FHParams:
    """FH parameters; several scales give several mask channels (COCO: 500/1000/1500,
    min_size = scale), of which the pipeline draws one per image and epoch."""

    scales: tuple[float, ...] = (1000.0,)
    sigma: float = 0.8
    min_sizes: tuple[int, ...] = (1000,)

    def __post_init__(self):
        if not self.scales or len(self.min_sizes) != len(self.scales):
            raise UserError(
                f"FH needs one min_size per scale, got scales={self.scales} "
                f"min_sizes={self.min_sizes}"
            )

    @classmethod
    def make(cls, scales, sigma: float, min_size) -> FHParams:
        """`min_size` is one int for every scale, one per scale, or 0 for 'equal to scale'."""
        scales = tuple(float(s) for s in (scales if isinstance(scales, Sequence) else [scales]))
        if isinstance(min_size, Sequence):
            min_sizes = tuple(int(m) for m in min_size)
        else:
            min_sizes = tuple(int(s if int(min_size) == 0 else min_size) for s in scales)
        return cls(scales, float(sigma), min_sizes)

    @classmethod
    def from_config(cls, masks_config) -> FHParams:
        return cls.make(masks_config.fh_scales, masks_config.fh_sigma, masks_config.fh_min_size)

    @property
    def key(self) -> str:
        """The cache directory name, e.g. 'fh_s1000_sig0.8_min1000'."""

        def join(values):
            return "-".join(f"{v:g}" for v in values)

        return f"fh_s{join(self.scales)}_sig{self.sigma:g}_min{join(self.min_sizes)}"

    def flags(self) -> str:
        """The precompute command's flags for these parameters."""
        return (
            f"--scale={','.join(f'{s:g}' for s in self.scales)} --sigma={self.sigma:g} "
            f"--min_size={','.join(str(m) for m in self.min_sizes)}"
        )


def fh_masks(image: np.ndarray, params: FHParams) -> np.ndarray:
    """int32 [H, W, C]: one FH mask per scale of `params`."""
    return np.stack(
        [
            felzenszwalb_mask(image, scale, params.sigma, min_size)
            for scale, min_size in zip(params.scales, params.min_sizes, strict=True)
        ],
        axis=-1,
    )

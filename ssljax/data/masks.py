"""DetCon segmentation masks: compute them, cache them, carry them through the views.

A mask is an int32 [H, W] map of segment ids over an image's full resolution. Each view
gets its image's crop window and flip with nearest-neighbour resizing (`augment_view`'s
`extra` maps), is pooled to the encoder's g×g feature grid by per-cell majority, and R
ids are sampled per view among the segments that own a cell in that view (DetCon,
Hénaff et al. 2021, §3.2; docs/fidelity.md).
Ids stay int32 end to end: the DetCon reference stores uint8 and wraps above 255.

Felzenszwalb–Huttenlocher (FH) masks are expensive, so a large dataset's are computed
once by ``python -m ssljax.data.masks --dataset=NAME --split=SPLIT`` into a cache keyed
by dataset, split and FH parameters (`ssljax.data.mask_cache`); small datasets may
compute them in the pipeline instead (`masks.compute_in_pipeline`). FH itself is
`ssljax.data.fh` (numpy and scikit-image only, for the precompute command's workers);
TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ssljax.data.fh import FHParams, fh_masks
from ssljax.errors import UserError

if TYPE_CHECKING:
    import ml_collections
    import tensorflow_datasets as tfds
    from tensorflow import Tensor

    from ssljax.data.augment import AugmentPreset

KINDS = ("none", "fh", "grid", "global", "ground_truth")  # ground_truth: COCO panoptic
# Seed folds of one example; the views use 0 and 1 (`augment.two_views`).
_SAMPLE_IDS, _PICK_SCALE = 2, 3


# ---- Views and the batch contract (tf.data) --------------------------------------


def majority_pool(mask: Tensor, grid: int) -> Tensor:
    """int32 [S, S'] view mask → int32 [g, g], each cell's majority segment id.

    Pixel (y, x) is in cell (y·g // S, x·g // S'); when g divides S this is average
    pooling of every binary segment mask to the grid, then an argmax over segments. Ties
    go to the smallest id.
    """
    import tensorflow as tf

    shape = tf.shape(mask)
    ids, segment = tf.unique(tf.reshape(mask, [-1]))
    order = tf.argsort(ids)
    ids, segment = tf.gather(ids, order), tf.gather(tf.math.invert_permutation(order), segment)
    rows = tf.range(shape[0]) * grid // shape[0]
    cols = tf.range(shape[1]) * grid // shape[1]
    cell = tf.reshape(rows[:, None] * grid + cols[None, :], [-1])
    bins = grid * grid * tf.size(ids)
    counts = tf.math.bincount(cell * tf.size(ids) + segment, minlength=bins, maxlength=bins)
    winner = tf.argmax(tf.reshape(counts, [grid * grid, -1]), axis=1, output_type=tf.int32)
    return tf.reshape(tf.gather(ids, winner), [grid, grid])


SAMPLINGS = ("independent", "shared")


def sample_ids(
    mask1: Tensor, mask2: Tensor, seed: Tensor, num_samples: int, sampling: str = "independent"
) -> tuple[Tensor, Tensor]:
    """`num_samples` ids per view, uniform with replacement among the ids owning a cell.

    'independent' (the DetCon reference, `detcon_b.py` `sample_masks`, which takes a fresh
    rng key per view): each view draws with its own seed among every id present in that
    view, so some draws have no positive in the other view (weight 0 in the loss, still
    negatives) and ids seen in one view only are drawn. 'shared' (an earlier ssljax
    default): one draw among the ids present in both views, used for both (ids1 == ids2);
    each view from its own ids when they share none. A pure function of `seed`.
    """
    import tensorflow as tf

    if sampling not in SAMPLINGS:
        raise UserError(f"masks.sampling={sampling!r}; use one of {', '.join(SAMPLINGS)}")
    present1 = tf.sort(tf.unique(tf.reshape(mask1, [-1]))[0])
    present2 = tf.sort(tf.unique(tf.reshape(mask2, [-1]))[0])
    seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    pool1, pool2 = present1, present2
    if sampling == "shared":
        in2 = tf.reduce_any(present1[:, None] == present2[None, :], axis=1)
        in1 = tf.reduce_any(present2[:, None] == present1[None, :], axis=1)
        has_shared = tf.reduce_any(in2)
        # With shared ids both pools are the same sorted shared ids and one seed draws both.
        pool1 = tf.boolean_mask(present1, in2 | ~has_shared)
        pool2 = tf.boolean_mask(present2, in1 | ~has_shared)
        seed2 = tf.where(has_shared, seed1, seed2)

    def draw(pool, draw_seed):
        size = tf.size(pool)
        picks = tf.random.stateless_uniform([num_samples], draw_seed, 0, size, dtype=tf.int32)
        return tf.gather(pool, picks)

    ids1, ids2 = draw(pool1, seed1), draw(pool2, seed2)
    return tf.ensure_shape(ids1, [num_samples]), tf.ensure_shape(ids2, [num_samples])


def views_with_masks(
    image: Tensor,
    mask: Tensor,
    seed: Tensor,
    preset: AugmentPreset | str,
    out_size: int,
    grid: int,
    num_samples: int,
    sampling: str = "independent",
) -> dict[str, Tensor]:
    """The two views of `augment.two_views` (same seeds, same pixels) and the contract's
    mask1/mask2 (int32 [g, g]) and ids1/ids2 (int32 [R], drawn by `sample_ids` with
    `sampling`); `mask` is int32 [H, W, 1]."""
    import tensorflow as tf

    from ssljax.data import augment

    seed = tf.cast(seed, tf.int64)
    out = {}
    for view in (0, 1):
        image_view, (mask_view,) = augment.augment_view(
            image, augment.fold_seed(seed, view), preset, view, out_size, extra=[mask]
        )
        out[f"view{view + 1}"] = image_view
        out[f"mask{view + 1}"] = majority_pool(mask_view[..., 0], grid)
    out["ids1"], out["ids2"] = sample_ids(
        out["mask1"], out["mask2"], augment.fold_seed(seed, _SAMPLE_IDS), num_samples, sampling
    )
    return out


def pick_scale(masks: Tensor, seed: Tensor) -> Tensor:
    """One channel of int32 [H, W, C] per image (C FH scales), drawn from the image's seed."""
    import tensorflow as tf

    from ssljax.data import augment

    if masks.shape[-1] == 1:
        return masks
    pick_seed = augment.fold_seed(seed, _PICK_SCALE)
    channel = tf.random.stateless_uniform([], pick_seed, 0, masks.shape[-1], dtype=tf.int32)
    return masks[..., channel][..., None]


def panoptic_segment_ids(panoptic: Tensor) -> Tensor:
    """COCO panoptic PNG pixels (uint8 [H, W, 3]) → int32 [H, W, 1] segment ids.

    The panoptic format stores id = R + 256·G + 256²·B (0: unlabelled pixels, which form
    one segment of their own here). Ids reach 2^24, so they stay int32.
    """
    import tensorflow as tf

    rgb = tf.cast(panoptic, tf.int32)
    return (rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2])[..., None]


def resize_nearest(mask: Tensor, size: Tensor) -> Tensor:
    """int32 [h, w, 1] → [H, W, 1] by nearest neighbour; a no-op when the sizes agree (as
    COCO's panoptic PNGs and their images do)."""
    import tensorflow as tf

    def resize():
        return tf.image.resize(mask, size, method="nearest")

    return tf.cond(tf.reduce_all(tf.shape(mask)[:2] == size), lambda: mask, resize)


@dataclasses.dataclass(frozen=True)
class MaskSource:
    """A training image's full-size mask, `mask(example, image, seed)` → int32 [H, W, 1];
    `needs_tfds_id`: the example must carry its tfds_id (cache lookups); `features`: the
    dataset features it reads besides the image."""

    mask: Any
    needs_tfds_id: bool = False
    features: tuple[str, ...] = ()


def mask_source(
    config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, split: str
) -> MaskSource | None:
    """The mask source `config.masks` asks for (None for kind 'none' or no `masks`).

    FH masks come from the cache unless `masks.compute_in_pipeline`; a missing cache is a
    UserError with the command that fills it.
    """
    import tensorflow as tf

    masks_config = config.get("masks")
    kind = "none" if masks_config is None else masks_config.kind
    if kind not in KINDS:
        raise UserError(f"config.masks.kind={kind!r}; use one of {', '.join(KINDS)}")
    if kind == "none":
        return None
    if kind == "ground_truth":
        from ssljax.data import registry

        info = registry.DATASETS.get(config.dataset.name)
        if info is None or info.mask_key is None:
            with_masks = sorted(n for n, i in registry.DATASETS.items() if i.mask_key)
            raise UserError(
                f"masks.kind='ground_truth' needs a dataset with ground-truth segmentations; "
                f"{config.dataset.name!r} has none. Use one of {with_masks}, or kind 'fh'."
            )

        def ground_truth(example, image, seed):
            segments = panoptic_segment_ids(example[info.mask_key])
            return resize_nearest(segments, tf.shape(image)[:2])

        return MaskSource(ground_truth, features=(info.mask_key,))
    if kind == "global":
        return MaskSource(lambda example, image, seed: tf.zeros_like(image[..., :1], tf.int32))
    if kind == "grid":
        n = int(masks_config.grid_size)

        def grid(example, image, seed):
            shape = tf.shape(image)
            rows = tf.range(shape[0]) * n // shape[0]
            cols = tf.range(shape[1]) * n // shape[1]
            return (rows[:, None] * n + cols[None, :])[..., None]

        return MaskSource(grid)

    params = FHParams.from_config(masks_config)
    channels = len(params.scales)
    if masks_config.compute_in_pipeline:

        def compute(example, image, seed):
            masks = tf.numpy_function(
                lambda x: fh_masks(x, params), [image], tf.int32, stateful=False
            )
            return pick_scale(tf.ensure_shape(masks, [None, None, channels]), seed)

        return MaskSource(compute)

    from ssljax.data import mask_cache

    caches = mask_cache.checked_caches(config, builder, split, params)

    def read(tfds_id):
        base, shard, index = mask_cache.parse_tfds_id(tfds_id)
        return caches[base].read_in_shard(shard, index)

    def cached(example, image, seed):
        masks = tf.numpy_function(read, [example["tfds_id"]], tf.int32, stateful=False)
        masks = tf.ensure_shape(masks, [None, None, channels])
        check = tf.debugging.assert_equal(
            tf.shape(masks)[:2], tf.shape(image)[:2], message="cached mask ≠ image size"
        )
        with tf.control_dependencies([check]):
            return pick_scale(tf.identity(masks), seed)

    return MaskSource(cached, needs_tfds_id=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The precompute command: fill the FH mask cache of a dataset split, on every core."""
    from ssljax.data import mask_cache

    parser = argparse.ArgumentParser(
        prog="python -m ssljax.data.masks",
        description=mask_cache.precompute.__doc__.splitlines()[0],
    )
    parser.add_argument("--dataset", required=True, help="a name of ssljax.data.registry")
    parser.add_argument("--split", required=True, help="a tfds split spec, e.g. train[:1000]")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir (default as training)")
    parser.add_argument("--cache_dir", default=None, help="default: <data_dir>/ssljax_masks")
    parser.add_argument("--scale", default="1000", help="FH scale(s), comma separated")
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--min_size", default="1000", help="one, one per scale, or 0 (= scale)")
    parser.add_argument("--workers", type=int, default=None, help="default: every core")
    parser.add_argument("--chunk_size", type=int, default=mask_cache.CHUNK_SIZE)
    args = parser.parse_args(argv)
    try:
        min_sizes = [int(m) for m in args.min_size.split(",")]
        params = FHParams.make(
            [float(s) for s in args.scale.split(",")],
            args.sigma,
            min_sizes if len(min_sizes) > 1 else min_sizes[0],
        )
        mask_cache.precompute(
            args.dataset,
            args.split,
            params,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            workers=args.workers,
            chunk_size=args.chunk_size,
            log=lambda line: print(line, flush=True),
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; run the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())

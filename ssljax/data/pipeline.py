"""Train and eval input pipelines: process-local numpy batches from tfds.

The training stream is a pure function of (seed, process_index, process_count, step):
epoch e reads this process's shard in an order seeded by (seed, e), numbers the
examples, and seeds each example's augmentation from (seed, e, index). Resuming at
step k rebuilds k's epoch and skips the consumed examples before they are decoded, so
the resumed stream equals the uninterrupted one and costs a read, not an augmentation,
per skipped image.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssljax.data import augment, masks, multicrop, registry
from ssljax.errors import UserError


def steps_per_epoch(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """Full global batches per epoch (the remainder is dropped), equal on every process."""
    return num_train_examples // config.batch_size


def train_split(config: ml_collections.ConfigDict, info: registry.DatasetInfo) -> str:
    """`config.dataset.train_split` if set (e.g. 'train[:1024]'), else the registry's."""
    return config.dataset.get("train_split") or info.train_split


def train_steps_per_epoch(
    config: ml_collections.ConfigDict, info: registry.DatasetInfo, builder
) -> int:
    """`steps_per_epoch` of the training split; a split smaller than a batch is a UserError."""
    split = train_split(config, info)
    steps = steps_per_epoch(config, registry.split_num_examples(builder, split))
    if steps == 0:
        raise UserError(
            f"{info.name} split {split!r} has fewer images than one batch of "
            f"{config.batch_size}; lower --config.batch_size or use a larger split"
        )
    return steps


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return index, count


def _local_batch(batch_size: int, process_count: int) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise UserError(
            f"batch_size={batch_size} must be a positive multiple of the {process_count} "
            "processes; change --config.batch_size"
        )
    return batch_size // process_count


def _options(config: ml_collections.ConfigDict) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    threads = config.dataset.get("threads")
    if threads:
        options.threading.private_threadpool_size = int(threads)
        options.threading.max_intra_op_parallelism = 1
    return options


def _decode(encoded: tf.Tensor, builder: tfds.core.DatasetBuilder, image_key: str) -> tf.Tensor:
    channels = builder.info.features[image_key].shape[-1] or 3
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    return tf.ensure_shape(image, [None, None, channels])


def _epoch_seeds(seed: int, epoch: int, process_index: int) -> tuple[int, int]:
    """(file-order seed, shuffle-buffer seed) of one epoch on one process."""
    state = np.random.SeedSequence([seed, epoch, process_index]).generate_state(2)
    return int(state[0]), int(state[1])


@dataclasses.dataclass(frozen=True)
class _TrainStream:
    """What stays fixed across the epochs of one process's training stream."""

    config: ml_collections.ConfigDict
    info: registry.DatasetInfo
    builder: tfds.core.DatasetBuilder
    shard: Any  # this process's part of the training split
    process_index: int
    local_batch: int
    steps: int  # per epoch
    make_example: Any  # (epoch_key, index, encoded example) -> views and label
    add_tfds_id: bool = False  # DetCon masks read from the cache are joined by tfds_id
    extra_features: tuple[str, ...] = ()  # read besides image and label (a GT mask)

    def decoders(self) -> tfds.decode.PartialDecoding:
        """Read only the features the views need (COCO's boxes are never decoded); the
        image stays encoded until `_decode`, after the skipped examples are dropped."""
        info = self.info
        keys = [info.image_key, *([info.label_key] if info.label_key else [])]
        return tfds.decode.PartialDecoding(
            {key: True for key in [*keys, *self.extra_features]},
            decoders={info.image_key: tfds.decode.SkipDecoding()},
        )

    def epoch(self, epoch: int, skip: int) -> tf.data.Dataset:
        """Batches `skip`..`steps`-1 of `epoch`; skipped examples are read, not decoded."""
        config = self.config
        file_seed, buffer_seed = _epoch_seeds(config.seed, epoch, self.process_index)
        ds = self.builder.as_dataset(
            split=self.shard,
            shuffle_files=True,
            read_config=tfds.ReadConfig(
                shuffle_seed=file_seed,
                shuffle_reshuffle_each_iteration=False,
                add_tfds_id=self.add_tfds_id,
            ),
            decoders=self.decoders(),
        )
        ds = ds.shuffle(
            config.dataset.shuffle_buffer, seed=buffer_seed, reshuffle_each_iteration=False
        )
        ds = ds.enumerate().take(self.steps * self.local_batch).skip(skip * self.local_batch)
        key = augment.fold_seed(tf.constant([config.seed, self.process_index], tf.int64), epoch)
        ds = ds.map(
            lambda index, example: self.make_example(key, index, example),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.batch(self.local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return ds.with_options(_options(config))


def _example_fn(config, info, builder, mask_source=None):
    """The per-example work as one tf.function, so it is traced once, not once per epoch.

    With a `masks.MaskSource` the views are the same and DetCon's mask1/mask2/ids1/ids2
    are added; with `config.multicrop` the views are `ssljax.data.multicrop`'s.
    """
    preset = augment.preset_from_config(config.augment)
    size = config.dataset.image_size
    geometry = multicrop.from_config(config) if "multicrop" in config else None

    @tf.function
    def make_example(epoch_key, index, example):
        image = _decode(example[info.image_key], builder, info.image_key)
        seed = augment.fold_seed(epoch_key, index)
        if geometry is not None:
            out = multicrop.multicrop_views(image, seed, preset, geometry)
        elif mask_source is None:
            view1, view2 = augment.two_views(image, seed, preset, size)
            out = {"view1": view1, "view2": view2}
        else:
            mask = mask_source.mask(example, image, seed)
            grid, samples = config.masks.grid, config.masks.num_samples
            sampling = config.masks.get("sampling", "independent")
            out = masks.views_with_masks(image, mask, seed, preset, size, grid, samples, sampling)
        if info.label_key is not None:
            out["label"] = tf.cast(example[info.label_key], tf.int32)
        return out

    return make_example


def train_batches(
    config: ml_collections.ConfigDict,
    *,
    start_step: int = 0,
    dataset: tuple[registry.DatasetInfo, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches from global step `start_step` on, forever; from
    `dataset` = `registry.get_dataset(...)` when the caller has opened it already.

    Yields {'view1', 'view2': float32 [b, S, S, 3] in [0, 1], 'label': int32 [b]} with
    b = batch_size / process_count; 'label' only for labelled datasets (-1 marks the
    unlabelled images of e.g. stl10's 'unlabelled+train'). When `config.masks.kind` is
    not 'none', also DetCon's 'mask1', 'mask2': int32 [b, g, g] and 'ids1', 'ids2':
    int32 [b, R] (see `ssljax.data.masks`). With `config.multicrop`, 'global' [b, N_g,
    S, S, 3], 'local' [b, N_l, LC, LC, 3] and 'pixel_scale_ratio' [b] replace the two
    views (see `ssljax.data.multicrop`).
    """
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch(config.batch_size, process_count)
    augment.preset_from_config(config.augment)  # fail early on a bad preset or field
    if dataset is None:
        dataset = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    info, builder = dataset
    if "multicrop" in config and process_index == 0:
        height, width = builder.info.features[info.image_key].shape[:2]
        shape = (height, width) if height else None  # None: images of varying size
        print(multicrop.describe(multicrop.from_config(config), shape), flush=True)
    split = train_split(config, info)
    steps = train_steps_per_epoch(config, info, builder)
    mask_source = masks.mask_source(config, builder, split)
    shard = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count
    )
    stream = _TrainStream(
        config,
        info,
        builder,
        shard,
        process_index,
        local_batch,
        steps,
        _example_fn(config, info, builder, mask_source),
        add_tfds_id=mask_source is not None and mask_source.needs_tfds_id,
        extra_features=mask_source.features if mask_source is not None else (),
    )
    epoch, skip = divmod(start_step, steps)
    while True:
        yielded = skip
        try:
            for batch in stream.epoch(epoch, skip).as_numpy_iterator():
                yielded += 1
                yield batch
        except tf.errors.OpError as e:  # a truncated or corrupt record
            raise registry.damaged_data(info, builder, split, e) from None
        if yielded != steps:
            raise RuntimeError(
                f"epoch {epoch} of {info.name} {split!r} gave {yielded} batches, expected {steps}: "
                "the prepared data does not match its dataset_info.json"
            )
        epoch, skip = epoch + 1, 0


def eval_image(image: tf.Tensor, size: int, crop_fraction: float) -> tf.Tensor:
    """Deterministic eval view: the centre square of side crop_fraction × the shorter side,
    resized (bicubic) to size² — the same window as resizing the shorter side to
    size / crop_fraction and centre-cropping size, as the BYOL reference does it."""
    if image.shape[-1] == 1:
        image = tf.tile(image, [1, 1, 3])
    shape = tf.shape(image)
    side = tf.cast(
        tf.round(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * crop_fraction), tf.int32
    )
    side = tf.maximum(side, 1)
    crop = tf.image.crop_to_bounding_box(
        image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side
    )
    out = tf.image.resize(tf.cast(crop, tf.float32), [size, size], method="bicubic")
    return tf.ensure_shape(tf.clip_by_value(out / 255.0, 0.0, 1.0), [size, size, 3])


def eval_batches(
    config: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over this process's shard of `split`.

    Yields {'image': float32 [batch_size, S, S, 3] in [0, 1], 'label': int32, 'mask': bool};
    the tail is padded with mask=False rows, and every process yields the same number
    of batches so that multi-host collectives line up.
    """
    process_index, process_count = _process(process_index, process_count)
    info, builder = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    num_examples = registry.split_num_examples(builder, split)
    num_batches = math.ceil(math.ceil(num_examples / process_count) / batch_size)
    shard = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count
    )
    ds = builder.as_dataset(
        split=shard, shuffle_files=False, decoders={info.image_key: tfds.decode.SkipDecoding()}
    )
    size = config.dataset.image_size

    @tf.autograph.experimental.do_not_convert  # plain graph code, inside a generator
    def make_example(example):
        image = _decode(example[info.image_key], builder, info.image_key)
        label = example[info.label_key] if info.label_key is not None else -1
        return {
            "image": eval_image(image, size, info.eval_resize),
            "label": tf.cast(label, tf.int32),
            "mask": tf.constant(True),
        }

    ds = ds.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    padding = {
        "image": tf.zeros([size, size, 3], tf.float32),
        "label": tf.constant(-1, tf.int32),
        "mask": tf.constant(False),
    }
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    ds = ds.take(num_batches * batch_size).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    try:
        yield from ds.with_options(_options(config)).as_numpy_iterator()
    except tf.errors.OpError as e:  # a truncated or corrupt record
        raise registry.damaged_data(info, builder, split, e) from None


def labelled_batches(
    config: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    *,
    seed: int,
    view: augment.AugmentPreset | None = None,
    subset: np.ndarray | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches of labelled images for supervised training, this process's
    share: {'image': float32 [b, S, S, 3] in [0, 1], 'label': int32 [b]}, b = batch_size /
    process_count.

    The images are this process's shard of `split` (files and a buffer of
    `config.dataset.shuffle_buffer` shuffled), or with `subset` (indices into `split`) every
    process_count-th of those images, their encoded bytes cached in memory and reshuffled
    every pass. `view`: a random augmentation (`augment.augment_view`),
    seeded from the running position so that the stream is the same on every run; None:
    the evaluation view with a random horizontal flip (seeded alike).
    """
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch(batch_size, process_count)
    info, builder = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    decoders = {info.image_key: tfds.decode.SkipDecoding()}
    if subset is None:
        shard = tfds.split_for_jax_process(
            split, process_index=process_index, process_count=process_count
        )
        read = tfds.ReadConfig(shuffle_seed=seed + process_index)
        ds = builder.as_dataset(
            split=shard, shuffle_files=True, read_config=read, decoders=decoders
        )
        buffer = min(config.dataset.shuffle_buffer, registry.split_num_examples(builder, shard))
    else:
        local = np.asarray(subset)[process_index::process_count]
        selected = np.zeros(registry.split_num_examples(builder, split), bool)
        selected[local] = True
        selected, buffer = tf.constant(selected), len(local)
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
        ds = ds.enumerate().filter(lambda i, ex: tf.gather(selected, i)).map(lambda i, ex: ex)
    ds = ds.map(lambda ex: (ex[info.image_key], tf.cast(ex[info.label_key], tf.int32)))
    if subset is not None:
        ds = ds.cache()  # a small subset: read once
    ds = ds.shuffle(buffer, seed=seed + process_index, reshuffle_each_iteration=True)
    size = config.dataset.image_size
    key = tf.constant([seed, process_index], tf.int64)

    def make_example(position, example):
        encoded, label = example
        image = _decode(encoded, builder, info.image_key)
        example_seed = augment.fold_seed(key, position)
        if view is not None:
            image = augment.augment_view(image, example_seed, view, 0, size)
        else:
            image = eval_image(image, size, info.eval_resize)
            image = tf.image.stateless_random_flip_left_right(image, example_seed)
        return {"image": image, "label": label}

    ds = ds.repeat().enumerate().map(make_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    try:
        yield from ds.with_options(_options(config)).as_numpy_iterator()
    except tf.errors.OpError as e:  # a truncated or corrupt record
        raise registry.damaged_data(info, builder, split, e) from None


def split_labels(config, split: str) -> np.ndarray:
    """The labels of `split` in tfds's unshuffled order, images not decoded."""
    info, builder = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders={info.image_key: tfds.decode.SkipDecoding()}
    )
    ds = ds.map(lambda ex: ex[info.label_key], num_parallel_calls=tf.data.AUTOTUNE).batch(8192)
    return np.concatenate([np.asarray(b, np.int64) for b in ds.as_numpy_iterator()])

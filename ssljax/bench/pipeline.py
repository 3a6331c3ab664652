"""`python -m ssljax.bench pipeline`: the tf.data input pipeline alone, at ImageNet sizes.

The per-example work is the training pipeline's own (`pipeline._example_fn`: JPEG
decode, the config's views — two views, multi-crop, or DetCon's views with masks and
sampled ids —, the label), then batching and prefetch as in training. The images are
JPEGs of ImageNet's mean size (~500×375) cut from scikit-image's bundled photos:
`tfds.testing.mock_data` draws 5–50-px random images, far from ImageNet's decode and
crop cost. DetCon's FH masks come either from a real mask cache (array_record files
written by `ssljax.data.mask_cache.MaskCache`, read per example as in training) or are
computed in tf.data (`masks.compute_in_pipeline`).

Per-core rate = images / CPU seconds of this process (all tf.data threads), so it is
the rate of one idle core even on a loaded machine; the wall-clock rate is printed too.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import types
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from ssljax.bench.step import load_average
from ssljax.data import augment, masks, pipeline, registry

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
IMAGENET_MEAN_SIZE = (375, 500)  # height, width: about ImageNet's mean training image

# Published training rates the feeding figures are checked against (per accelerator chip).
# BYOL ResNet-50, 1000 epochs of ImageNet (1,281,167 images) in ~8 h on 512 TPU v3 cores
# (256 chips): github.com/google-deepmind/deepmind-research/tree/master/byol (README).
BYOL_V3_IMAGES_PER_SEC_PER_CHIP = 1_281_167 * 1000 / (8 * 3600) / 256
CHIPS_PER_HOST = {"TPU v3": 4, "TPU v4": 4, "TPU v5e": 8, "TPU v5p": 4, "TPU v6e": 8}
# bfloat16 peak per chip relative to v3 (123 TFLOP/s), ssljax.perf.PEAKS: the rate a
# chip reaches at v3's utilisation.
PEAK_PER_CHIP = {"TPU v3": 123e12, "TPU v4": 275e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
                 "TPU v6e": 918e12}  # fmt: skip


def mock_jpegs(num_images: int, seed: int = 0) -> list[bytes]:
    """`num_images` JPEGs (quality 90) of about 500×375, random crops of bundled photos
    rescaled to sizes around ImageNet's mean."""
    import skimage.data
    import skimage.transform
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]
    out = []
    for i in range(num_images):
        photo = photos[i % len(photos)]
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, -1)
        height = int(IMAGENET_MEAN_SIZE[0] * rng.uniform(0.8, 1.2))
        width = int(IMAGENET_MEAN_SIZE[1] * rng.uniform(0.8, 1.2))
        top = rng.integers(0, max(photo.shape[0] // 4, 1))
        left = rng.integers(0, max(photo.shape[1] // 4, 1))
        crop = photo[top:, left:]
        image = skimage.transform.resize(crop, (height, width), anti_aliasing=True)
        image = (image * 255).round().astype(np.uint8)
        out.append(tf.io.encode_jpeg(image, quality=90).numpy())
    return out


def _write_mask_cache(config, jpegs: list[bytes], root: str) -> masks.MaskSource:
    """A real mask cache of `jpegs` under `root` (FH once per image), and the source that
    reads it per example the way training does (one array_record record, zlib)."""
    import tensorflow as tf

    from ssljax.data import mask_cache

    params = masks.FHParams.from_config(config.masks)
    cache = mask_cache.MaskCache(root, "bench", "train", params)
    split_info = types.SimpleNamespace(num_examples=len(jpegs), shard_lengths=[len(jpegs)])
    cache.create(split_info, chunk_size=mask_cache.CHUNK_SIZE)
    images = [tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs]
    records = mask_cache._segment_images(images, params)
    for chunk in range(-(-len(records) // mask_cache.CHUNK_SIZE)):
        start = chunk * mask_cache.CHUNK_SIZE
        cache.write_chunk(chunk, records[start : start + mask_cache.CHUNK_SIZE])
    channels = len(params.scales)

    def cached(example, image, seed):
        read = tf.numpy_function(cache.read, [example["index"]], tf.int32, stateful=False)
        return masks.pick_scale(tf.ensure_shape(read, [None, None, channels]), seed)

    return masks.MaskSource(cached)


def _batches(config, jpegs, mask_source) -> Iterator[Any]:
    import tensorflow as tf

    info = registry.DATASETS["imagenet2012"]
    builder = types.SimpleNamespace(
        info=types.SimpleNamespace(features={info.image_key: types.SimpleNamespace(shape=(3,))})
    )
    make_example = pipeline._example_fn(config, info, builder, mask_source)
    labels = np.arange(len(jpegs)) % 1000
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": jpegs, "label": labels, "index": np.arange(len(jpegs))}
    )
    key = augment.fold_seed(tf.constant([config.seed, 0], tf.int64), 0)
    ds = examples.repeat().enumerate()
    ds = ds.map(
        lambda index, example: make_example(key, index, example),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(pipeline._options(config)).as_numpy_iterator()


def _measure(config, jpegs, mask_source, batches: int) -> dict[str, Any]:
    iterator = _batches(config, jpegs, mask_source)
    next(iterator)  # tracing, thread pools, the first prefetch
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = batches * config.batch_size
    return {
        "images_per_sec": images / wall,
        "images_per_sec_per_core": images / cpu,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
    }


def feeding(per_core: float) -> dict[str, Any]:
    """Host cores needed to feed each TPU generation's chips at the BYOL reference rate
    (v3's published rate, scaled to the other chips by bfloat16 peak)."""
    out = {}
    for kind, chips in CHIPS_PER_HOST.items():
        rate = BYOL_V3_IMAGES_PER_SEC_PER_CHIP * PEAK_PER_CHIP[kind] / PEAK_PER_CHIP["TPU v3"]
        out[kind] = {
            "images_per_sec_per_host": round(rate * chips),
            "cores_needed": round(rate * chips / per_core, 1),
        }
    return out


def views_name(config: ml_collections.ConfigDict) -> str:
    if "multicrop" in config:
        mc = config.multicrop
        return f"{mc.num_global}x{config.dataset.image_size} + {mc.num_local}x{mc.local_size}"
    views = f"2x{config.dataset.image_size}"
    masks_config = config.get("masks")
    if masks_config is not None and masks_config.kind != "none":
        views += f" + {masks_config.kind} masks"
    return views


def benchmark_pipeline(
    config: ml_collections.ConfigDict,
    batches: int = 20,
    mask_cache: str = "both",
    num_images: int = 512,
) -> Iterator[dict[str, Any]]:
    """One result per mask source (cache, computed in tf.data; just one without masks)."""
    jpegs = mock_jpegs(num_images)
    base = {
        "config": config.method + (f":{config.preset}" if config.preset else ""),
        "views": views_name(config),
        "batch_size": config.batch_size,
        "mean_jpeg_bytes": int(np.mean([len(j) for j in jpegs])),
        "host_cores": len(os.sched_getaffinity(0)),
    }
    masks_config = config.get("masks")
    sources = [None]
    if masks_config is not None and masks_config.kind == "fh":
        sources = {"both": ["with", "without"]}.get(mask_cache, [mask_cache])
    for source in sources:
        run = copy.deepcopy(config)
        result = dict(base)
        with tempfile.TemporaryDirectory() as root:
            if source == "with":
                mask_source = _write_mask_cache(run, jpegs, root)
            elif source == "without":
                run.masks.compute_in_pipeline = True
                mask_source = masks.mask_source(run, None, "train")
            else:
                mask_source = masks.mask_source(run, None, "train")
            if source is not None:
                result["mask_cache"] = source == "with"
            result["load_average"] = load_average()
            result.update(_measure(run, jpegs, mask_source, batches))
        result["feeding_byol_rate"] = feeding(result["images_per_sec_per_core"])
        yield result

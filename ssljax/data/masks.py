"""DetCon segmentation masks: compute them, cache them, carry them through the views.

A mask is an int32 [H, W] map of segment ids over an image's full resolution. Each view
gets its image's crop window and flip with nearest-neighbour resizing (`augment_view`'s
`extra` maps), is pooled to the encoder's g×g feature grid by per-cell majority, and R
ids are sampled among the segments that own a cell (SPEC.md "DetCon_S / DetCon_B").
Ids stay int32 end to end: the DetCon reference stores uint8 and wraps above 255.

Felzenszwalb–Huttenlocher (FH) masks are expensive, so a large dataset's are computed
once by ``python -m ssljax.data.masks --dataset=NAME --split=SPLIT`` into a cache keyed
by dataset, split and FH parameters; the pipeline joins them to the images by tfds_id.
TensorFlow is imported inside the functions that need it, so the FH worker processes
(spawned, not forked, to stay safe next to TF's threads) start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import shlex
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ssljax.errors import UserError

KINDS = ("none", "fh", "grid", "global", "ground_truth")
CACHE_DIRNAME = "ssljax_masks"
CHUNK_SIZE = 1024  # images per cache file (~5 MB at ImageNet size)
_HEADER = np.dtype("<i4")  # record = [C, H, W] as int32, then zlib(int32 C×H×W, C-major)
# Seed folds of one example; the views use 0 and 1 (`augment.two_views`).
_SAMPLE_IDS, _PICK_SCALE = 2, 3


# ---- Masks of one image ------------------------------------------------------------


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


def grid_mask(height: int, width: int, n: int) -> np.ndarray:
    """n×n blocks of (nearly) equal size, ids row-major 0..n²−1 (§3.2 spatial heuristic)."""
    rows = np.arange(height) * n // height
    cols = np.arange(width) * n // width
    return (rows[:, None] * n + cols[None, :]).astype(np.int32)


def global_mask(height: int, width: int) -> np.ndarray:
    """One segment over the whole image: DetCon with it is SimCLR / BYOL (§3.1)."""
    return np.zeros((height, width), np.int32)


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


def encode_mask(mask: np.ndarray) -> bytes:
    """int32 [H, W, C] → bytes: the shape, then the ids zlib-compressed (~2–10 KB)."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[..., None]
    header = np.array([mask.shape[2], mask.shape[0], mask.shape[1]], _HEADER).tobytes()
    planes = np.ascontiguousarray(np.moveaxis(mask, -1, 0), dtype="<i4")
    return header + zlib.compress(planes.tobytes(), 6)


def decode_mask(record: bytes) -> np.ndarray:
    """The inverse of `encode_mask`: int32 [H, W, C]."""
    channels, height, width = np.frombuffer(record[:12], _HEADER)
    planes = np.frombuffer(zlib.decompress(record[12:]), "<i4")
    return np.moveaxis(planes.reshape(channels, height, width), 0, -1).astype(np.int32)


# ---- On-disk cache ---------------------------------------------------------------


def cache_root(data_dir: str | None, cache_dir: str | None = None) -> str:
    if cache_dir:
        return cache_dir
    from ssljax.data import registry

    return os.path.join(data_dir or registry.default_data_dir(), CACHE_DIRNAME)


class MaskCache:
    """`<root>/<dataset>/<split>/<params.key>/`: `meta.json` and `masks-NNNNN.array_record`.

    Chunk c holds the masks of the split's examples c·S … (c+1)·S − 1 in tfds order (S =
    meta's chunk_size), one record per image; a chunk file exists only once complete.
    """

    def __init__(self, root: str, dataset: str, split: str, params: FHParams):
        self.directory = os.path.join(root, dataset, split, params.key)
        self.dataset, self.split, self.params = dataset, split, params
        self._readers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._meta = None
        self._shard_offsets = None

    @property
    def meta(self) -> dict | None:
        if self._meta is None and os.path.exists(self._path("meta.json")):
            with open(self._path("meta.json")) as f:
                self._meta = json.load(f)
        return self._meta

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def chunk_path(self, chunk: int) -> str:
        return self._path(f"masks-{chunk:05d}.array_record")

    def create(self, num_examples: int, shard_lengths: Sequence[int], chunk_size: int) -> None:
        """Write meta.json, or check it against the data if it exists."""
        if self.meta is not None:
            if self.meta["num_examples"] != num_examples:
                raise UserError(
                    f"{self.directory} holds masks of {self.meta['num_examples']} images but "
                    f"{self.dataset} {self.split} has {num_examples}: delete the directory"
                )
            return
        os.makedirs(self.directory, exist_ok=True)
        meta = {
            "dataset": self.dataset,
            "split": self.split,
            "num_examples": num_examples,
            "shard_lengths": list(shard_lengths),
            "chunk_size": chunk_size,
            "fh": dataclasses.asdict(self.params),
            "record": "int32 [C, H, W] header, then zlib(int32 ids, C-major)",
        }
        with open(self._path("meta.json.tmp"), "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(self._path("meta.json.tmp"), self._path("meta.json"))

    def chunks(self, start: int, stop: int) -> range:
        size = self.meta["chunk_size"]
        return range(start // size, -(-stop // size))

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        size = self.meta["chunk_size"]
        return chunk * size, min((chunk + 1) * size, self.meta["num_examples"])

    def missing(self, start: int, stop: int) -> list[int]:
        """Chunks of examples start…stop−1 not written yet (meta.json must exist)."""
        return [c for c in self.chunks(start, stop) if not os.path.exists(self.chunk_path(c))]

    def write_chunk(self, chunk: int, records: Sequence[bytes]) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        tmp = self.chunk_path(chunk) + ".tmp"
        writer = ArrayRecordWriter(tmp, "group_size:1")
        for record in records:
            writer.write(record)
        writer.close()
        os.replace(tmp, self.chunk_path(chunk))

    def read(self, index: int) -> np.ndarray:
        """int32 [H, W, C], the masks of the split's example `index`."""
        chunk, position = divmod(int(index), self.meta["chunk_size"])
        with self._lock:
            if chunk not in self._readers:
                from array_record.python.array_record_module import ArrayRecordReader

                options = "readahead_buffer_size:0,max_parallelism:0"
                self._readers[chunk] = ArrayRecordReader(self.chunk_path(chunk), options)
            record = self._readers[chunk].read([position])[0]
        return decode_mask(record)

    def read_in_shard(self, shard: int, index: int) -> np.ndarray:
        """The masks of example `index` of the split's tfds file `shard`."""
        if self._shard_offsets is None:
            self._shard_offsets = np.cumsum([0, *self.meta["shard_lengths"]])
        return self.read(self._shard_offsets[shard] + index)


_TFDS_ID = re.compile(r"-(\w+)\.[^.-]+-(\d+)-of-\d+__(\d+)$")


def parse_tfds_id(tfds_id: bytes | str) -> tuple[str, int, int]:
    """(split, file shard, index in the file) of e.g. 'x-train.tfrecord-00003-of-00016__7'."""
    tfds_id = tfds_id.decode() if isinstance(tfds_id, bytes) else tfds_id
    match = _TFDS_ID.search(tfds_id)
    if match is None:
        raise ValueError(f"not a tfds_id: {tfds_id!r}")
    return match.group(1), int(match.group(2)), int(match.group(3))


def absolute_ranges(builder, split: str) -> list[tuple[str, int, int]]:
    """(base split, start, stop) of each part of a split spec like 'train[:64]+test'."""
    import tensorflow_datasets as tfds

    infos = dict(builder.info.splits.items())
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    return [
        (i.splitname, i.from_ or 0, infos[i.splitname].num_examples if i.to is None else i.to)
        for i in instructions
    ]


def precompute_command(dataset: str, split: str, params: FHParams, data_dir, cache_dir) -> str:
    command = f"python -m ssljax.data.masks --dataset={dataset} --split={shlex.quote(split)}"
    if data_dir:
        command += f" --data_dir={data_dir}"
    if cache_dir:
        command += f" --cache_dir={cache_dir}"
    return f"{command} {params.flags()}"


# ---- Views and the batch contract (tf.data) --------------------------------------


def majority_pool(mask, grid: int):
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


def sample_ids(mask1, mask2, seed, num_samples: int):
    """`num_samples` ids per view, uniform with replacement among the ids owning a cell.

    Drawn from the ids present in both views when there are any (then ids1 == ids2), else
    each view from its own ids (ids absent from the other view get weight 0 in the loss).
    A pure function of `seed`.
    """
    import tensorflow as tf

    present1 = tf.sort(tf.unique(tf.reshape(mask1, [-1]))[0])
    present2 = tf.sort(tf.unique(tf.reshape(mask2, [-1]))[0])
    shared = tf.sets.intersection(present1[None], present2[None]).values
    seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))

    def draw(pool, draw_seed):
        size = tf.size(pool)
        picks = tf.random.stateless_uniform([num_samples], draw_seed, 0, size, dtype=tf.int32)
        return tf.gather(pool, picks)

    has_shared = tf.size(shared) > 0
    ids1 = draw(tf.cond(has_shared, lambda: shared, lambda: present1), seed1)
    ids2 = tf.cond(has_shared, lambda: ids1, lambda: draw(present2, seed2))
    return tf.ensure_shape(ids1, [num_samples]), tf.ensure_shape(ids2, [num_samples])


def views_with_masks(image, mask, seed, preset, out_size: int, grid: int, num_samples: int):
    """The two views of `augment.two_views` (same seeds, same pixels) and the contract's
    mask1/mask2 (int32 [g, g]) and ids1/ids2 (int32 [R]); `mask` is int32 [H, W, 1]."""
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
        out["mask1"], out["mask2"], augment.fold_seed(seed, _SAMPLE_IDS), num_samples
    )
    return out


def pick_scale(masks, seed):
    """One channel of int32 [H, W, C] per image (C FH scales), drawn from the image's seed."""
    import tensorflow as tf

    from ssljax.data import augment

    if masks.shape[-1] == 1:
        return masks
    pick_seed = augment.fold_seed(seed, _PICK_SCALE)
    channel = tf.random.stateless_uniform([], pick_seed, 0, masks.shape[-1], dtype=tf.int32)
    return masks[..., channel][..., None]


@dataclasses.dataclass(frozen=True)
class MaskSource:
    """A training image's full-size mask, `mask(example, image, seed)` → int32 [H, W, 1];
    `needs_tfds_id`: the example must carry its tfds_id (cache lookups)."""

    mask: Any
    needs_tfds_id: bool = False


def mask_source(config, builder, split: str) -> MaskSource | None:
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
        raise UserError(
            "masks.kind='ground_truth' is not implemented yet: no registered dataset has "
            "ground-truth segmentations (COCO is not in ssljax.data.registry). Use 'fh'."
        )
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

    caches = _checked_caches(config, builder, split, params)

    def read(tfds_id):
        base, shard, index = parse_tfds_id(tfds_id)
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


def _checked_caches(config, builder, split, params) -> dict[str, MaskCache]:
    data_dir, cache_dir = config.dataset.get("data_dir"), config.masks.get("cache_dir")
    root = cache_root(data_dir, cache_dir)
    caches, missing = {}, 0
    for base, start, stop in absolute_ranges(builder, split):
        cache = caches.setdefault(base, MaskCache(root, config.dataset.name, base, params))
        if (
            cache.meta is None
            or cache.meta["num_examples"] != builder.info.splits[base].num_examples
        ):
            missing += 1
        else:
            missing += len(cache.missing(start, stop))
    if missing:
        command = precompute_command(config.dataset.name, split, params, data_dir, cache_dir)
        raise UserError(
            f"FH masks ({params.key}) of {config.dataset.name} {split} are not (all) cached "
            f"under {root}. Compute them once (every core; resumes if interrupted): "
            f"`{command}`; or set --config.masks.compute_in_pipeline=True (small datasets)."
        )
    return caches


# ---- Precompute command ----------------------------------------------------------


def _segment_images(images: list[np.ndarray], params: FHParams) -> list[bytes]:
    return [encode_mask(fh_masks(image, params)) for image in images]


def _pending_images(builder, image_key, cache, chunks) -> Iterator[tuple[int, np.ndarray]]:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    channels = builder.info.features[image_key].shape[-1] or 3
    for chunk in chunks:
        start, stop = cache.chunk_range(chunk)
        ds = builder.as_dataset(
            split=f"{cache.split}[{start}:{stop}]",
            shuffle_files=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
        ds = ds.map(
            lambda ex: tf.io.decode_image(
                ex[image_key], channels=channels, expand_animations=False
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        for image in ds.prefetch(16).as_numpy_iterator():
            yield chunk, image


def _groups(images, max_pixels: int = 1 << 16):
    """Consecutive images of one chunk, ~64 K pixels a task (one ImageNet image, ~80 28-px)."""
    group, pixels, group_chunk = [], 0, None
    for chunk, image in images:
        if group and (chunk != group_chunk or pixels >= max_pixels):
            yield group_chunk, group
            group, pixels = [], 0
        group.append(image)
        group_chunk, pixels = chunk, pixels + image.shape[0] * image.shape[1]
    if group:
        yield group_chunk, group


def precompute(
    dataset: str,
    split: str,
    params: FHParams,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    workers: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    log=print,
    log_every_seconds: float = 10.0,
) -> dict[str, float]:
    """Compute the FH masks of every image of `split` (a tfds spec) not in the cache yet.

    Whole chunks are computed, so `train[:64]` fills chunk 0 of `train`. Finished chunks
    are skipped, so an interrupted run resumes. Returns images, seconds and images/s.
    """
    from ssljax.data import registry

    info, builder = registry.get_dataset(dataset, data_dir)
    root = cache_root(data_dir, cache_dir)
    workers = workers or len(os.sched_getaffinity(0))
    plan, skipped = [], 0
    for base, start, stop in absolute_ranges(builder, split):
        cache = MaskCache(root, dataset, base, params)
        split_info = builder.info.splits[base]
        cache.create(split_info.num_examples, split_info.shard_lengths, chunk_size)
        todo = cache.missing(start, stop)
        skipped += len(cache.chunks(start, stop)) - len(todo)
        plan.append((cache, todo))
    total = sum(len(range(*cache.chunk_range(c))) for cache, todo in plan for c in todo)
    log(
        f"FH masks of {dataset} {split} ({params.key}) into {root}: {total} images to "
        f"compute, {skipped} chunk(s) already done, {workers} worker(s)"
    )
    spawn = workers > 1 and total > 0
    pool = multiprocessing.get_context("spawn").Pool(workers) if spawn else None
    done, started, last_log = 0, time.perf_counter(), time.perf_counter()
    try:
        for cache, todo in plan:
            writer = _ChunkWriter(cache)
            pending: deque = deque()
            for chunk, group in _groups(_pending_images(builder, info.image_key, cache, todo)):
                if pool is None:
                    pending.append((chunk, _Done(_segment_images(group, params))))
                else:
                    pending.append((chunk, pool.apply_async(_segment_images, (group, params))))
                while pending and (len(pending) > 4 * workers or pending[0][1].ready()):
                    done += writer.add(*pending.popleft())
                if time.perf_counter() - last_log >= log_every_seconds:
                    last_log = time.perf_counter()
                    rate = done / (last_log - started)
                    eta = (total - done) / rate if rate else float("inf")
                    log(f"  {done}/{total} images, {rate:.1f} images/s, ETA {_duration(eta)}")
            while pending:
                done += writer.add(*pending.popleft())
    finally:
        if pool is not None:
            pool.terminate()
    seconds = time.perf_counter() - started
    rate = done / seconds if seconds else 0.0
    log(f"Done: {done} images in {_duration(seconds)}, {rate:.1f} images/s on {workers} worker(s)")
    return {"images": done, "seconds": seconds, "images_per_second": rate, "skipped": skipped}


class _ChunkWriter:
    """Takes finished tasks in submission order; writes each chunk once it is complete."""

    def __init__(self, cache: MaskCache):
        self.cache, self.records = cache, []

    def add(self, chunk: int, result) -> int:
        records = result.get()
        self.records.extend(records)
        if len(self.records) == len(range(*self.cache.chunk_range(chunk))):
            self.cache.write_chunk(chunk, self.records)
            self.records = []
        return len(records)


class _Done:
    """A computed result with AsyncResult's interface (the one-worker path)."""

    def __init__(self, value):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self):
        return self.value


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssljax.data.masks", description=precompute.__doc__.splitlines()[0]
    )
    parser.add_argument("--dataset", required=True, help="a name of ssljax.data.registry")
    parser.add_argument("--split", required=True, help="a tfds split spec, e.g. train[:1000]")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir (default as training)")
    parser.add_argument("--cache_dir", default=None, help="default: <data_dir>/ssljax_masks")
    parser.add_argument("--scale", default="1000", help="FH scale(s), comma separated")
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--min_size", default="1000", help="one, one per scale, or 0 (= scale)")
    parser.add_argument("--workers", type=int, default=None, help="default: every core")
    parser.add_argument("--chunk_size", type=int, default=CHUNK_SIZE)
    args = parser.parse_args(argv)
    try:
        min_sizes = [int(m) for m in args.min_size.split(",")]
        params = FHParams.make(
            [float(s) for s in args.scale.split(",")],
            args.sigma,
            min_sizes if len(min_sizes) > 1 else min_sizes[0],
        )
        precompute(
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
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ssljax.data import masks as _module  # workers unpickle functions from here

    sys.exit(_module.main())

"""The on-disk cache of FH masks and the command that fills it.

Layout: ``<cache root>/<dataset>/<split>/<FH key>/`` (root: `config.masks.cache_dir`, by
default ``<data_dir>/ssljax_masks``; key e.g. ``fh_s1000_sig0.8_min1000``) holds
``meta.json`` and ``masks-NNNNN.array_record``: chunk c = the masks of examples c·S …
(c+1)·S − 1 of the split in tfds order, one zlib-compressed int32 record per image. A
chunk file appears (by rename) only when complete, so the precompute command resumes
by skipping the files that exist. The pipeline reads single records by random access,
locating an example from its tfds_id (file shard and index in it).

TensorFlow is imported inside the functions that read tfds, so the FH worker processes
(spawned, to stay safe next to TF's threads) import only numpy and scikit-image.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import re
import resource
import shlex
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ssljax.data.fh import FHParams, fh_masks
from ssljax.errors import UserError

if TYPE_CHECKING:
    import ml_collections
    import tensorflow_datasets as tfds

CACHE_DIRNAME = "ssljax_masks"
CHUNK_SIZE = 1024  # images per cache file (~5 MB at ImageNet size)
_HEADER = np.dtype("<i4")  # record = [C, H, W] as int32, then zlib(int32 C×H×W, C-major)


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


def cache_root(data_dir: str | None, cache_dir: str | None = None) -> str:
    """`cache_dir` if given, else `<data_dir>/ssljax_masks` (data_dir as the registry's)."""
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

    def matches(self, split_info: tfds.core.SplitInfo) -> bool:
        """Whether the cache was made for this version of the split (same tfds files)."""
        return self.meta is not None and (
            self.meta["num_examples"] == split_info.num_examples
            and self.meta["shard_lengths"] == list(split_info.shard_lengths)
        )

    def create(self, split_info: tfds.core.SplitInfo, chunk_size: int) -> None:
        """Write meta.json (the first run's chunk_size stays), or check it against the data."""
        if self.meta is not None:
            if not self.matches(split_info):
                raise UserError(
                    f"{self.directory} holds masks of another version of {self.dataset} "
                    f"{self.split} ({self.meta['num_examples']} images in files of "
                    f"{self.meta['shard_lengths']}): delete the directory and compute again"
                )
            return
        os.makedirs(self.directory, exist_ok=True)
        meta = {
            "dataset": self.dataset,
            "split": self.split,
            "num_examples": split_info.num_examples,
            "shard_lengths": list(split_info.shard_lengths),
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
        with self._lock:  # tf.data calls this from several threads
            reader = self._readers.pop(chunk, None) or self._open(chunk)
            self._readers[chunk] = reader  # most recently used last
            record = reader.read([position])[0]
        return decode_mask(record)

    def _open(self, chunk: int):
        """A random-access reader; the least recently used is closed beyond the fd budget."""
        from array_record.python.array_record_module import ArrayRecordReader

        if len(self._readers) >= _max_open_readers():
            self._readers.pop(next(iter(self._readers))).close()
        options = "readahead_buffer_size:0,max_parallelism:0"
        return ArrayRecordReader(self.chunk_path(chunk), options)

    def read_in_shard(self, shard: int, index: int) -> np.ndarray:
        """The masks of example `index` of the split's tfds file `shard`."""
        if self._shard_offsets is None:
            self._shard_offsets = np.cumsum([0, *self.meta["shard_lengths"]])
        return self.read(self._shard_offsets[shard] + index)


@functools.cache
def _max_open_readers() -> int:
    """Half the file-descriptor limit, raised to the hard limit first (ImageNet: 1252 chunks)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return max(16, soft // 2)


_TFDS_ID = re.compile(r"-(\w+)\.[^.-]+-(\d+)-of-\d+__(\d+)$")


def parse_tfds_id(tfds_id: bytes | str) -> tuple[str, int, int]:
    """(split, file shard, index in the file) of e.g. 'x-train.tfrecord-00003-of-00016__7'."""
    tfds_id = tfds_id.decode() if isinstance(tfds_id, bytes) else tfds_id
    match = _TFDS_ID.search(tfds_id)
    if match is None:
        raise ValueError(f"not a tfds_id: {tfds_id!r}")
    return match.group(1), int(match.group(2)), int(match.group(3))


def absolute_ranges(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[str, int, int]]:
    """(base split, start, stop) of each part of a split spec like 'train[:64]+test'."""
    import tensorflow_datasets as tfds

    infos = dict(builder.info.splits.items())
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    return [
        (i.splitname, i.from_ or 0, infos[i.splitname].num_examples if i.to is None else i.to)
        for i in instructions
    ]


def precompute_command(
    dataset: str, split: str, params: FHParams, data_dir: str | None, cache_dir: str | None
) -> str:
    """The shell command that fills the cache these arguments name."""
    command = f"python -m ssljax.data.masks --dataset={dataset} --split={shlex.quote(split)}"
    if data_dir:
        command += f" --data_dir={data_dir}"
    if cache_dir:
        command += f" --cache_dir={cache_dir}"
    return f"{command} {params.flags()}"


def checked_caches(
    config: ml_collections.ConfigDict,
    builder: tfds.core.DatasetBuilder,
    split: str,
    params: FHParams,
) -> dict[str, MaskCache]:
    """The caches of every part of `split`; a UserError with the command if incomplete."""
    data_dir, cache_dir = config.dataset.get("data_dir"), config.masks.get("cache_dir")
    root = cache_root(data_dir, cache_dir)
    caches, missing = {}, 0
    for base, start, stop in absolute_ranges(builder, split):
        cache = caches.setdefault(base, MaskCache(root, config.dataset.name, base, params))
        if not cache.matches(builder.info.splits[base]):
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
        cache.create(builder.info.splits[base], chunk_size)
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

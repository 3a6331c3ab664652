"""Features of a split kept sharded over every device of every host: the k-NN memory bank
and the linear classifier's training set at pod scale.

ImageNet's train split through a ResNet-50 is ~10 GB of float32 features: more than one
accelerator holds. The encoder's outputs therefore stay on the device that computed them
(`extract`); only labels and padding masks (a few bytes a row) are shared with every host.
Consumers work per shard: `gather_rows` (inside `shard_map`) assembles a few rows on every
device, with zeros from the devices that lack them summed over the `data` axis (exact),
and `ssljax.eval.knn` merges per-shard top-k candidates.

Layout. Batch b of the evaluation pass puts global rows [d·m, (d+1)·m) on mesh device d
(m = global batch / devices); device d keeps its rows of every batch, in batch order. So
layout row d·(B·m) + b·m + j holds the split's row b·(devices·m) + d·m + j (padding rows
included); `order` lists the layout rows of the split's real images, in split order, the
order `features.extract_features` returns them in.
"""

from __future__ import annotations

import dataclasses
import io
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from ssljax import files
from ssljax.data import pipeline
from ssljax.errors import UserError
from ssljax.eval import features as feats
from ssljax.sharding import DATA_AXIS, REPLICATED, SPLIT, make_mesh


@dataclasses.dataclass(frozen=True)
class ShardedFeatures:
    """Rows of features split over `mesh`'s devices; see the module docstring's layout."""

    features: jax.Array  # [R, C] float32 sharded along `data`; R = devices × rows a device
    labels: np.ndarray  # [R] int32 (-1 on padding), every process holds all of them
    valid: np.ndarray  # [R] bool: False on padding rows
    order: np.ndarray  # [N] layout rows of the split's images, in split order
    mesh: Mesh

    def __len__(self) -> int:
        return len(self.order)

    @property
    def rows_per_device(self) -> int:
        return self.features.shape[0] // self.mesh.devices.size

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def ordered_labels(self) -> np.ndarray:
        return self.labels[self.order]

    def subset(self, indices: np.ndarray) -> ShardedFeatures:
        """The images `indices` (positions in split order); no feature is copied."""
        return dataclasses.replace(self, order=self.order[np.asarray(indices)])

    def device_array(self, host: np.ndarray) -> jax.Array:
        """A per-row host array (`labels`, `valid`) sharded like the features."""
        sharding = NamedSharding(self.mesh, SPLIT)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def to_numpy(self) -> np.ndarray:
        """Every image's features, in split order, on this host (small sets and tests)."""
        rows = multihost_utils.process_allgather(self.features, tiled=True)
        return np.asarray(rows)[self.order]


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Host values (the same on every process) as arrays replicated over `mesh`."""
    sharding = NamedSharding(mesh, REPLICATED)

    def put(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return leaf  # already global
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def local_value(tree: Any) -> Any:
    """A replicated result as host numpy (this process's copy)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def gather_rows(local_rows: jax.Array, layout_rows: jax.Array) -> jax.Array:
    """Inside `shard_map` over `data`: rows `layout_rows` of the sharded array whose local
    block is `local_rows`, the same on every device. Each device contributes the rows it
    holds and zeros elsewhere; the sum over the axis adds only zeros to each value."""
    per_device = local_rows.shape[0]
    local = layout_rows - jax.lax.axis_index(DATA_AXIS) * per_device
    inside = (local >= 0) & (local < per_device)
    rows = local_rows[jnp.clip(local, 0, per_device - 1)]
    return jax.lax.psum(jnp.where(inside[:, None], rows, 0.0), DATA_AXIS)


def from_numpy(features: np.ndarray, labels: np.ndarray, mesh: Mesh | None = None):
    """Host features as `ShardedFeatures` (default: on this process's first device, the
    single-device computation); rows are padded to a multiple of the devices."""
    mesh = make_mesh(jax.local_devices()[:1]) if mesh is None else mesh
    features = np.asarray(features, np.float32).reshape(len(features), -1)
    count, devices = len(features), mesh.devices.size
    rows = -(-max(count, 1) // devices) * devices
    padded = np.zeros((rows, features.shape[1]), np.float32)
    padded[:count] = features
    all_labels = np.full(rows, -1, np.int32)
    all_labels[:count] = labels
    sharding = NamedSharding(mesh, SPLIT)
    array = jax.make_array_from_callback(padded.shape, sharding, lambda index: padded[index])
    return ShardedFeatures(array, all_labels, np.arange(rows) < count, np.arange(count), mesh)


def _layout(per_batch: np.ndarray, devices: int) -> np.ndarray:
    """[batches, global batch, ...] in split order -> [rows, ...] in layout order."""
    batches, batch = per_batch.shape[:2]
    grouped = per_batch.reshape(batches, devices, batch // devices, *per_batch.shape[2:])
    return np.swapaxes(grouped, 0, 1).reshape(batches * batch, *per_batch.shape[2:])


def extract(run: Any, variables: Any, split: str, raw_pixels: bool = False) -> ShardedFeatures:
    """`features.extract_features`, but every device keeps the rows it computed."""
    mesh = run.mesh
    devices = mesh.devices.size
    batch_size = max(run.config.eval.batch_size // devices, 1) * devices
    local_batch = batch_size // jax.process_count()
    split_sharding = NamedSharding(mesh, SPLIT)
    position = {d.id: i for i, d in enumerate(mesh.devices.flat)}

    @jax.jit
    def embed(variables, images):
        if raw_pixels:
            out = images.reshape(images.shape[0], -1)
        else:
            out = run.method.encoder.apply(variables, images, train=False)["pooled"]
        return jax.lax.with_sharding_constraint(out.astype(jnp.float32), split_sharding)

    from tqdm import tqdm

    batches = tqdm(
        pipeline.eval_batches(run.config, split, local_batch),
        total=feats._num_batches(run, split, local_batch),
        desc=f"features {run.config.dataset.name} {split}",
        unit="batch",
        file=sys.stderr,
        mininterval=5.0,
        disable=jax.process_index() != 0,
    )
    blocks: dict[int, list[jax.Array]] = {}
    labels, masks = [], []
    for batch in batches:
        images = jax.make_array_from_process_local_data(split_sharding, batch["image"])
        for shard in embed(variables, images).addressable_shards:
            blocks.setdefault(position[shard.device.id], []).append(shard.data)
        label, mask = multihost_utils.process_allgather(
            (batch["label"], np.asarray(batch["mask"], bool)), tiled=True
        )
        labels.append(np.asarray(label, np.int32))
        masks.append(np.asarray(mask, bool))
    if not labels:
        raise UserError(f"split {split!r} of {run.config.dataset.name} has no images")
    stacked = {p: jnp.concatenate(parts) for p, parts in blocks.items()}
    for block in stacked.values():  # this process's rows; every process checks its own
        feats.check_finite(np.asarray(block), f"{run.config.dataset.name} {split}")
    return _build(mesh, stacked, np.stack(labels), np.stack(masks))


def _build(mesh, blocks, labels, masks) -> ShardedFeatures:
    """From this process's device blocks {mesh position: [rows a device, C]} and every
    batch's labels and masks ([batches, global batch], split order)."""
    devices = mesh.devices.size
    rows = labels.size
    split_row = _layout(np.arange(rows).reshape(labels.shape), devices)  # of each layout row
    layout_row = np.empty(rows, np.int64)
    layout_row[split_row] = np.arange(rows)
    order = layout_row[np.flatnonzero(masks.reshape(-1))]
    return _assemble(mesh, blocks, _layout(labels, devices), _layout(masks, devices), order)


def _assemble(mesh, blocks, labels, valid, order) -> ShardedFeatures:
    sharding = NamedSharding(mesh, SPLIT)
    dim = next(iter(blocks.values())).shape[1]
    array = jax.make_array_from_single_device_arrays(
        (len(labels), dim), sharding, [blocks[p] for p in sorted(blocks)]
    )
    return ShardedFeatures(array, labels, valid, order, mesh)


def _local_positions(mesh: Mesh) -> list[int]:
    local = {d.id for d in mesh.local_devices}
    return [i for i, d in enumerate(mesh.devices.flat) if d.id in local]


def cache_file(workdir: str | Path, tag: str, dataset: str, split: str) -> Path:
    """`features.cache_path`; on a pod each process caches its own devices' rows
    (`….process<i>of<n>.npz`)."""
    path = feats.cache_path(workdir, tag, dataset, split)
    if jax.process_count() > 1:
        name = f"{path.stem}.process{jax.process_index()}of{jax.process_count()}.npz"
        path = path.parent / name
    return path


def _save(path: Path, fingerprint: str, bank: ShardedFeatures) -> None:
    position = {d.id: i for i, d in enumerate(bank.mesh.devices.flat)}
    shards = sorted(bank.features.addressable_shards, key=lambda s: position[s.device.id])
    buffer = io.BytesIO()
    np.savez(
        buffer,
        blocks=np.stack([np.asarray(s.data) for s in shards]),
        positions=np.array([position[s.device.id] for s in shards]),
        labels=bank.labels,
        valid=bank.valid,
        order=bank.order,
        fingerprint=np.array(fingerprint),
    )
    files.write_bytes(path, buffer.getvalue())


def _load(path: Path, fingerprint: str, mesh: Mesh) -> ShardedFeatures | None:
    """The cached bank if it was written for these weights and this device layout."""
    try:
        with np.load(io.BytesIO(path.read_bytes())) as data:
            if str(data["fingerprint"]) != fingerprint:
                return None
            positions = data["positions"].tolist()
            if positions != _local_positions(mesh) or len(data["labels"]) % mesh.devices.size:
                return None
            devices = list(mesh.devices.flat)
            blocks = {
                p: jax.device_put(block, devices[p]) for p, block in zip(positions, data["blocks"])
            }
            return _assemble(mesh, blocks, data["labels"], data["valid"], data["order"])
    except (OSError, KeyError, ValueError):
        return None


def cached(
    run: Any,
    variables: Any,
    split: str,
    workdir: str | Path,
    tag: str | None,
    raw_pixels: bool = False,
) -> ShardedFeatures:
    """`extract`, read from / written to the cache of `tag` (None, or raw pixels: no cache).

    A cache is used only if its fingerprint (weights + evaluation view) and device layout
    match, and only if every process can use its own (otherwise all extract: it is
    collective).
    """
    if tag is None or raw_pixels:
        return extract(run, variables, split, raw_pixels)
    path = cache_file(workdir, tag, run.config.dataset.name, split)
    fingerprint = feats._fingerprint(run, variables, split)
    bank = _load(path, fingerprint, run.mesh) if path.exists() else None
    if bool(np.all(multihost_utils.process_allgather(np.array(bank is not None)))):
        return bank
    bank = extract(run, variables, split)
    _save(path, fingerprint, bank)
    return bank

"""The device mesh and the one axis name every collective uses.

Training and evaluation run data-parallel over a 1-D `Mesh(devices, ('data',))`: the state
is replicated (`REPLICATED`), a batch is split along its first axis (`SPLIT`), and
collectives inside `shard_map` (gradient means, synchronised BN, all-gathers) name
`DATA_AXIS`. This module sits at the bottom of the package so that models, methods, the
engine and eval all take the name from one place.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssljax.errors import UserError

DATA_AXIS = "data"
REPLICATED = P()
SPLIT = P(DATA_AXIS)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (all devices of all processes by default)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Refuse a global batch that does not split evenly over the mesh's devices."""
    devices = mesh.devices.size
    if batch_size <= 0 or batch_size % devices:
        raise UserError(
            f"batch_size={batch_size} must be a positive multiple of the {devices} devices; "
            f"set --config.batch_size to e.g. {max(devices, batch_size // devices * devices)}"
        )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into one global array sharded along `data`."""
    sharding = NamedSharding(mesh, SPLIT)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }

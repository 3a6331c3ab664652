"""Frozen-encoder features of a dataset split, extracted sharded over every device.

Each process feeds its shard of the split; the jitted encoder runs on the global batch
split along the mesh's `data` axis. `extract_features` gathers the outputs to every
process (`process_allgather`, multi-host safe: for small splits); k-NN and linear
evaluation keep them sharded instead (`ssljax.eval.bank`, which also caches them in
`DIR/eval/features/` under `cache_path`, keyed by `_fingerprint`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils.epath import Path
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from ssljax.checkpoint import Checkpointer
from ssljax.data import pipeline, registry
from ssljax.errors import UserError
from ssljax.run import LoadedRun, load_run
from ssljax.sharding import REPLICATED, SPLIT, make_mesh


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """What an evaluation reads of a loaded run: its config (with the evaluation dataset),
    method, mesh, and the evaluation dataset's registry entry."""

    config: ml_collections.ConfigDict
    method: Any  # ssljax.methods.base.Method
    mesh: Mesh
    dataset: registry.DatasetInfo

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, REPLICATED)


def evaluation_run(loaded: LoadedRun, dataset: str | None = None) -> EvalRun:
    """`loaded` seen through the evaluation dataset (`dataset`, default: the run's own)."""
    config = copy.deepcopy(loaded.config)
    if dataset:
        config.dataset.name = dataset
        config.dataset.train_split = None
    info, _ = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    return EvalRun(config, loaded.method, make_mesh(), info)


def load_encoder(
    workdir: str | Path,
    checkpoint: int | None = None,
    random_init: bool = False,
    dataset: str | None = None,
    network: str | None = None,
):
    """(run, encoder variables) of a training run: its newest (or `checkpoint`) state, or
    with `random_init` the untrained network the run started from (same config and seed).

    `network`: 'online' or 'target'; None: the network the method's paper evaluates
    (`Method.evaluated_network`). The variables are in the layout of `run.method.encoder`
    in inference mode (`Method.encoder_variables`).
    """
    loaded = load_run(workdir, checkpoint, random_init=random_init)
    return evaluation_run(loaded, dataset), loaded.encoder_variables(network)


def checkpoint_step(workdir: str | Path, checkpoint: int | None = None) -> int | None:
    """The step `load_encoder` restores: `checkpoint`, else the newest saved one."""
    if checkpoint is not None:
        return checkpoint
    return Checkpointer(Path(workdir) / "checkpoints", asynchronous=False).latest_step()


def _num_batches(run: EvalRun, split: str, local_batch: int) -> int:
    """The number of batches `pipeline.eval_batches` yields (for the progress bar)."""
    _, builder = registry.get_dataset(run.config.dataset.name, run.config.dataset.data_dir)
    num_examples = registry.split_num_examples(builder, split)
    return math.ceil(math.ceil(num_examples / jax.process_count()) / local_batch)


def extract_features(
    run: EvalRun, variables: Any, split: str, raw_pixels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, C], labels [N]) of every image of `split`, in inference mode.

    Every process returns the whole split (rows grouped by process within each batch).
    """
    devices = run.mesh.devices.size
    batch_size = max(run.config.eval.batch_size // devices, 1) * devices
    local_batch = batch_size // jax.process_count()
    split_sharding = NamedSharding(run.mesh, SPLIT)

    @jax.jit
    def embed(variables, images, labels, mask):
        if raw_pixels:
            out = images.reshape(images.shape[0], -1)
        else:
            out = run.method.encoder.apply(variables, images, train=False)["pooled"]
        return out.astype(jnp.float32), labels, mask

    from tqdm import tqdm

    batches = tqdm(
        pipeline.eval_batches(run.config, split, local_batch),
        total=_num_batches(run, split, local_batch),
        desc=f"features {run.config.dataset.name} {split}",
        unit="batch",
        file=sys.stderr,
        mininterval=5.0,
        disable=jax.process_index() != 0,
    )
    features, labels = [], []
    for batch in batches:
        local = (batch["image"], batch["label"], np.asarray(batch["mask"], bool))
        global_arrays = [jax.make_array_from_process_local_data(split_sharding, x) for x in local]
        out, label, keep = multihost_utils.process_allgather(
            embed(variables, *global_arrays), tiled=True
        )
        features.append(np.asarray(out)[keep])
        labels.append(np.asarray(label)[keep])
    features = np.concatenate(features)
    check_finite(features, f"{run.config.dataset.name} {split}")
    return features, np.concatenate(labels)


def check_finite(features: np.ndarray, what: str) -> None:
    """A UserError if any feature is NaN or infinite (an encoder whose weights diverged)."""
    bad = ~np.isfinite(features)
    if bad.any():
        rows = int(bad.any(axis=tuple(range(1, features.ndim))).sum())
        raise UserError(
            f"the encoder's features of {what} are not finite in {rows} of {len(features)} "
            "images: its weights hold NaN or infinity (a diverged run); evaluate an earlier "
            "--checkpoint, or retrain with a lower learning rate"
        )


def _fingerprint(run: EvalRun, variables: Any, split: str) -> str:
    """What the features depend on: the encoder's weights and the evaluation view."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(variables)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    view = {
        "dataset": run.config.dataset.to_dict(),
        "model": run.config.model.to_dict(),
        "split": split,
        "eval_resize": run.dataset.eval_resize,
    }
    digest.update(json.dumps(view, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_path(workdir: str | Path, tag: str, dataset: str, split: str) -> Path:
    """`DIR/eval/features/<tag>_<dataset>_<split>.npz`; tag is `step_N` or `random_init`."""
    safe_split = re.sub(r"[^A-Za-z0-9_.-]+", "-", split).strip("-")
    return Path(workdir) / "eval" / "features" / f"{tag}_{dataset}_{safe_split}.npz"

"""Frozen-encoder features of a dataset split: extracted sharded over every device, cached.

Each process feeds its shard of the split; the jitted encoder runs on the global batch
split along the mesh's `data` axis; the outputs are gathered to every process
(`process_allgather`, multi-host safe). Features of a trained checkpoint or of the
random-init network are cached in `DIR/eval/features/` per (step, dataset, split) and
reused while the encoder's weights and the evaluation view stay the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from ssljax import engine, files, train
from ssljax.checkpoint import Checkpointer
from ssljax.data import pipeline, registry
from ssljax.errors import UserError


def load_encoder(
    workdir: str | Path,
    checkpoint: int | None = None,
    random_init: bool = False,
    dataset: str | None = None,
):
    """(run, encoder variables) of a training run: its newest (or `checkpoint`) state, or
    with `random_init` the untrained network the run started from (same config and seed)."""
    config = train.load_config(workdir)
    if dataset:
        config.dataset.name = dataset
        config.dataset.train_split = None
    run = train.setup(config)
    if random_init:
        state = run.init(run.rngs()[0])
    else:
        directory = Path(workdir) / "checkpoints"
        checkpointer = Checkpointer(directory, asynchronous=False) if directory.exists() else None
        if checkpointer is None or checkpointer.latest_step() is None:
            raise UserError(f"no checkpoint in {workdir}: train first, or pass --random-init")
        state = train.restore_or_init(run, checkpointer, step=checkpoint)
    batch_stats = (state.batch_stats or {}).get("encoder", {})  # a ViT has none
    variables = {"params": state.params["encoder"], "batch_stats": batch_stats}
    return run, variables


def checkpoint_step(workdir: str | Path, checkpoint: int | None = None) -> int | None:
    """The step `load_encoder` restores: `checkpoint`, else the newest saved one."""
    if checkpoint is not None:
        return checkpoint
    return Checkpointer(Path(workdir) / "checkpoints", asynchronous=False).latest_step()


def _num_batches(run: train.Run, split: str, local_batch: int) -> int:
    """The number of batches `pipeline.eval_batches` yields (for the progress bar)."""
    _, builder = registry.get_dataset(run.config.dataset.name, run.config.dataset.data_dir)
    num_examples = registry.split_num_examples(builder, split)
    return math.ceil(math.ceil(num_examples / jax.process_count()) / local_batch)


def extract_features(
    run: train.Run, variables: Any, split: str, raw_pixels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, C], labels [N]) of every image of `split`, in inference mode.

    Every process returns the whole split (rows grouped by process within each batch).
    """
    devices = run.mesh.devices.size
    batch_size = max(run.config.eval.batch_size // devices, 1) * devices
    local_batch = batch_size // jax.process_count()
    split_sharding = NamedSharding(run.mesh, engine.SPLIT)

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


def _fingerprint(run: train.Run, variables: Any, split: str) -> str:
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


def _read_cache(path: Path, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(io.BytesIO(path.read_bytes())) as data:
            if str(data["fingerprint"]) != fingerprint:
                return None
            return data["features"], data["labels"]
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(path: Path, fingerprint: str, features: np.ndarray, labels: np.ndarray):
    buffer = io.BytesIO()
    np.savez(buffer, features=features, labels=labels, fingerprint=np.array(fingerprint))
    files.write_bytes(path, buffer.getvalue())


def cached_features(
    run: train.Run,
    variables: Any,
    split: str,
    workdir: str | Path,
    tag: str | None,
    raw_pixels: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`extract_features`, read from / written to the cache file of `tag` (None: no cache;
    raw pixels are never cached: they are cheap to read and large to store).

    A cached file is used only if its fingerprint (weights + evaluation view) matches, so
    a checkpoint replaced at the same step is re-extracted. All processes must agree that
    the cache is usable, otherwise they all extract (the extraction is collective).
    """
    if tag is None or raw_pixels:
        return extract_features(run, variables, split, raw_pixels)
    path = cache_path(workdir, tag, run.config.dataset.name, split)
    fingerprint = _fingerprint(run, variables, split)
    cached = _read_cache(path, fingerprint) if path.exists() else None
    if cached is not None and not np.isfinite(cached[0]).all():
        cached = None  # written before features were checked; extracting again refuses
    if bool(np.all(multihost_utils.process_allgather(np.array(cached is not None)))):
        return cached
    features, labels = extract_features(run, variables, split)
    if jax.process_index() == 0:
        _write_cache(path, fingerprint, features, labels)
    return features, labels

"""Frozen-encoder features of a dataset split, extracted sharded over every device."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from jax.sharding import NamedSharding

from ssljax import engine, train
from ssljax.checkpoint import Checkpointer
from ssljax.data import pipeline


def load_encoder(workdir: str | Path, checkpoint: int | None = None, random_init: bool = False,
                 dataset: str | None = None):
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
        checkpointer = Checkpointer(Path(workdir) / "checkpoints", asynchronous=False)
        state = train.restore_or_init(run, checkpointer, step=checkpoint)
        if checkpointer.latest_step() is None:
            from ssljax.errors import UserError

            raise UserError(f"no checkpoint in {workdir}: train first, or pass --random-init")
    variables = {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]}
    return run, variables


def extract_features(run: train.Run, variables: Any, split: str,
                     raw_pixels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, C], labels [N]) of every image of `split`, in inference mode."""
    devices = run.mesh.devices.size
    batch_size = max(run.config.eval.batch_size // devices, 1) * devices
    local_batch = batch_size // jax.process_count()
    split_sharding = NamedSharding(run.mesh, engine.SPLIT)

    @jax.jit
    def embed(variables, images):
        if raw_pixels:
            return images.reshape(images.shape[0], -1)
        return run.method.encoder.apply(variables, images, train=False)["pooled"].astype(
            jnp.float32
        )

    features, labels = [], []
    for batch in pipeline.eval_batches(run.config, split, local_batch):
        images = jax.make_array_from_process_local_data(split_sharding, batch["image"])
        out = np.asarray(jax.device_get(embed(variables, images)))
        keep = np.asarray(batch["mask"], bool)
        features.append(out[: len(keep)][keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(features), np.concatenate(labels)

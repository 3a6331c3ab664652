"""Supervised training of a network with labels on the engine's sharded step.

Semi-supervised fine-tuning (`ssljax.eval.semi`) and the perceptual test's classifier
(`ssljax.eval.perceptual`) train a classifier with cross-entropy. Both run as a
`Method` on `ssljax.engine.make_train_step`, the step pre-training uses: the batch split
over the mesh's `data` axis, gradients and BN statistics averaged over it, so a
network's `bn_group` means what it means in pre-training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from ssljax import engine
from ssljax.methods.base import Method
from ssljax.sharding import REPLICATED, global_batch
from ssljax.train_state import TrainState


class Supervised(Method):
    """Cross-entropy of `network(images) -> logits` against `batch['label']`."""

    def __init__(self, network: nn.Module):
        super().__init__(config=None, total_steps=0)
        self.online = network

    def loss(self, params, state, batch, rng):
        logits, mutated = self.online.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        labels = batch["label"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        updates = {"batch_stats": mutated.get("batch_stats", {})}  # a ViT has none
        return ce.mean(), {"updates": updates}


def train(
    network: nn.Module,
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    batches: Iterator[dict[str, np.ndarray]],
    steps: int,
    progress: Callable[[range], Any] = lambda steps: steps,
) -> tuple[dict[str, Any], list[jax.Array]]:
    """({'params', 'batch_stats'} after `steps` steps on `batches`, the per-step losses)."""
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    state = jax.device_put(
        TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
        ),
        NamedSharding(mesh, REPLICATED),
    )
    step = engine.make_train_step(Supervised(network), tx, schedule, mesh, num_classes=None)
    rng = jax.random.PRNGKey(0)  # unused: the batches are augmented in tf.data
    losses = []
    for _ in progress(range(steps)):
        state, metrics = step(state, global_batch(next(batches), mesh), rng)
        losses.append(metrics["loss"])
    return {"params": state.params, "batch_stats": state.batch_stats}, losses

"""The one sharded train step every method runs on.

`make_train_step` turns a method's pure loss into `step(state, batch, rng) -> (state,
metrics)`: jitted once, `shard_map`ped over `Mesh(devices, ('data',))`, the state
replicated and donated, the batch split along its first axis. Inside, per device: the
loss and its gradient on the local batch (BN statistics synchronised as the method's
modules say), the online linear probe on stop-gradient features, gradients averaged over
the `data` axis, the optimiser update, the method's post-step rules (EMA, queues), and
running statistics averaged so that the replicated state stays identical everywhere.

A step whose loss, gradients or new state are not all finite changes nothing but the step
counter: the state keeps its previous values and the metric `finite` is 0. The check is
part of the step (no extra host round trip); the loop reads the flag with the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from ssljax.methods.base import Method
from ssljax.models.heads import LinearClassifier
from ssljax.sharding import DATA_AXIS, REPLICATED, SPLIT
from ssljax.train_state import TrainState

# TrainState fields holding running statistics: with local or grouped BN they differ per
# device, so the step averages them to keep the replicated state identical everywhere.
STATISTICS_FIELDS = ("batch_stats", "target_batch_stats", "momentum_stats")


def probe_loss(
    probe: nn.Module, probe_params: Any, features: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy and top-1 of a linear classifier on stop-gradient features.

    Rows labelled −1 (unlabelled images) are ignored. This is BYOL's online classifier:
    it tracks representation quality during training and never shapes the encoder.
    """
    logits = probe.apply({"params": probe_params}, jax.lax.stop_gradient(features))
    logits = logits.astype(jnp.float32)
    valid = labels >= 0
    safe_labels = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
    count = jnp.maximum(valid.sum(), 1)
    loss = jnp.sum(jnp.where(valid, ce, 0.0)) / count
    top1 = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == labels, False)) / count
    return loss, top1


def init_state(
    method: Method,
    tx: optax.GradientTransformation | None,
    rng: jax.Array,
    images: jax.Array,
    num_classes: int | None,
) -> TrainState:
    """A fresh TrainState: the method's fields, the online probe, the optimiser state
    (None without `tx`: a state for inference)."""
    method_rng, probe_rng = jax.random.split(rng)
    fields = method.init(method_rng, images)
    params = dict(fields.pop("params"))
    if num_classes:
        features = jax.eval_shape(
            lambda p, s: method.encoder.apply({"params": p, "batch_stats": s}, images, train=False),
            params["encoder"],
            fields["batch_stats"].get("encoder", {}),  # a ViT has no batch norm
        )["pooled"]
        probe = LinearClassifier(num_classes=num_classes)
        dummy = jnp.zeros(features.shape, jnp.float32)
        params["probe"] = probe.init(probe_rng, dummy)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=None if tx is None else tx.init(params),
        **fields,
    )


def make_init(
    method, tx, mesh: Mesh, image_shape, num_classes
) -> Callable[[jax.Array], TrainState]:
    """`init(rng) -> TrainState`, jitted so that the state is created replicated on `mesh`."""
    images = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
    return jax.jit(
        lambda rng: init_state(method, tx, rng, images, num_classes),
        out_shardings=NamedSharding(mesh, REPLICATED),
    )


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point value in `tree` is finite (a scalar bool).

    One sum per leaf of `x · 0`, which is 0 for finite x and NaN for NaN or ±inf: cheaper
    to compile than an `isfinite` reduction per leaf, and no overflow of finite values.
    """
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact):
            total = total + jnp.sum(x.astype(jnp.float32) * 0.0)
    return jnp.isfinite(total)


def keep_unless(condition: jax.Array, new: Any, old: Any) -> Any:
    """`new` if `condition` holds, else `old` (same structure), as one branch."""
    return jax.lax.cond(condition, lambda n, o: n, lambda n, o: o, new, old)


def make_train_step(
    method: Method,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    num_classes: int | None,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The jitted, sharded `step(state, batch, rng) -> (state, metrics)`; donates `state`."""
    probe = LinearClassifier(num_classes=num_classes) if num_classes else None

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        device_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(DATA_AXIS))

        def total_loss(params):
            loss, aux = method.loss(params, state, batch, device_rng)
            metrics = dict(aux.get("metrics", {}), loss=loss)
            if probe is not None:
                p_loss, p_top1 = probe_loss(probe, params["probe"], aux["features"], batch["label"])
                metrics.update(online_probe_loss=p_loss, online_top1=p_top1)
                loss = loss + p_loss
            return loss, (aux.get("updates", {}), metrics)

        grads, (updates, metrics) = jax.grad(total_loss, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, DATA_AXIS)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, param_updates)
        # Statistics are averaged; other updates (queues) must already be replicated.
        updates = {
            name: jax.lax.pmean(value, DATA_AXIS) if name in STATISTICS_FIELDS else value
            for name, value in updates.items()
        }
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, **updates
        )
        new_state = method.after_update(new_state)
        metrics.update(method.schedules(state.step), lr=schedule(state.step))
        metrics = jax.lax.pmean(metrics, DATA_AXIS)
        # Grads and the loss are already averaged, so every device takes the same branch.
        finite = jnp.isfinite(metrics["loss"]) & all_finite(grads) & all_finite(new_state)
        new_state = keep_unless(finite, new_state, state).replace(step=state.step + 1)
        return new_state, dict(metrics, finite=finite.astype(jnp.float32))

    sharded = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(REPLICATED, SPLIT, REPLICATED),
        out_specs=(REPLICATED, REPLICATED),
        check_vma=False,
    )
    return jax.jit(sharded, donate_argnums=(0,))

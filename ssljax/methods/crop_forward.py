"""What the multi-crop objectives (DINO, SwAV, MoCo-v2*) share: crops through a network.

A multi-crop batch (`ssljax.data.multicrop`) holds 'global' [b, N_g, GC, GC, 3] and
'local' [b, N_l, LC, LC, 3]. The networks see one resolution at a time with the crop axis
first, [N, b, …], and their outputs keep it, so a loss indexes crops as
`ssljax.losses.rebalanced_multicrop_loss` does: globals 0..N_g−1, then the locals.

Batch statistics (`config.multicrop.per_crop_bn`): True (default) normalises each crop
with its own statistics, as two-view methods normalise every view (the network is vmapped over the
crop axis, one compiled body for all crops of a resolution); False normalises all crops
of one resolution together, as the DINO/SwAV/SSLight code does (its MultiCropWrapper
concatenates same-size crops into one forward pass).

`rng` (optional) is the 'dropout' stream of a network with stochastic depth (DINO's ViT
student): each crop and each resolution gets its own key, so every sample of every crop
draws its own drop decisions, as in the concatenated forward pass of the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def crops_first(images: jax.Array) -> jax.Array:
    """[b, N, H, W, C] → [N, b, H, W, C]."""
    return jnp.swapaxes(images, 0, 1)


def _apply(
    module: nn.Module, params: Any, batch_stats: Any, images: jax.Array, rng: jax.Array | None
):
    """A training-mode forward pass; a network without batch norm (ViT) returns its
    (empty) statistics unchanged."""
    outputs, mutated = module.apply(
        {"params": params, "batch_stats": batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
        rngs=None if rng is None else {"dropout": rng},
    )
    return outputs, mutated.get("batch_stats", batch_stats)


def apply_crops(
    module: nn.Module,
    params: Any,
    batch_stats: Any,
    crops: jax.Array,
    per_crop_bn: bool,
    keys: Sequence[str],
    rng: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], Any]:
    """The outputs named `keys` of `module` on crops [N, b, H, W, 3], as [N, b, …] (each
    leaf of a dict output), and the updated running statistics (with per-crop BN: the
    mean of the N crops' updates). With N = 0 (no local crops) nothing runs: empty outputs
    and the statistics as they were. `rng`: the 'dropout' stream (module doc), or None."""
    if crops.shape[0] == 0:
        one = jax.eval_shape(
            lambda images: _apply(module, params, batch_stats, images, rng)[0],
            jax.ShapeDtypeStruct(crops.shape[1:], crops.dtype),
        )
        return {k: jnp.zeros((0,) + one[k].shape, one[k].dtype) for k in keys}, batch_stats
    if per_crop_bn:

        def one_crop(images, crop_rng):
            outputs, stats = _apply(module, params, batch_stats, images, crop_rng)
            return {k: outputs[k] for k in keys}, stats

        crop_rngs = None if rng is None else jax.random.split(rng, crops.shape[0])
        outputs, stats = jax.vmap(one_crop)(crops, crop_rngs)
        return outputs, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
    num, batch = crops.shape[:2]
    flat = crops.reshape((-1,) + crops.shape[2:])
    outputs, stats = _apply(module, params, batch_stats, flat, rng)
    outputs = {k: outputs[k] for k in keys}
    return jax.tree.map(lambda x: x.reshape((num, batch) + x.shape[1:]), outputs), stats


def apply_all_crops(
    module: nn.Module,
    params: Any,
    batch_stats: Any,
    batch: dict[str, jax.Array],
    per_crop_bn: bool,
    keys: Sequence[str],
    rng: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], Any]:
    """`apply_crops` on the global crops, then the local ones; outputs [N_g + N_l, b, …]."""
    global_rng, local_rng = (None, None) if rng is None else jax.random.split(rng)
    global_out, stats = apply_crops(
        module, params, batch_stats, crops_first(batch["global"]), per_crop_bn, keys, global_rng
    )
    local_out, stats = apply_crops(
        module, params, stats, crops_first(batch["local"]), per_crop_bn, keys, local_rng
    )
    return jax.tree.map(
        lambda g, loc: jnp.concatenate([g, loc], axis=0), global_out, local_out
    ), stats


def without_gradient_while(params: Any, top: str, name: str, held: jax.Array) -> Any:
    """`params` with the gradient of every leaf under `params[top]` in a module called
    `name` cut while `held` (DINO's last layer and SwAV's prototypes in their first epoch;
    not to be confused with `TrainState.frozen`, networks that are never trained).

    The values are unchanged; only the gradient is zero. Weight decay still reaches the
    leaves, where PyTorch's optimisers skip a parameter whose gradient is None.
    """

    def maybe_stop(path, leaf):
        names = [str(getattr(p, "key", p)) for p in path]
        if name in names:
            return jnp.where(held, jax.lax.stop_gradient(leaf), leaf)
        return leaf

    return {**params, top: jax.tree_util.tree_map_with_path(maybe_stop, params[top])}


def epochs_to_steps(epochs: float, total_steps: int, config) -> float:
    """Epochs of a per-step schedule in steps: total_steps / config.epochs per epoch (when
    `config.total_steps` overrides the epochs, the schedule stretches with the run)."""
    return epochs * total_steps / max(config.epochs, 1)


def multicrop_metrics(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch's mean pixel-scale ratio PS_g/PS_l (logged with every step's metrics)."""
    return {"pixel_scale_ratio": jnp.mean(batch["pixel_scale_ratio"])}

"""Optimisers and schedules: LARS/SGD/AdamW from optax, warm-up + cosine LR, the EMA rate.

LR = base_lr × B / 256, linear warm-up from 0, then cosine to `min_lr` (0 by default, as
BYOL; SSLight's DINO runs end at a minimum LR) or piecewise-constant decay; weight decay
is constant or, with `weight_decay_end` (DINO's ViT recipe), a cosine from `weight_decay`
to it; biases and normalisation
parameters are excluded from weight decay and from the trust ratio, as are depth-wise
convolutions and a ViT's position embedding and CLS token (`adaptation_mask`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssljax.errors import UserError


def peak_learning_rate(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: LR = base_lr × B / 256."""
    return base_lr * batch_size / 256


def learning_rate_schedule(
    opt: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Linear warm-up from 0 over `opt.warmup_epochs`, then `opt.schedule`.

    `cosine` decays to `opt.min_lr` (absolute, default 0) at `total_steps`, as DINO's
    `cosine_scheduler` from the peak to its final value; `steps` multiplies by
    `opt.decay_factor` at each fraction of training in `opt.decay_at` (MoCo v1: 120/200 and
    160/200; DetCon on COCO: 0.96 and 0.98); `constant` stays at the peak.
    """
    peak = peak_learning_rate(opt.base_lr, batch_size)
    warmup = min(int(round(opt.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
    if opt.schedule == "cosine":
        min_lr = float(opt.get("min_lr", 0.0))
        if not 0.0 <= min_lr <= peak:
            raise UserError(f"optimizer.min_lr={min_lr} must be in [0, the peak LR {peak:g}]")
        alpha = min_lr / peak if peak > 0 else 0.0
        after = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1), alpha=alpha)
    elif opt.schedule == "steps":
        boundaries = {
            max(int(round(f * total_steps)) - warmup, 1): opt.decay_factor for f in opt.decay_at
        }
        after = optax.piecewise_constant_schedule(peak, boundaries)
    elif opt.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise UserError(
            f"optimizer.schedule={opt.schedule!r}: choose 'cosine', 'steps' or 'constant'"
        )
    if warmup == 0:
        return after
    return optax.join_schedules([warmup_fn, after], [warmup])


def weight_decay_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> Any:
    """`opt.weight_decay`, or with `opt.weight_decay_end` set a cosine from it to the end
    value over the whole run (DINO's `wd_schedule`, no warm-up)."""
    end = opt.get("weight_decay_end")
    if end is None:
        return opt.weight_decay
    if end < 0:
        raise UserError(f"optimizer.weight_decay_end must be ≥ 0, got {end}")
    start = float(opt.weight_decay)

    def schedule(step):
        progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
        return end + (start - end) * (1.0 + jnp.cos(math.pi * progress)) / 2.0

    return schedule


def cosine_increase(base: float, step: jax.Array, total_steps: int) -> jax.Array:
    """1 − (1 − base)·(cos(πk/K) + 1)/2: equals `base` at k = 0 and 1 at k = K (BYOL's τ)."""
    progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


# Leaves whose path has a name containing one of these get neither weight decay nor the
# trust ratio, whatever their shape.
NOT_ADAPTED_NAMES = ("depthwise", "pos_embedding", "cls_token")


def adaptation_mask(params: Any) -> Any:
    """True for the leaves that get weight decay and the LARS trust ratio.

    Biases and normalisation scales/offsets (every leaf with ndim ≤ 1, LayerNorm's too) are
    excluded, as in the BYOL/DetCon reference; so are depth-wise convolution kernels (any
    module whose name contains 'depthwise'), as in the low-compute paper's MobileNetV2
    recipe, and a ViT's position embedding and CLS token (timm's `no_weight_decay`; DINO
    decays them). The online probe (top-level 'probe') is excluded too: it starts at zero,
    where LARS's trust ratio would keep it near zero, and it only reports on the features,
    so plain momentum SGD.
    """

    def keep(path, leaf) -> bool:
        names = [str(getattr(p, "key", p)) for p in path]
        if names and names[0] == "probe":
            return False
        excluded = any(word in n for n in names for word in NOT_ADAPTED_NAMES)
        return leaf.ndim > 1 and not excluded

    return jax.tree_util.tree_map_with_path(keep, params)


def all_but_probe(params: Any) -> Any:
    """True for every leaf but the online probe's: `optimizer.weight_decay_all` decays
    biases and normalisation parameters too, as PyTorch's SGD does in the MoCo reference."""
    return {
        name: jax.tree.map(lambda _, keep=name != "probe": keep, tree)
        for name, tree in params.items()
    }


def build_optimizer(
    opt: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser named by `opt.name` ('lars', 'sgd', 'adamw') and its LR schedule."""
    if opt.base_lr < 0:
        raise UserError(f"optimizer.base_lr must be ≥ 0, got {opt.base_lr}")
    if opt.weight_decay < 0:
        raise UserError(f"optimizer.weight_decay must be ≥ 0, got {opt.weight_decay}")
    schedule = learning_rate_schedule(opt, batch_size, steps_per_epoch, total_steps)
    weight_decay = weight_decay_schedule(opt, total_steps)
    if opt.name == "lars":
        if callable(weight_decay):
            raise UserError("optimizer.weight_decay_end is supported with 'adamw' and 'sgd'")
        tx = optax.lars(
            schedule,
            weight_decay=weight_decay,
            weight_decay_mask=adaptation_mask,
            trust_coefficient=opt.trust_coefficient,
            trust_ratio_mask=adaptation_mask,
            momentum=opt.momentum,
        )
    elif opt.name == "sgd":
        decay_all = opt.get("weight_decay_all", False)
        decay_mask = all_but_probe if decay_all else adaptation_mask
        tx = optax.chain(
            optax.add_decayed_weights(weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=opt.momentum),
        )
    elif opt.name == "adamw":
        tx = optax.adamw(schedule, weight_decay=weight_decay, mask=adaptation_mask)
    else:
        raise UserError(f"optimizer.name={opt.name!r}: choose 'lars', 'sgd' or 'adamw'")
    if opt.get("decoder") is not None:
        tx = with_decoder_optimizer(
            tx, decoder_optimizer(opt.decoder, batch_size, steps_per_epoch, total_steps)
        )
    return tx, schedule


def decoder_optimizer(
    opt: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
    """SaGe's decoder optimiser (§4.1): Adam, LR = base_lr × B/256 (0.048 at B = 4096)
    after a linear warm-up of `opt.warmup_epochs`, then constant; no weight decay."""
    if opt.name != "adam":
        raise UserError(f"optimizer.decoder.name={opt.name!r}: only 'adam' is supported")
    peak = peak_learning_rate(opt.base_lr, batch_size)
    warmup = min(int(round(opt.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    schedule = optax.constant_schedule(peak)
    if warmup > 0:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), schedule], [warmup]
        )
    return optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)


def with_decoder_optimizer(
    tx: optax.GradientTransformation, decoder_tx: optax.GradientTransformation
) -> optax.GradientTransformation:
    """`decoder_tx` for the parameters under the top-level 'decoder', `tx` for the rest."""

    def labels(params):
        return {
            name: jax.tree.map(lambda _, n=name: "decoder" if n == "decoder" else "main", tree)
            for name, tree in params.items()
        }

    return optax.multi_transform({"main": tx, "decoder": decoder_tx}, labels)

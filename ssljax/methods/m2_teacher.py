"""Momentum² Teacher (Li, Liu & Sun 2021): BYOL whose teacher uses Momentum BN.

Student: encoder → projector → predictor with small-batch BN, `config.student_bn_group`
('local' or groups of n images, the paper's "BN = 32", independent of the device count).
Teacher: an EMA of the student's encoder and projector (m from `tau_base` to 1 on BYOL's
cosine, `EmaTargetMethod`) in which every BN (stem, blocks, downsample, projector) is
`MomentumBatchNorm` over `config.teacher_bn_group` (default: the per-device batch).

Per step k of K, with α_k = α_base·(cos(πk/K) + 1)/2 (1 → 0):
1. the student embeds both views, the teacher embeds both views with the *same* running
   statistics of the previous step, each view mixed with its own batch statistics;
2. the BYOL loss (`ssljax.losses.byol_loss`) on the student's predictions and the
   teacher's stop-gradient projections;
3. lazy update: running ← α·(stats_v1 + stats_v2)/2 + (1 − α)·running, averaged over
   devices by the engine; the optimiser step; the teacher-weight EMA.

`config.teacher_bn = 'batch'` swaps the teacher's Momentum BN for ordinary BN over
`teacher_bn_group` (the paper's Table 1 rows without Momentum BN); the teacher then keeps
its own `target_batch_stats` as in BYOL.

Evaluated network: the teacher (`--network=target`, the default of `python -m ssljax.eval`
and `python -m ssljax.export`). The paper "dump[s] the model from teacher" at the end of
training (§4.1) and evaluates that. Its BN statistics are the Momentum-BN running ones
(`momentum_stats`): α has decayed to 0 by the last step, so the teacher was normalising
with them alone, which is what its inference mode (`train=False`) does; they are exported
as the BN running mean/var, with `momentum_bn_epsilon` folded into the variance when it is
not PyTorch's 1e-5. `--network=online` gives the student, with its small-batch BN's own
running statistics.
"""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import ml_collections

from ssljax import losses
from ssljax.errors import UserError
from ssljax.methods.base import (
    EmaTargetMethod,
    Method,
    SiameseNetwork,
    apply_train,
    build_encoder,
    build_mlp,
)
from ssljax.models.momentum_norm import (
    MOMENTUM_STATS,
    apply_recording,
    as_batch_norm_statistics,
    lazy_update,
    momentum_batch_norm,
)
from ssljax.sharding import DATA_AXIS

TEACHER_BN = ("momentum", "batch")


def cosine_decrease(base: float, step: jax.Array, total_steps: int) -> jax.Array:
    """base·(cos(πk/K) + 1)/2: equals `base` at k = 0 and 0 at k = K (M²T eq. 8, α)."""
    progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return base * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def scale_for_batch(
    config: ml_collections.ConfigDict, batch_size: int
) -> ml_collections.ConfigDict:
    """The paper's equivalence rule (§4.2) for a batch k = batch_size / config.batch_size
    times larger: LR × k and (1 − m_base) × k. The LR follows on its own (it is
    base_lr × B/256), so only `batch_size` and `tau_base` change. Returns a copy."""
    k = batch_size / config.batch_size
    one_minus_m = (1.0 - config.tau_base) * k
    if not 0.0 <= one_minus_m <= 1.0:
        raise UserError(
            f"batch {batch_size} is {k:g}× the config's {config.batch_size}: 1 − tau_base "
            f"would be {one_minus_m:g}, outside [0, 1]; choose a smaller batch"
        )
    scaled = copy.deepcopy(config)
    scaled.batch_size = batch_size
    scaled.tau_base = 1.0 - one_minus_m
    return scaled


class MomentumSquaredTeacher(EmaTargetMethod):
    evaluated_network = "target"

    def __init__(self, config, total_steps):
        super().__init__(config, total_steps)
        if config.teacher_bn not in TEACHER_BN:
            raise UserError(
                f"teacher_bn={config.teacher_bn!r}: choose one of {', '.join(TEACHER_BN)}"
            )
        if not 0.0 <= config.alpha_base <= 1.0:
            raise UserError(f"alpha_base={config.alpha_base} must lie in [0, 1] (paper: 1)")
        student_group = config.student_bn_group
        encoder = build_encoder(config, bn_group=student_group)
        projector = build_mlp(config.projector, student_group)
        predictor = build_mlp(config.predictor, student_group)
        self.online = SiameseNetwork(encoder, projector, predictor)
        self.momentum_teacher = config.teacher_bn == "momentum"
        if not self.momentum_teacher:
            self.batch_teacher = SiameseNetwork(
                build_encoder(config, bn_group=config.teacher_bn_group),
                build_mlp(config.projector, config.teacher_bn_group),
            )

    def teacher(self, alpha) -> SiameseNetwork:
        """The student's encoder and projector with every BN a Momentum BN of rate `alpha`."""
        bn = momentum_batch_norm(
            alpha, self.config.teacher_bn_group, DATA_AXIS, self.config.momentum_bn_epsilon
        )
        return SiameseNetwork(self.online.encoder.clone(bn=bn), self.online.projector.clone(bn=bn))

    def target_statistics(self, state):
        """The teacher's Momentum-BN running statistics (or, with `teacher_bn='batch'`, its
        ordinary BN's) as a plain `BatchNorm` with ε = 1e-5 reads them."""
        if not self.momentum_teacher:
            return state.target_batch_stats
        return as_batch_norm_statistics(state.momentum_stats, self.config.momentum_bn_epsilon)

    def alpha(self, step: jax.Array) -> jax.Array:
        """Momentum BN's weight on the batch statistics: α_base → 0 on a cosine, or
        constant α_base when `alpha_schedule == 'constant'` (paper Table 6)."""
        if self.config.alpha_schedule == "constant":
            return jnp.asarray(self.config.alpha_base, jnp.float32)
        return cosine_decrease(self.config.alpha_base, step, self.total_steps)

    def schedules(self, step):
        return dict(super().schedules(step), alpha=self.alpha(step))

    def init(self, rng, images):
        fields = Method.init(self, rng, images)
        fields["target_params"] = {k: fields["params"][k] for k in self.target_keys}
        if self.momentum_teacher:
            teacher_vars = self.teacher(1.0).init(rng, images, train=False)
            fields[MOMENTUM_STATS] = teacher_vars[MOMENTUM_STATS]
        else:
            teacher_vars = self.batch_teacher.init(rng, images, train=False)
            fields["target_batch_stats"] = teacher_vars["batch_stats"]
        return fields

    def loss(self, params, state, batch, rng):
        stats = state.batch_stats
        online1, stats = apply_train(self.online, params, stats, batch["view1"])
        online2, stats = apply_train(self.online, params, stats, batch["view2"])
        updates = {"batch_stats": stats}
        if self.momentum_teacher:
            alpha = self.alpha(state.step)
            teacher = self.teacher(alpha)
            running = state.momentum_stats
            target1, view1_stats = apply_recording(
                teacher, state.target_params, running, batch["view1"]
            )
            target2, view2_stats = apply_recording(
                teacher, state.target_params, running, batch["view2"]
            )
            updates[MOMENTUM_STATS] = lazy_update(running, [view1_stats, view2_stats], alpha)
        else:
            target_stats = state.target_batch_stats
            target1, target_stats = apply_train(
                self.batch_teacher, state.target_params, target_stats, batch["view1"]
            )
            target2, target_stats = apply_train(
                self.batch_teacher, state.target_params, target_stats, batch["view2"]
            )
            updates["target_batch_stats"] = target_stats
        loss = losses.byol_loss(
            online1["prediction"],
            online2["prediction"],
            target1["projection"],
            target2["projection"],
        )
        return loss, {"updates": updates, "features": online1["pooled"]}


METHOD = MomentumSquaredTeacher

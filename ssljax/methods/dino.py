"""DINO (Caron et al. 2021) over multi-crop views, with SSLight's re-balanced loss.

Student: encoder → `DinoHead` (3-layer MLP 2048-2048-256 with GELU, L2 normalisation,
weight-normalised last layer 256 → K = 65536 without bias, its norm fixed to 1 when
`norm_last_layer`). Teacher: an EMA of encoder and head (τ from `tau_base` 0.996 to 1 on a
cosine), fed the global crops only. Loss: `ssljax.losses.dino_loss` — the cross-entropy of
softmax(g_s/0.1) of every student crop against the teacher's centred, sharpened
softmax((g_t − c)/τ_t) of every other global crop, re-balanced by α
(`config.multicrop.alpha`, SSLight eq. 3). τ_t rises linearly from 0.04 to 0.07 over the
first 30 epochs; the last layer gets no gradient during the first epoch.

Stochastic depth (`config.model.drop_path_rate`, a ViT's; 0.1 in SSLight's ViT runs): in
the student only, as DINO's ``main_dino.py`` and SSLight's ``model/dino.py`` build the
teacher ViT without ``drop_path_rate``. The student's 'dropout' keys come from the loss's
per-device, per-step `rng`; the teacher runs without one.

The centre c (TrainState.center, [K]) is c ← 0.9·c + 0.1·mean of the teacher outputs of
the global batch. The mean is a pmean over the `data` axis inside the loss, so c comes
out identical on every device and the engine passes it through unchanged.

Evaluated network: the teacher (`target`, the default of `python -m ssljax.eval` and
`python -m ssljax.export`): DINO reports the teacher, which performs better than the
student throughout training (Caron et al. 2021, the teacher-network ablation), and its
evaluation code loads the teacher's weights by default. `--network=online` gives the
student.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax import losses
from ssljax.methods import crop_forward
from ssljax.methods.base import EmaTargetMethod, SiameseNetwork, build_encoder
from ssljax.models.norm import BatchNorm
from ssljax.sharding import DATA_AXIS

HEAD = "projector"  # the head's name in SiameseNetwork, and so in params and the EMA


class DinoHead(nn.Module):
    """MLP (Dense → [BN] → GELU per hidden width, Dense to the bottleneck) → L2 norm →
    weight-normalised Dense to `out_dim` (DINO's `DINOHead`; trunc-normal 0.02 init)."""

    hidden_dims: Sequence[int] = (2048, 2048)
    bottleneck_dim: int = 256
    out_dim: int = 65536
    use_bn: bool = False
    norm_last_layer: bool = True
    bn: Callable[..., nn.Module] = BatchNorm

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        init = nn.initializers.truncated_normal(0.02)
        for i, features in enumerate(self.hidden_dims):
            x = nn.Dense(features, kernel_init=init, name=f"hidden{i}_dense")(x)
            if self.use_bn:
                x = self.bn(name=f"hidden{i}_bn")(x, train=train)
            x = nn.gelu(x, approximate=False)
        x = nn.Dense(self.bottleneck_dim, kernel_init=init, name="bottleneck_dense")(x)
        x = losses.l2_normalize(x.astype(jnp.float32))
        return WeightNormDense(self.out_dim, self.norm_last_layer, name="last_layer")(x)


class WeightNormDense(nn.Module):
    """y = x·W with column k of W = g_k·v_k/‖v_k‖ (Salimans & Kingma 2016), no bias;
    g is fixed to 1 when `fixed_norm` (DINO's `norm_last_layer`)."""

    features: int
    fixed_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        direction = self.param(
            "direction", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32
        )
        kernel = direction / jnp.linalg.norm(direction, axis=0, keepdims=True)
        if not self.fixed_norm:
            kernel = kernel * self.param("norm", nn.initializers.ones, (self.features,))
        return x @ kernel


class Dino(EmaTargetMethod):
    target_keys = ("encoder", HEAD)
    evaluated_network = "target"
    uses_drop_path = True

    def __init__(self, config, total_steps):
        super().__init__(config, total_steps)
        dino = config.dino
        head = DinoHead(
            hidden_dims=tuple(dino.hidden_dims),
            bottleneck_dim=dino.bottleneck_dim,
            out_dim=dino.out_dim,
            use_bn=dino.use_bn,
            norm_last_layer=dino.norm_last_layer,
            bn=partial(BatchNorm, group=config.bn_group, axis_name=DATA_AXIS),
        )
        self.online = SiameseNetwork(build_encoder(config), head, head_output="logits")
        teacher = build_encoder(config, drop_path=False)
        self.target = SiameseNetwork(teacher, head, head_output="logits")
        self.per_crop_bn = config.multicrop.per_crop_bn
        self.warmup_steps = crop_forward.epochs_to_steps(
            dino.warmup_teacher_temperature_epochs, total_steps, config
        )
        self.freeze_steps = crop_forward.epochs_to_steps(
            dino.freeze_last_layer_epochs, total_steps, config
        )

    def init(self, rng, images):
        fields = super().init(rng, images)
        fields["center"] = jnp.zeros((self.config.dino.out_dim,), jnp.float32)
        return fields

    def teacher_temperature(self, step: jax.Array) -> jax.Array:
        """τ_t: linear from `warmup_teacher_temperature` to `teacher_temperature`, then flat."""
        dino = self.config.dino
        progress = jnp.clip(step / max(self.warmup_steps, 1e-9), 0.0, 1.0)
        start, end = dino.warmup_teacher_temperature, dino.teacher_temperature
        return jnp.asarray(start + progress * (end - start), jnp.float32)

    def schedules(self, step):
        return {**super().schedules(step), "teacher_temperature": self.teacher_temperature(step)}

    def loss(self, params, state, batch, rng):
        dino = self.config.dino
        last_layer_held = state.step < self.freeze_steps
        student_params = crop_forward.without_gradient_while(
            params, HEAD, "last_layer", last_layer_held
        )
        keys = ("pooled", "logits")
        student, stats = crop_forward.apply_all_crops(
            self.online, student_params, state.batch_stats, batch, self.per_crop_bn, keys, rng
        )
        teacher, target_stats = crop_forward.apply_crops(
            self.target,
            state.target_params,
            state.target_batch_stats,
            crop_forward.crops_first(batch["global"]),
            self.per_crop_bn,
            ("logits",),
        )
        teacher_logits = jax.lax.stop_gradient(teacher["logits"].astype(jnp.float32))
        temperature = self.teacher_temperature(state.step)
        loss = losses.dino_loss(
            student["logits"],
            teacher_logits,
            state.center,
            dino.student_temperature,
            temperature,
            self.config.multicrop.alpha,
        )
        center = losses.dino_center_update(
            state.center, teacher_logits, dino.center_momentum, DATA_AXIS
        )
        targets = losses.dino_teacher_probabilities(teacher_logits, state.center, temperature)
        entropy = -jnp.sum(targets * jnp.log(jnp.maximum(targets, 1e-30)), axis=-1)
        aux = {
            "updates": {"batch_stats": stats, "target_batch_stats": target_stats, "center": center},
            "features": student["pooled"][0],
            "metrics": {
                **crop_forward.multicrop_metrics(batch),
                # log K for a uniform (collapsed by flattening) teacher, 0 for one-hot.
                "teacher_entropy": jnp.mean(entropy),
            },
        }
        return loss, aux


METHOD = Dino

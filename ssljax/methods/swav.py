"""SwAV (Caron et al. 2020) over multi-crop views, with SSLight's re-balanced loss.

Network: encoder → projector (Linear 4096 → BN → ReLU → Linear 128, biases as PyTorch)
→ L2 normalisation → prototypes C (Linear 128 → 3000, no bias, each prototype kept at
unit norm: normalised at init and after every optimiser step). There is no target
network: the codes come from the same forward pass, without gradient.

Codes: for each of the first `crops_for_assign` global crops, Sinkhorn–Knopp
(`ssljax.losses.sinkhorn_knopp`, ε 0.05, 3 iterations) over the scores z·C of the global
batch, and of the queue once it is full. Loss: `ssljax.losses.swav_loss` — every other
crop predicts those codes from softmax(z·C/τ), τ 0.1, re-balanced by α
(`config.multicrop.alpha`). The prototypes get no gradient during the first epoch.

Queue (TrainState.queue, identical on every device): `{'embeddings': [A, L, 128] the
newest first, 'filled': int32}`. From epoch `queue_start_epoch` (15) on, the embeddings of
the assigned crops of the whole global batch (all_gather) are pushed in front after each
step; once L are in, their scores under the current prototypes join the Sinkhorn problem.
The reference gives each GPU its own L/D rows; here device d takes rows d·L/D … of the
shared queue, which puts every queued sample into the problem exactly once as well.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax import losses
from ssljax.errors import UserError
from ssljax.methods import crop_forward
from ssljax.methods.base import Method, SiameseNetwork, build_encoder, build_mlp
from ssljax.models.heads import MLP
from ssljax.sharding import DATA_AXIS
from ssljax.train_state import TrainState

HEAD = "projector"


class SwavHead(nn.Module):
    """projector → L2 norm → prototypes; returns the embedding z and the scores z·C."""

    projector: MLP
    num_prototypes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        z = losses.l2_normalize(self.projector(x, train=train).astype(jnp.float32))
        scores = nn.Dense(self.num_prototypes, use_bias=False, name="prototypes")(z)
        return {"embedding": z, "scores": scores}


def normalize_prototypes(params):
    """`params` with every prototype (a column of the [D, K] kernel) at unit norm."""
    head = dict(params[HEAD])
    kernel = head["prototypes"]["kernel"]
    head["prototypes"] = {"kernel": losses.l2_normalize(kernel, axis=0)}
    return {**params, HEAD: head}


class SwAV(Method):
    def __init__(self, config, total_steps):
        super().__init__(config, total_steps)
        swav = config.swav
        if not 1 <= swav.crops_for_assign <= config.multicrop.num_global:
            raise UserError(
                f"swav.crops_for_assign={swav.crops_for_assign} must be between 1 and the "
                f"{config.multicrop.num_global} global crops"
            )
        if swav.queue_length < 0:
            raise UserError(f"swav.queue_length must be ≥ 0, got {swav.queue_length}")
        projector = build_mlp(
            config.projector,
            config.bn_group,
            use_bn=config.projector.use_bn,
            hidden_bias=config.projector.hidden_bias,
            last_bias=config.projector.last_bias,
        )
        head = SwavHead(projector, swav.num_prototypes)
        self.online = SiameseNetwork(build_encoder(config), head, head_output=None)
        self.per_crop_bn = config.multicrop.per_crop_bn
        self.queue_start = crop_forward.epochs_to_steps(swav.queue_start_epoch, total_steps, config)
        self.freeze_steps = crop_forward.epochs_to_steps(
            swav.freeze_prototypes_epochs, total_steps, config
        )

    def init(self, rng, images):
        fields = super().init(rng, images)
        fields["params"] = normalize_prototypes(fields["params"])
        length = self.config.swav.queue_length
        if length:
            dim = self.config.projector.out_dim
            embeddings = jnp.zeros((self.config.swav.crops_for_assign, length, dim), jnp.float32)
            fields["queue"] = {"embeddings": embeddings, "filled": jnp.zeros((), jnp.int32)}
        return fields

    def after_update(self, state: TrainState) -> TrainState:
        return state.replace(params=normalize_prototypes(state.params))

    def _codes(self, scores, queue, prototypes):
        """Sinkhorn codes [A, b, K] of the assigned crops, with the queue once it is full."""
        swav = self.config.swav
        if queue is None:
            return jnp.stack(
                [
                    losses.sinkhorn_knopp(s, swav.epsilon, swav.sinkhorn_iterations, DATA_AXIS)
                    for s in scores
                ]
            )
        length = queue["embeddings"].shape[1]
        devices = jax.lax.axis_size(DATA_AXIS)
        if length % devices:
            raise UserError(
                f"swav.queue_length={length} must be a multiple of the {devices} devices"
            )
        rows = length // devices
        first = jax.lax.axis_index(DATA_AXIS) * rows
        in_use = queue["filled"] >= length
        valid = jnp.concatenate(
            [jnp.full((rows,), in_use), jnp.ones(scores.shape[1:2], bool)], axis=0
        )
        codes = []
        for a, s in enumerate(scores):
            mine = jax.lax.dynamic_slice_in_dim(queue["embeddings"][a], first, rows)
            queued = mine @ prototypes
            both = jnp.concatenate([queued, s], axis=0)
            q = losses.sinkhorn_knopp(
                both, swav.epsilon, swav.sinkhorn_iterations, DATA_AXIS, valid=valid
            )
            codes.append(q[rows:])
        return jnp.stack(codes)

    def _enqueue(self, queue, embeddings, step):
        """Push the global batch's assigned-crop embeddings [A, b, D] in front (from
        `queue_start` on); the oldest fall off the end."""
        if queue is None:
            return None
        length = queue["embeddings"].shape[1]
        gathered = jax.lax.all_gather(embeddings, DATA_AXIS, axis=1, tiled=True)
        pushed = jnp.concatenate([gathered, queue["embeddings"]], axis=1)[:, :length]
        filled = jnp.minimum(queue["filled"] + gathered.shape[1], length).astype(jnp.int32)
        started = step >= self.queue_start
        return {
            "embeddings": jnp.where(started, pushed, queue["embeddings"]),
            "filled": jnp.where(started, filled, queue["filled"]),
        }

    def loss(self, params, state, batch, rng):
        swav = self.config.swav
        prototypes_held = state.step < self.freeze_steps
        params = crop_forward.without_gradient_while(params, HEAD, "prototypes", prototypes_held)
        out, stats = crop_forward.apply_all_crops(
            self.online,
            params,
            state.batch_stats,
            batch,
            self.per_crop_bn,
            ("pooled", "scores", "embedding"),
        )
        scores, embeddings = out["scores"], out["embedding"]
        assigned = swav.crops_for_assign
        prototypes = jax.lax.stop_gradient(params[HEAD]["prototypes"]["kernel"])
        codes = self._codes(jax.lax.stop_gradient(scores[:assigned]), state.queue, prototypes)
        loss = losses.swav_loss(
            scores,
            codes,
            swav.temperature,
            self.config.multicrop.num_global,
            self.config.multicrop.alpha,
        )
        queue = self._enqueue(state.queue, jax.lax.stop_gradient(embeddings[:assigned]), state.step)
        metrics = crop_forward.multicrop_metrics(batch)
        if queue is not None:
            metrics["queue_in_use"] = (state.queue["filled"] >= swav.queue_length).astype(
                jnp.float32
            )
        updates = {"batch_stats": stats}
        if queue is not None:
            updates["queue"] = queue
        return loss, {"updates": updates, "features": out["pooled"][0], "metrics": metrics}


METHOD = SwAV

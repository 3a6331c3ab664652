"""DetCon_B (Hénaff et al. 2021): BYOL's networks, the contrastive detection loss.

Masks, mask pooling and the loss are DetCon's (`ssljax.methods.detcon`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from ssljax import losses
from ssljax.methods.base import EmaTargetMethod, build_encoder, build_mlp
from ssljax.methods.detcon import (
    MaskPooledNetwork,
    check_masks_config,
    forward,
    head_bn_group,
    mask_metrics,
)
from ssljax.sharding import DATA_AXIS


class DetConB(EmaTargetMethod):
    """DetCon_B: BYOL's networks (EMA target, predictor), the contrastive detection loss.

    Projector and predictor `config.projector` / `config.predictor` (paper A.2: 4096 →
    256); τ from `config.tau_base` (0.996 at 1000 epochs) to 1 on a cosine. Each view
    passes the online and the target network on its own, the target with its own BN
    statistics; both pool with the batch's masks and ids.
    """

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int):
        super().__init__(config, total_steps)
        encoder = build_encoder(config)
        check_masks_config(config, encoder)
        projector = build_mlp(config.projector, head_bn_group(config))
        predictor = build_mlp(config.predictor, head_bn_group(config))
        self.online = MaskPooledNetwork(encoder, projector, predictor)
        self.target = MaskPooledNetwork(encoder, projector)

    def loss(self, params, state, batch, rng) -> tuple[jax.Array, dict[str, Any]]:
        online1, stats = forward(self.online, params, state.batch_stats, batch, 1)
        online2, stats = forward(self.online, params, stats, batch, 2)
        target_params = state.target_params
        target1, target_stats = forward(
            self.target, target_params, state.target_batch_stats, batch, 1
        )
        target2, target_stats = forward(self.target, target_params, target_stats, batch, 2)
        loss = losses.detcon_loss(
            online1["prediction"],
            online2["prediction"],
            jax.lax.stop_gradient(target1["projection"]),
            jax.lax.stop_gradient(target2["projection"]),
            batch["ids1"],
            batch["ids2"],
            self.config.temperature,
            axis_name=DATA_AXIS,
        )
        aux = {
            "updates": {"batch_stats": stats, "target_batch_stats": target_stats},
            "features": online1["pooled"],
            "metrics": mask_metrics(batch["ids1"], batch["ids2"]),
        }
        return loss, aux


METHOD = DetConB

"""DetCon_S (Hénaff et al. 2021): SimCLR's network, the contrastive detection loss.

Masks, mask pooling and the loss are DetCon's (`ssljax.methods.detcon`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from ssljax import losses
from ssljax.methods.base import Method, build_encoder, build_mlp
from ssljax.methods.detcon import (
    MaskPooledNetwork,
    check_masks_config,
    forward,
    head_bn_group,
    mask_metrics,
)
from ssljax.sharding import DATA_AXIS


class DetConS(Method):
    """DetCon_S: SimCLR's network and projector, the contrastive detection loss.

    Projector `config.projector` (paper A.2: 2048 → 128, BN after the hidden layer);
    both views through the same parameters; `detcon_loss(v1, v2, v1, v2)` so every
    embedding is both a query and a (trained) key, as in SimCLR.
    """

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int):
        super().__init__(config, total_steps)
        encoder = build_encoder(config)
        check_masks_config(config, encoder)
        head = config.projector
        projector = build_mlp(
            head,
            head_bn_group(config),
            use_bn=head.use_bn,
            hidden_bias=head.hidden_bias,
            last_bias=head.last_bias,
        )
        self.online = MaskPooledNetwork(encoder, projector)

    def loss(self, params, state, batch, rng) -> tuple[jax.Array, dict[str, Any]]:
        out1, stats = forward(self.online, params, state.batch_stats, batch, 1)
        out2, stats = forward(self.online, params, stats, batch, 2)
        v1, v2 = out1["projection"], out2["projection"]
        ids1, ids2 = batch["ids1"], batch["ids2"]
        loss = losses.detcon_loss(
            v1, v2, v1, v2, ids1, ids2, self.config.temperature, axis_name=DATA_AXIS
        )
        aux = {
            "updates": {"batch_stats": stats},
            "features": out1["pooled"],
            "metrics": mask_metrics(batch["ids1"], batch["ids2"]),
        }
        return loss, aux


METHOD = DetConS

"""BYOL (Grill et al., 2020): predict the EMA target's projection of the other view.

Online: encoder → projector (4096 → BN → ReLU → 256) → predictor (same shape).
Target: an EMA of encoder and projector, τ from `tau_base` to 1 on a cosine, with its
own BN statistics. Each view passes through the networks on its own, so each is
normalised with its own batch statistics. Loss: `ssljax.losses.byol_loss`.

Evaluated network: the online encoder (BYOL keeps only f_θ at the end of training);
`--network=target` gives the EMA encoder with its own running statistics.
"""

from __future__ import annotations

from ssljax import losses
from ssljax.methods.base import (
    EmaTargetMethod,
    SiameseNetwork,
    apply_train,
    build_encoder,
    build_mlp,
)


class Byol(EmaTargetMethod):
    def __init__(self, config, total_steps):
        super().__init__(config, total_steps)
        encoder = build_encoder(config)
        projector = build_mlp(config.projector, config.bn_group)
        predictor = build_mlp(config.predictor, config.bn_group)
        self.online = SiameseNetwork(encoder, projector, predictor)
        self.target = SiameseNetwork(encoder, projector)

    def target_outputs(self, state, batch):
        """The EMA target on each view in turn: ((out1, out2), its new BN statistics)."""
        stats = state.target_batch_stats
        target1, stats = apply_train(self.target, state.target_params, stats, batch["view1"])
        target2, stats = apply_train(self.target, state.target_params, stats, batch["view2"])
        return (target1, target2), stats

    def loss(self, params, state, batch, rng):
        stats = state.batch_stats
        online1, stats = apply_train(self.online, params, stats, batch["view1"])
        online2, stats = apply_train(self.online, params, stats, batch["view2"])
        (target1, target2), target_stats = self.target_outputs(state, batch)
        loss = losses.byol_loss(
            online1["prediction"],
            online2["prediction"],
            target1["projection"],
            target2["projection"],
        )
        aux = {
            "updates": {"batch_stats": stats, "target_batch_stats": target_stats},
            "features": online1["pooled"],
        }
        return loss, aux


METHOD = Byol

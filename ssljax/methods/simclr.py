"""SimCLR (Chen et al. 2020): tell each view's partner apart from the rest of the batch.

One network, encoder → projector (Linear 2048 → BN → ReLU → Linear 2048 → BN → ReLU →
Linear 128, no bias before BN, as the reference's heads); no target network. Each view
passes through on its own, so each is normalised with its own batch statistics (sync BN
by default: the global batch). Loss: `ssljax.losses.nt_xent` over the 2B embeddings of
the global batch at temperature τ, the other devices' embeddings gathered as negatives.
"""

from __future__ import annotations

from ssljax import losses
from ssljax.methods.base import (
    Method,
    SiameseNetwork,
    apply_train,
    build_encoder,
    build_mlp,
)
from ssljax.sharding import DATA_AXIS


class SimCLR(Method):
    def __init__(self, config, total_steps):
        super().__init__(config, total_steps)
        head = config.projector
        projector = build_mlp(
            head,
            config.bn_group,
            use_bn=head.use_bn,
            hidden_bias=head.hidden_bias,
            last_bias=head.last_bias,
        )
        self.online = SiameseNetwork(build_encoder(config), projector)

    def loss(self, params, state, batch, rng):
        out1, stats = apply_train(self.online, params, state.batch_stats, batch["view1"])
        out2, stats = apply_train(self.online, params, stats, batch["view2"])
        loss = losses.nt_xent(
            out1["projection"], out2["projection"], self.config.temperature, axis_name=DATA_AXIS
        )
        aux = {"updates": {"batch_stats": stats}, "features": out1["pooled"]}
        return loss, aux


METHOD = SimCLR

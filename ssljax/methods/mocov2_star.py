"""MoCo-v2* (SSLight, Tan et al. 2023, §3.1/§4.2): MoCo v2 with multi-crop queries.

The key is global crop 0 through the momentum key encoder (`ssljax.methods.moco.MoCo`:
its key BN, shuffle and queue of 65536 keys, m 0.999); the queries are global crop 1 (and
any further global crop) and every local crop through the query encoder. Each query crop
v has the InfoNCE loss of `ssljax.losses.moco_infonce` against the same key and queue
(T 0.2), and the pairs are re-balanced by α (`config.multicrop.alpha`, SSLight eq. 3): the
one global pair against the mean of the local ones, as the SSLight code does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssljax import losses
from ssljax.methods import crop_forward
from ssljax.methods.moco import MoCo, enqueue
from ssljax.models.momentum_norm import MOMENTUM_STATS


class MoCoV2Star(MoCo):
    def loss(self, params, state, batch, rng):
        per_crop_bn = self.config.multicrop.per_crop_bn
        crops = crop_forward.crops_first(batch["global"])
        keys_out = ("pooled", "projection")
        global_queries, stats = crop_forward.apply_crops(
            self.online, params, state.batch_stats, crops[1:], per_crop_bn, keys_out
        )
        local_queries, stats = crop_forward.apply_crops(
            self.online,
            params,
            stats,
            crop_forward.crops_first(batch["local"]),
            per_crop_bn,
            keys_out,
        )
        queries = jnp.concatenate(
            [global_queries["projection"], local_queries["projection"]], axis=0
        )  # [V − 1, b, D]: crops 1, 2, …
        stats_field = MOMENTUM_STATS if self.config.key_bn == "momentum" else "target_batch_stats"
        keys, all_keys, target_stats = self.encode_keys(
            state.target_params, getattr(state, stats_field), crops[0], rng
        )
        keys, all_keys = jax.lax.stop_gradient(keys), jax.lax.stop_gradient(all_keys)
        negatives = state.queue["keys"]
        per_query = [
            losses.moco_infonce(q, keys, negatives, self.config.temperature) for q in queries
        ]
        pairs = jnp.stack([jnp.zeros(()), *per_query])[None, :]  # [1, V]; crop 0 is the key
        loss = losses.rebalanced_multicrop_loss(
            pairs, self.config.multicrop.num_global, self.config.multicrop.alpha
        )
        q = jax.lax.stop_gradient(losses.l2_normalize(queries[0].astype(jnp.float32)))
        positive = jnp.sum(q * keys, axis=-1)
        aux = {
            "updates": {
                "batch_stats": stats,
                stats_field: target_stats,
                "queue": enqueue(state.queue, all_keys),
            },
            "features": global_queries["pooled"][0],
            "metrics": {
                **crop_forward.multicrop_metrics(batch),
                "contrast_top1": jnp.mean(positive > jnp.max(q @ negatives.T, axis=-1)),
                "global_pair_loss": per_query[0],
            },
        }
        return loss, aux


METHOD = MoCoV2Star

"""MoCo v1/v2 (He et al. 2020; Chen et al. 2020): find each query's key among a queue.

Query: encoder f_q → head (v1: Linear 128; v2: Linear 2048 → ReLU → Linear 128, no BN).
Key encoder f_k: a momentum copy of encoder and head, θ_k ← m·θ_k + (1 − m)·θ_q after
each step with a constant m (`tau_base`, 0.999), parameters only; its BN statistics are
its own. Loss: `ssljax.losses.moco_infonce` of the view-1 queries against their view-2
keys (the positives) and a queue of K earlier keys (the negatives), one direction.

The queue is a field of the TrainState, `{'keys': [K, D] L2-normalised, 'ptr': int32}`,
identical on every device. After the logits, the keys of the whole global batch
(all_gather over `data`) overwrite the oldest B rows at `ptr`, which then advances by B:
a ring buffer, oldest out first, which is why K must be a multiple of B.

Shuffle BN (`key_bn='shuffle'`, He et al. §3.3). MoCo normalises with per-GPU
statistics, and a query and its positive key normalised over the same images share a
"signature" the network uses to cheat (paper, A.9). Here the images that share BN
statistics form groups: the per-device batch (`bn_group='local'`) or `n` consecutive
images (`bn_group=n`, which emulates n-image GPUs on any device count, one device
included). The query encoder normalises over these groups. The key images are
gathered from every device, permuted so that each image lands in a different group
than its own, encoded with the same grouping, and put back in order. `key_bn='local'`
normalises the keys over the query's own groups without the shuffle (the paper's
ablation); `'sync'` over the global batch. `'momentum'` gives every BN of the key
encoder Momentum BN over the query's groups with a fixed α = `key_bn_alpha` (0.064,
Momentum² Teacher Table 3): α·batch + (1 − α)·running statistics, the running ones in
`momentum_stats`, updated after the keys (`ssljax.models.momentum_norm`). Like the
reference, the shuffle all_gathers the key images (B images on every device), then the
B keys.

Evaluated network: the query encoder f_q (`online`), as the reference's linear
classification loads it; `--network=target` gives the key encoder (with
`key_bn='momentum'` its Momentum-BN running statistics, the α = 0 map).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssljax import losses
from ssljax.errors import UserError
from ssljax.methods.base import (
    EmaTargetMethod,
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
from ssljax.models.norm import parse_bn_group
from ssljax.sharding import DATA_AXIS

KEY_BN = ("shuffle", "local", "sync", "momentum")
MOMENTUM_BN_EPSILON = 1e-5  # `momentum_batch_norm`'s default, which the key encoder uses
KEY_BN_ALPHA = 0.064  # Momentum² Teacher, Table 3: MoCo v2 with a Momentum-BN key encoder


def init_queue(rng: jax.Array, size: int, dim: int) -> dict[str, jax.Array]:
    """K random L2-normalised keys (as the reference's `randn` queue) and the pointer 0."""
    keys = losses.l2_normalize(jax.random.normal(rng, (size, dim), jnp.float32))
    return {"keys": keys, "ptr": jnp.zeros((), jnp.int32)}


def enqueue(queue: dict[str, jax.Array], keys: jax.Array) -> dict[str, jax.Array]:
    """Overwrite the oldest `len(keys)` rows with `keys` and advance the ring pointer."""
    size, batch = queue["keys"].shape[0], keys.shape[0]
    ptr = queue["ptr"]
    new_keys = jax.lax.dynamic_update_slice_in_dim(
        queue["keys"], keys.astype(queue["keys"].dtype), ptr, axis=0
    )
    return {"keys": new_keys, "ptr": ((ptr + batch) % size).astype(jnp.int32)}


def check_shuffle_groups(batch_size: int, group_size: int) -> int:
    """The number of BN groups G of a batch; shuffle BN needs G ≥ 3 equal groups."""
    groups = batch_size // group_size
    if groups * group_size != batch_size or groups < 3:
        sizes = [n for n in range(1, batch_size // 3 + 1) if batch_size % n == 0]
        fix = (
            f"set --config.bn_group={sizes[-1]} (the largest size that makes 3 or more groups)"
            if sizes
            else "use a batch of at least 3 images"
        )
        raise UserError(
            f"shuffle BN needs the batch of {batch_size} split into at least 3 BN groups of "
            f"equal size, got groups of {group_size}; with fewer groups the shuffle leaves "
            f"keys normalised beside their own query's images: {fix}, or use more devices"
        )
    return groups


def shuffle_permutation(
    rng: jax.Array, batch_size: int, group_size: int
) -> tuple[jax.Array, jax.Array]:
    """A random permutation of the batch that moves every image to another BN group.

    The batch is G = batch_size / group_size groups of consecutive images. Image s of
    group g takes a random slot j of its group and moves to slot j of group
    (g + c_j) mod G, with offsets c_j ∈ {1, …, G − 1} balanced over the slots, so every
    new group holds ⌊n/(G−1)⌋ or ⌈n/(G−1)⌉ images of each other group and none of its own.
    (The reference's uniform `randperm` leaves 1/G of the keys on their query's GPU.)

    Returns `(perm, position)`: shuffled row p holds image `perm[p]`; image i sits at
    shuffled row `position[i]` (the inverse permutation).
    """
    groups = check_shuffle_groups(batch_size, group_size)
    slot_rng, offset_rng = jax.random.split(rng)
    slot_keys = jax.random.split(slot_rng, groups)
    slots = jax.vmap(lambda k: jax.random.permutation(k, group_size))(slot_keys)  # [G, n]
    offsets = 1 + jax.random.permutation(offset_rng, group_size) % (groups - 1)  # [n]
    source_group = jnp.arange(groups)[:, None]
    position = ((source_group + offsets[slots]) % groups) * group_size + slots
    position = position.reshape(batch_size)
    perm = jnp.zeros_like(position).at[position].set(jnp.arange(batch_size))
    return perm, position


def _shared_rng(rng: jax.Array) -> jax.Array:
    """Device 0's rng on every device (the reference draws the shuffle on one GPU)."""
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        data = jax.lax.all_gather(jax.random.key_data(rng), DATA_AXIS)[0]
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(rng))
    return jax.lax.all_gather(rng, DATA_AXIS)[0]


class MoCo(EmaTargetMethod):
    """Query network `online`, momentum key network `target` (same modules, key BN)."""

    def __init__(self, config, total_steps):
        super().__init__(config, total_steps)
        if config.key_bn not in KEY_BN:
            raise UserError(f"key_bn={config.key_bn!r}: choose one of {', '.join(KEY_BN)}")
        self.query_bn = parse_bn_group(config.bn_group)
        if config.key_bn == "shuffle" and self.query_bn == "sync":
            raise UserError(
                "key_bn='shuffle' permutes the keys across BN groups, but bn_group='sync' "
                "is one group; set --config.bn_group to 'local' or a group size n"
            )
        if isinstance(self.query_bn, int) and config.key_bn == "shuffle":
            check_shuffle_groups(config.batch_size, self.query_bn)
        queue_size = config.moco.queue_size
        if queue_size <= 0 or queue_size % config.batch_size:
            multiple = max(1, round(queue_size / config.batch_size)) * config.batch_size
            raise UserError(
                f"moco.queue_size={queue_size} must be a positive multiple of the global "
                f"batch_size={config.batch_size} (the queue is replaced one batch at a time); "
                f"set --config.moco.queue_size={multiple}"
            )
        self.key_bn_group = "sync" if config.key_bn == "sync" else self.query_bn
        self.online = self._network(self.query_bn)
        self.target = self._network(self.key_bn_group)
        if config.key_bn == "momentum":
            self.key_bn_alpha = config.get("key_bn_alpha", KEY_BN_ALPHA)
            bn = momentum_batch_norm(self.key_bn_alpha, self.key_bn_group, DATA_AXIS)
            self.target = SiameseNetwork(
                self.target.encoder.clone(bn=bn), self.target.projector.clone(bn=bn)
            )

    def target_statistics(self, state):
        if self.config.key_bn == "momentum":
            return as_batch_norm_statistics(state.momentum_stats, MOMENTUM_BN_EPSILON)
        return state.target_batch_stats

    def _network(self, bn_group) -> SiameseNetwork:
        head = self.config.projector
        projector = build_mlp(
            head,
            bn_group,
            use_bn=head.use_bn,
            hidden_bias=head.hidden_bias,
            last_bias=head.last_bias,
        )
        return SiameseNetwork(build_encoder(self.config, bn_group=bn_group), projector)

    def init(self, rng, images):
        network_rng, queue_rng = jax.random.split(rng)
        fields = super().init(network_rng, images)
        fields["queue"] = init_queue(
            queue_rng, self.config.moco.queue_size, self.config.projector.out_dim
        )
        if self.config.key_bn == "momentum":
            fields[MOMENTUM_STATS] = self.target.init(network_rng, images, train=False)[
                MOMENTUM_STATS
            ]
            fields["target_batch_stats"] = None
        return fields

    def encode_keys(self, params, batch_stats, images, rng):
        """(keys of this device's images, keys of the global batch in order, BN stats).

        Runs inside the sharded step. With `key_bn='shuffle'` the key encoder sees this
        device's rows of the permuted global batch (`shuffle_permutation`, drawn from
        device 0's rng), and the keys are gathered and put back in image order.
        """
        local_batch = images.shape[0]
        first = jax.lax.axis_index(DATA_AXIS) * local_batch
        if self.config.key_bn == "momentum":  # `batch_stats` are the Momentum-BN running stats
            out, recorded = apply_recording(self.target, params, batch_stats, images)
            batch_stats = lazy_update(batch_stats, [recorded], self.key_bn_alpha)
            keys = losses.l2_normalize(out["projection"].astype(jnp.float32))
            return keys, jax.lax.all_gather(keys, DATA_AXIS, tiled=True), batch_stats
        if self.config.key_bn != "shuffle":
            out, batch_stats = apply_train(self.target, params, batch_stats, images)
            keys = losses.l2_normalize(out["projection"].astype(jnp.float32))
            return keys, jax.lax.all_gather(keys, DATA_AXIS, tiled=True), batch_stats
        all_images = jax.lax.all_gather(images, DATA_AXIS, tiled=True)
        group_size = local_batch if self.query_bn == "local" else self.query_bn
        perm, position = shuffle_permutation(_shared_rng(rng), all_images.shape[0], group_size)
        mine = jax.lax.dynamic_slice_in_dim(perm, first, local_batch)
        out, batch_stats = apply_train(self.target, params, batch_stats, all_images[mine])
        keys = losses.l2_normalize(out["projection"].astype(jnp.float32))
        all_keys = jax.lax.all_gather(keys, DATA_AXIS, tiled=True)[position]
        return jax.lax.dynamic_slice_in_dim(all_keys, first, local_batch), all_keys, batch_stats

    def loss(self, params, state, batch, rng):
        query, stats = apply_train(self.online, params, state.batch_stats, batch["view1"])
        stats_field = MOMENTUM_STATS if self.config.key_bn == "momentum" else "target_batch_stats"
        keys, all_keys, target_stats = self.encode_keys(
            state.target_params, getattr(state, stats_field), batch["view2"], rng
        )
        keys, all_keys = jax.lax.stop_gradient(keys), jax.lax.stop_gradient(all_keys)
        negatives = state.queue["keys"]
        loss = losses.moco_infonce(query["projection"], keys, negatives, self.config.temperature)
        q = jax.lax.stop_gradient(losses.l2_normalize(query["projection"].astype(jnp.float32)))
        positive = jnp.sum(q * keys, axis=-1)
        hardest_negative = jnp.max(q @ negatives.T, axis=-1)
        aux = {
            "updates": {
                "batch_stats": stats,
                stats_field: target_stats,
                "queue": enqueue(state.queue, all_keys),
            },
            "features": query["pooled"],
            "metrics": {
                # The (K+1)-way pretext accuracy of the paper's Fig. A.1: near 1 early on
                # means the keys are recognised by something other than content.
                "contrast_top1": jnp.mean(positive > hardest_negative),
                "positive_similarity": jnp.mean(positive),
            },
        }
        return loss, aux


METHOD = MoCo

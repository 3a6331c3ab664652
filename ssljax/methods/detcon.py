"""DetCon (Hénaff et al. 2021): contrast mask-pooled features, not whole images.

Each image comes with a segmentation (Felzenszwalb–Huttenlocher, a grid, ground truth);
the pipeline carries it through both views' crops and flips, assigns each layer4 feature
cell to its majority segment and samples R = 16 segment ids per image, the same ids for
both views where possible (the batch contract: `mask1`, `mask2` int32 [b, g, g]; `ids1`,
`ids2` int32 [b, R]). Per view and sampled id m the encoder's feature map is averaged
over the cells of m (h_m, paper eq. in §3.1), and the heads run on the b·R mask vectors,
their BN statistics over all masks of the global batch:

- DetCon_S (SimCLR base): v = g(h_m) in both views, one network, both sides trained.
- DetCon_B (BYOL base): v = q(g(h_m)) online, v' = g'(h'_m) from the EMA target, which
  pools its own feature maps with the same masks and ids; the target gets no gradient.

Loss: `ssljax.losses.detcon_loss` (the reference `byol_nce_detcon`) at temperature τ =
0.1. The paper rescales the latents to norm 1/√τ before dot products; `detcon_loss`
l2-normalises and divides the logits by τ, which is the same: (u/√τ)·(w/√τ) = u·w/τ.

With one global mask (R = 1) the networks are exactly SimCLR's and BYOL's, DetCon_S's
loss is 2 × SimCLR's NT-Xent and DetCon_B's is BYOL's regression loss rescaled plus a
log-partition over negatives (tests/test_detcon.py shows both). The online probe reads
the globally pooled online features of view 1.

This module holds what both share; the objectives are `detcon_s` and `detcon_b`.

Evaluated network: the online encoder; DetCon "retain[s] only the feature extractor f_θ and
discard[s] ... any exponential moving averages" for downstream tasks. DetCon_B's EMA
encoder is `--network=target`; DetCon_S has no other network.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax.errors import UserError
from ssljax.methods.base import (
    apply_train,
)
from ssljax.models.norm import parse_bn_group


def mask_pool(features: jax.Array, mask: jax.Array, ids: jax.Array) -> jax.Array:
    """h_m: the mean of the feature cells whose segment is `ids[:, r]`.

    features [b, g, g, C], mask [b, g, g] (segment id of each cell), ids [b, R] → [b, R, C]
    in float32. An id that owns no cell gives a zero vector (the division is guarded; the
    pipeline only samples ids present in the view).
    """
    b, height, width, channels = features.shape
    if mask.shape != (b, height, width):
        raise UserError(
            f"DetCon mask of shape {tuple(mask.shape)} does not match the {height}×{width} "
            "feature grid; set --config.masks.grid to the encoder's layer4 grid "
            f"({height} here)"
        )
    chex.assert_rank(ids, 2)
    cells = features.reshape(b, height * width, channels).astype(jnp.float32)
    member = (mask.reshape(b, 1, height * width) == ids[:, :, None]).astype(jnp.float32)
    area = member.sum(axis=-1, keepdims=True)
    return jnp.einsum("brn,bnc->brc", member, cells) / jnp.maximum(area, 1.0)


def head_bn_group(config: ml_collections.ConfigDict):
    """The heads' BN group in rows of b·R mask vectors: n images are n·R rows."""
    group = parse_bn_group(config.bn_group)
    return group * config.masks.num_samples if isinstance(group, int) else group


class MaskPooledNetwork(nn.Module):
    """encoder → mask pooling of layer4 → projector (→ predictor), per sampled mask.

    Outputs the encoder's maps and 'pooled' (global average, for the probe), plus
    'projection' (and 'prediction') of shape [b, R, D]. Without `mask` and `ids` the whole
    grid is one mask (R = 1): SimCLR's or BYOL's network, as used by `init`.
    """

    encoder: nn.Module
    projector: nn.Module
    predictor: nn.Module | None = None

    def __call__(
        self,
        images: jax.Array,
        train: bool,
        mask: jax.Array | None = None,
        ids: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        outputs = dict(self.encoder(images, train=train))
        if mask is None:
            pooled = outputs["pooled"][:, None]
        else:
            pooled = mask_pool(outputs["layer4"], mask, ids)
        b, num_masks, _ = pooled.shape

        def per_mask(head, x):
            y = head(x.reshape(b * num_masks, -1), train=train)
            return y.reshape(b, num_masks, -1)

        outputs["projection"] = per_mask(self.projector, pooled)
        if self.predictor is not None:
            outputs["prediction"] = per_mask(self.predictor, outputs["projection"])
        return outputs


def check_masks_config(config: ml_collections.ConfigDict, encoder: nn.Module) -> None:
    """DetCon needs masks on the encoder's layer4 grid; say what to set otherwise."""
    masks = config.get("masks")
    if masks is None or masks.kind == "none":
        raise UserError(
            f"method {config.method!r} needs segmentation masks: set --config.masks.kind "
            "(e.g. 'fh', 'grid' or 'global')"
        )
    grid = encoder.feature_grid(config.dataset.image_size)
    if masks.grid != grid:
        raise UserError(
            f"masks.grid={masks.grid}, but {config.model.name} at "
            f"{config.dataset.image_size} px has a {grid}×{grid} layer4 grid; "
            f"set --config.masks.grid={grid}"
        )
    sampling = masks.get("sampling", "independent")
    if sampling not in ("independent", "shared"):
        raise UserError(
            f"masks.sampling={sampling!r}; use 'independent' (the reference) or 'shared'"
        )


def mask_metrics(ids1: jax.Array, ids2: jax.Array) -> dict[str, jax.Array]:
    """Distinct segments among the R samples of an image, and the fraction of view-1
    samples whose id is also sampled in view 2 (the masks that carry a loss)."""
    num_masks = ids1.shape[1]
    earlier = jnp.tril(jnp.ones((num_masks, num_masks), bool), k=-1)
    repeated = jnp.any((ids1[:, :, None] == ids1[:, None, :]) & earlier, axis=-1)
    matched = jnp.any(ids1[:, :, None] == ids2[:, None, :], axis=-1)
    return {
        "distinct_masks": jnp.mean(jnp.sum(~repeated, axis=-1).astype(jnp.float32)),
        "matched_masks": jnp.mean(matched.astype(jnp.float32)),
    }


def forward(network, params, batch_stats, batch, view: int):
    return apply_train(
        network,
        params,
        batch_stats,
        batch[f"view{view}"],
        mask=batch[f"mask{view}"],
        ids=batch[f"ids{view}"],
    )

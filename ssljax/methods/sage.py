"""SaGe (Xu et al. 2021): BYOL plus semantic-aware generation.

Online: BYOL's encoder → projector → predictor, and a decoder (`ssljax.models.decoder`)
from the encoder's final feature map back to the image. Target: BYOL's EMA of encoder and
projector. Evaluator h_G: a frozen, label-free network — the encoder and projector of an
ssljax checkpoint (`config.evaluator.checkpoint`). It lives in `TrainState.frozen`:
outside `params`, so no optimiser, EMA or BN update touches it, and the loss stops its
gradient. `config.evaluator.bn` chooses its BN statistics: 'batch' (default, as the
reference, whose evaluator is a sub-module of the model the runner puts in train mode:
statistics of the batch it is shown, over the run's `bn_group`; the real views and the
reconstructions pass separately, so each is normalised with its own statistics) or
'running' (inference mode: the checkpoint's running statistics, one pass over both).

Per view v, reconstructed from its own encoding (§3.4): x̃ = D(f(v)) in [−1, 1], and
L_G(v) = `losses.sage_generation_loss` between 2v − 1 and x̃ in pixels and between h_G(v)
and h_G((x̃ + 1)/2) at the projection and at layer4, layer3, layer2 (weights in
`config.generation`, reference 1/10, 1/10, 1/30 ×3). Total = L_BYOL + λ·Σ_v L_G(v),
λ = `config.generation_weight`.

λ scales what reaches the encoder; the decoder descends L_G itself. Its optimiser is Adam,
whose step does not depend on the scale of the gradient (up to ε), so for λ > 0 this is
the paper's objective; at λ = 0 the encoder's update is exactly BYOL's while the decoder
still learns to invert BYOL's features, which makes the perceptual test measurable for
BYOL. Optimisers (`ssljax.optim`): LARS for encoder and heads, Adam (constant after
warm-up, no weight decay) for the decoder, via `config.optimizer.decoder`.

`config.evaluator.checkpoint`: the --workdir of an ssljax run whose encoder and projector
match `config.evaluator.model` and `.projector` (pre-train BYOL first), or 'random' for
the paper's random-evaluator ablation (Table 6/7): the evaluator architecture at
initialisation, with every BN scale 1 as PyTorch initialises it (ours start the last BN
of each residual block at 0, which would make a random ResNet little more than its
shortcuts). With every evaluator level weighted 0 (the pixel-MSE-only ablation) no
evaluator is built and none is needed.

Evaluated network: the online encoder, the f(·; θ_E) that both losses train and that the
paper transfers (§3: "f(·) is preserved and transferred"; the paper calls it the "target
network" in the sense of the network being trained, not BYOL's EMA). The EMA encoder is
`--network=target`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssljax import losses
from ssljax.errors import UserError
from ssljax.methods.base import (
    SiameseNetwork,
    apply_train,
    build_encoder,
    build_mlp,
)
from ssljax.methods.byol import Byol
from ssljax.models.decoder import Decoder
from ssljax.models.norm import BatchNorm, parse_bn_group
from ssljax.sharding import DATA_AXIS

LEVELS = ("projection", "layer4", "layer3", "layer2")  # the evaluator's outputs L_G reads
RANDOM_EVALUATOR = "random"
EVALUATOR_BN = ("batch", "running")


def generation_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    """{'pixels', *LEVELS: weight} from `config.generation`; negative weights are errors."""
    weights = {name: float(config.generation[name]) for name in ("pixels", *LEVELS)}
    negative = [name for name, w in weights.items() if w < 0]
    if negative:
        raise UserError(f"config.generation.{negative[0]} must be ≥ 0, got {weights[negative[0]]}")
    return weights


def evaluator_bn(config: ml_collections.ConfigDict) -> str:
    """`config.evaluator.bn`, checked: 'batch' (the reference) or 'running'."""
    mode = config.evaluator.get("bn", "batch")
    if mode not in EVALUATOR_BN:
        raise UserError(f"config.evaluator.bn={mode!r}; use one of {', '.join(EVALUATOR_BN)}")
    return mode


def build_evaluator(config: ml_collections.ConfigDict) -> SiameseNetwork:
    """Encoder + projector of `config.evaluator.model` / `.projector`; with batch
    statistics (`evaluator.bn='batch'`) they are taken over the run's `bn_group`."""
    view = copy.deepcopy(config)
    view.model = config.evaluator.model
    if evaluator_bn(config) == "batch":
        group, axis_name = parse_bn_group(config.bn_group), DATA_AXIS
    else:
        group, axis_name = "local", None
    encoder = build_encoder(view, bn_group=group, axis_name=axis_name)
    projector = build_mlp(config.evaluator.projector, group, axis_name=axis_name)
    return SiameseNetwork(encoder, projector)


def with_unit_bn_scales(variables: Any) -> Any:
    """Every BN scale set to 1 (PyTorch's initialisation), for the random evaluator."""

    def unit(path, leaf):
        is_scale = str(getattr(path[-1], "key", path[-1])) == "scale"
        return jnp.ones_like(leaf) if is_scale else leaf

    return {**variables, "params": jax.tree_util.tree_map_with_path(unit, variables["params"])}


def how_to_make_an_evaluator(config: ml_collections.ConfigDict) -> str:
    """The two-stage recipe, for error messages."""
    preset = config.get("preset") or "imagenet"
    workdir = config.evaluator.checkpoint or f"runs/byol_{preset}"
    if workdir == RANDOM_EVALUATOR:
        workdir = f"runs/byol_{preset}"
    return (
        f"pre-train BYOL first (python main.py --config=configs/byol.py:{preset} "
        f"--workdir={workdir}), then pass --config.evaluator.checkpoint={workdir}; "
        f"or --config.evaluator.checkpoint={RANDOM_EVALUATOR} for the random-evaluator ablation"
    )


def _architecture(model, projector) -> str:
    stem = ", small stem" if model.get("small_stem") else ""
    return (
        f"{model.name} ×{model.width:g}{stem} with a {list(projector.hidden_dims)} → "
        f"{projector.out_dim} projector"
    )


def evaluator_source(config: ml_collections.ConfigDict) -> tuple[str, int | None]:
    """(workdir, step) of the run in `config.evaluator.checkpoint` that holds h_G.

    A missing path, run or checkpoint is a UserError that says how to make an evaluator.
    """
    from etils.epath import Path

    from ssljax.checkpoint import Checkpointer

    spec = config.evaluator
    if not spec.checkpoint:
        raise UserError(
            f"SaGe needs a frozen evaluator ({_architecture(spec.model, spec.projector)}) and "
            f"config.evaluator.checkpoint is not set: {how_to_make_an_evaluator(config)}"
        )
    workdir = Path(spec.checkpoint)
    if not (workdir / "config.json").exists():
        raise UserError(
            f"config.evaluator.checkpoint={workdir} is not the --workdir of a training run "
            f"(no config.json): {how_to_make_an_evaluator(config)}"
        )
    checkpointer = Checkpointer(workdir / "checkpoints", asynchronous=False)
    try:
        if checkpointer.latest_step() is None:
            raise UserError(
                f"config.evaluator.checkpoint={workdir} has no checkpoint yet: "
                f"{how_to_make_an_evaluator(config)}"
            )
    finally:
        checkpointer.close()
    return str(workdir), spec.get("step")


def check_evaluator_config(config: ml_collections.ConfigDict, source) -> None:
    """Refuse an evaluator run (config `source`) other than `config.evaluator` asks for."""
    spec = config.evaluator
    expected = _architecture(spec.model, spec.projector)
    found = _architecture(source.model, source.projector)
    keys = ("name", "width", "small_stem")
    if any(source.model.get(k) != spec.model.get(k) for k in keys) or found != expected:
        raise UserError(
            f"the evaluator in {spec.checkpoint} is a {found}, but config.evaluator asks for a "
            f"{expected}; set config.evaluator.model/projector to match it, or "
            f"{how_to_make_an_evaluator(config)}"
        )


def evaluator_variables(
    config: ml_collections.ConfigDict, evaluator: SiameseNetwork, params: Any, batch_stats: Any
) -> Any:
    """{'params', 'batch_stats': {'encoder', 'projector'}} of an evaluator run's state,
    checked leaf by leaf against the shapes `evaluator` expects."""
    parts = ("encoder", "projector")
    variables = {
        "params": {k: params[k] for k in parts},
        "batch_stats": {k: batch_stats[k] for k in parts},
    }
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: evaluator.init(jax.random.PRNGKey(0), images, train=False))
    want = {p: s.shape for p, s in jax.tree_util.tree_leaves_with_path(shapes)}
    got = {p: v.shape for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    if want != got:
        path = next(p for p in {*want, *got} if want.get(p) != got.get(p))
        raise UserError(
            f"the evaluator in {config.evaluator.checkpoint} does not fit config.evaluator: "
            f"{jax.tree_util.keystr(path)} is {got.get(path)} there, {want.get(path)} here; "
            f"{how_to_make_an_evaluator(config)}"
        )
    return variables


class SaGe(Byol):
    def __init__(self, config, total_steps):
        super().__init__(config, total_steps)  # BYOL's online and target networks
        encoder = self.online.encoder
        if config.generation_weight < 0:
            raise UserError(f"generation_weight (λ) must be ≥ 0, got {config.generation_weight}")
        self.weights = generation_weights(config)
        size = config.dataset.image_size
        bn = functools.partial(
            BatchNorm,
            group=parse_bn_group(config.bn_group),
            axis_name=DATA_AXIS,
            momentum=config.model.bn_momentum,
        )
        self.decoder = Decoder(
            grid=encoder.feature_grid(size),
            image_size=size,
            bottleneck_dim=config.decoder.bottleneck_dim,
            stem_channels=config.decoder.stem_channels,
            channels=tuple(config.decoder.channels),
            bn=bn,
            dtype=jnp.dtype(config.model.dtype),
        )
        self.decoder.up_block_channels()  # a decoder too short for the image fails here
        uses_evaluator = any(self.weights[level] for level in LEVELS)
        self.evaluator_bn = evaluator_bn(config)
        self.evaluator = build_evaluator(config) if uses_evaluator else None

    def init(self, rng, images):
        fields = super().init(rng, images)
        grid = self.decoder.grid
        feature_map = jnp.zeros((images.shape[0], grid, grid, self.online.encoder.num_features))
        decoder = self.decoder.init(jax.random.fold_in(rng, 1), feature_map, train=False)
        fields["params"] = {**fields["params"], "decoder": decoder["params"]}
        fields["batch_stats"] = {**fields["batch_stats"], "decoder": decoder["batch_stats"]}
        if self.evaluator is not None:
            evaluator = self.evaluator.init(jax.random.fold_in(rng, 2), images, train=False)
            self._check_levels(evaluator, images)
            fields["frozen"] = with_unit_bn_scales(evaluator)
        return fields

    def _check_levels(self, variables, images):
        outputs = jax.eval_shape(lambda v: self.evaluator.apply(v, images, train=False), variables)
        missing = [lvl for lvl in LEVELS if self.weights[lvl] and lvl not in outputs]
        if missing:
            raise UserError(
                f"the evaluator ({self.config.evaluator.model.name}) has no {missing[0]!r} "
                f"output; set config.generation.{missing[0]}=0 or use a ResNet evaluator"
            )

    def frozen_source(self):
        """The evaluator run of `config.evaluator.checkpoint` (None: random or no evaluator)."""
        if self.evaluator is None or self.config.evaluator.checkpoint == RANDOM_EVALUATOR:
            return None
        return evaluator_source(self.config)

    def check_frozen_config(self, config):
        check_evaluator_config(self.config, config)

    def frozen_from(self, loaded):
        """h_G's variables: the evaluator run's online encoder and projector."""
        state = loaded.state
        return evaluator_variables(self.config, self.evaluator, state.params, state.batch_stats)

    def evaluator_features(self, frozen, images):
        """h_G's outputs on `images` in [0, 1] without gradient to h_G's variables: with the
        batch's BN statistics (`evaluator.bn='batch'`; the updated running statistics are
        dropped, h_G never changes) or its running ones."""
        frozen = jax.lax.stop_gradient(frozen)
        if self.evaluator_bn == "running":
            return self.evaluator.apply(frozen, images, train=False)
        outputs, _ = self.evaluator.apply(frozen, images, train=True, mutable=["batch_stats"])
        return outputs

    def reconstruct(self, params, stats, feature_map, train=True):
        """D(f(v)): the decoder's image in [−1, 1] (and its updated BN statistics)."""
        if train:
            return apply_train(self.decoder, params["decoder"], stats["decoder"], feature_map)
        variables = {"params": params["decoder"], "batch_stats": stats["decoder"]}
        return self.decoder.apply(variables, feature_map, train=False), stats["decoder"]

    def generation_loss(self, params, stats, frozen, view, feature_map):
        """(L_G of one view, its unweighted terms, the decoder's BN statistics)."""
        lam = self.config.generation_weight
        # Forward: the feature map itself. Backward: λ × the decoder's gradient reaches f.
        detached = jax.lax.stop_gradient(feature_map)
        feature_map = detached + lam * (feature_map - detached)
        reconstruction, decoder_stats = self.reconstruct(params, stats, feature_map)
        features, reconstruction_features = {}, {}
        if self.evaluator is not None:
            # Two passes, never one over [view; x̃]: with running statistics the outputs are
            # the same and the backward pass covers the b reconstructions, not 2b images;
            # with batch statistics each batch needs its own pass anyway.
            real = self.evaluator_features(frozen, view)
            fake = self.evaluator_features(frozen, (reconstruction + 1) / 2)
            for level in LEVELS:
                if level in real:
                    features[level], reconstruction_features[level] = real[level], fake[level]
        value, terms = losses.sage_generation_loss(
            2.0 * view - 1.0, reconstruction, features, reconstruction_features, self.weights
        )
        return value, terms, decoder_stats

    def loss(self, params, state, batch, rng):
        stats = state.batch_stats
        online, generation, terms = {}, 0.0, {}
        for v in ("view1", "view2"):
            online[v], new_stats = apply_train(self.online, params, stats, batch[v])
            stats = {**stats, **new_stats}
            value, view_terms, decoder_stats = self.generation_loss(
                params, stats, state.frozen, batch[v], online[v]["layer4"]
            )
            stats = {**stats, "decoder": decoder_stats}
            generation = generation + value
            for name, term in view_terms.items():
                terms[f"generation_{name}"] = terms.get(f"generation_{name}", 0.0) + term / 2
        (target1, target2), target_stats = self.target_outputs(state, batch)
        byol = losses.byol_loss(
            online["view1"]["prediction"],
            online["view2"]["prediction"],
            target1["projection"],
            target2["projection"],
        )
        lam = self.config.generation_weight
        # Value L_BYOL + λ·L_G; gradient: the decoder gets all of L_G's, the encoder λ of it.
        loss = byol + generation + (lam - 1.0) * jax.lax.stop_gradient(generation)
        aux = {
            "updates": {"batch_stats": stats, "target_batch_stats": target_stats},
            "features": online["view1"]["pooled"],
            "metrics": {"loss_byol": byol, "loss_generation": generation, **terms},
        }
        return loss, aux


METHOD = SaGe

"""What every objective shares: the method interface, network plumbing and the EMA target.

A method supplies networks, a pure loss and the rules that move non-optimised state after
the optimiser step. It never calls `jax.jit` or names devices: the engine (`ssljax.engine`)
wraps `loss` into one sharded step and runs it inside `shard_map`, where collectives may
name the `data` axis (`ssljax.sharding.DATA_AXIS`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax.errors import UserError
from ssljax.models.backbones import build_backbone, without_drop_path
from ssljax.models.heads import MLP
from ssljax.optim import cosine_increase
from ssljax.sharding import DATA_AXIS
from ssljax.train_state import TrainState


class SiameseNetwork(nn.Module):
    """encoder → projector (→ predictor). Online and target share the first two names.

    The projector's output is `outputs[head_output]`: 'projection' for an embedding
    (BYOL, SimCLR, MoCo), a name for what else a head computes (DINO's 'logits'); with
    `head_output=None` the head returns a dict of named outputs (SwAV's 'embedding' and
    'scores'), merged into the outputs.
    """

    encoder: nn.Module
    projector: nn.Module
    predictor: nn.Module | None = None
    head_output: str | None = "projection"

    def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
        outputs = dict(self.encoder(images, train=train))
        head = self.projector(outputs["pooled"], train=train)
        if self.head_output is None:
            outputs.update(head)
        else:
            outputs[self.head_output] = head
        if self.predictor is not None:
            outputs["prediction"] = self.predictor(outputs[self.head_output], train=train)
        return outputs


def apply_train(module: nn.Module, params: Any, batch_stats: Any, images: jax.Array, **kwargs):
    """One training-mode forward pass; returns (outputs, updated batch_stats)."""
    outputs, mutated = module.apply(
        {"params": params, "batch_stats": batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
        **kwargs,
    )
    return outputs, mutated["batch_stats"]


def ema(target: Any, online: Any, tau: jax.Array) -> Any:
    """target ← τ·target + (1 − τ)·online, leaf by leaf."""
    return jax.tree_util.tree_map(lambda t, o: tau * t + (1.0 - tau) * o, target, online)


def build_encoder(
    config: ml_collections.ConfigDict, bn_group=None, axis_name=DATA_AXIS, drop_path=True
):
    """The backbone named by `config.model`, with its BN statistics over `bn_group`, and a
    ViT's stochastic depth (`config.model.drop_path_rate`) unless `drop_path` is False."""
    return build_backbone(
        config.model,
        config.dataset.image_size,
        bn_group=config.bn_group if bn_group is None else bn_group,
        axis_name=axis_name,
        drop_path=drop_path,
    )


def build_mlp(head: ml_collections.ConfigDict, bn_group, axis_name=DATA_AXIS, **kwargs) -> MLP:
    """A projector/predictor head from a config with `hidden_dims` and `out_dim`."""
    from functools import partial

    from ssljax.models.norm import BatchNorm

    bn = partial(BatchNorm, group=bn_group, axis_name=axis_name)
    return MLP(hidden_dims=tuple(head.hidden_dims), out_dim=head.out_dim, bn=bn, **kwargs)


class Method:
    """Base class of an objective. Subclasses set `self.online` and implement `loss`.

    Contract:
    - `init(rng, images)` returns the TrainState fields the method uses (`params`,
      `batch_stats`, and e.g. `target_params`, `queue`); the engine adds the online probe
      and the optimiser state.
    - `loss(params, state, batch, rng)` is pure and runs per device inside the sharded step.
      It returns `(loss, aux)` with `aux = {'updates': {field: value}, 'features': [b, C]
      pooled online features of view 1 (for the online probe), 'metrics': {name: scalar}}`.
      The engine averages the statistics fields of `updates` (`engine.STATISTICS_FIELDS`)
      over devices; any other field (a queue) must come out identical on every device.
    - `after_update(state)` moves what the optimiser does not (EMA target, queue pointer).
    """

    # The encoders a run holds (`encoder_variables`), and the one its paper evaluates and
    # transfers: the default of `python -m ssljax.eval --network` and `ssljax.export`.
    networks: tuple[str, ...] = ("online",)
    evaluated_network: str = "online"
    # Whether `loss` gives its networks a 'dropout' rng, which a ViT's stochastic depth
    # (`config.model.drop_path_rate` > 0) draws from in training; the others refuse a rate.
    uses_drop_path: bool = False

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int):
        self.config = config
        self.total_steps = total_steps
        self.online: nn.Module
        rate = config.get("model", {}).get("drop_path_rate", 0.0) if config is not None else 0.0
        if rate and not self.uses_drop_path:
            method = config.get("method", type(self).__name__)
            raise UserError(
                f"--config.model.drop_path_rate={rate}: {method} does not train with "
                "stochastic depth (only dino's student does); set it to 0"
            )

    @property
    def encoder(self) -> nn.Module:
        """The backbone whose pooled features are evaluated (params under 'encoder'), without
        a ViT's stochastic depth: evaluation and fine-tuning run it deterministically."""
        return without_drop_path(self.online.encoder)

    def encoder_variables(self, state: TrainState, network: str | None = None) -> dict[str, Any]:
        """{'params', 'batch_stats'} of `network`'s encoder (default: `evaluated_network`),
        in the layout of `self.encoder` run with ``train=False`` (a ViT: no statistics)."""
        if self.network(network) == "online":
            params, stats = state.params, state.batch_stats
        else:
            params, stats = state.target_params, self.target_statistics(state)
        return {"params": params["encoder"], "batch_stats": (stats or {}).get("encoder", {})}

    def network(self, network: str | None = None) -> str:
        """`network` checked against `networks` (None: `evaluated_network`)."""
        network = network or self.evaluated_network
        if network not in self.networks:
            method = self.config.get("method", type(self).__name__)
            raise UserError(
                f"--network={network}: {method} has no {network} network; "
                f"choose {' or '.join(self.networks)}"
            )
        return network

    def target_statistics(self, state: TrainState) -> Any:
        """The target's running BN statistics, as ordinary `BatchNorm` reads them."""
        return state.target_batch_stats

    def init(self, rng: jax.Array, images: jax.Array) -> dict[str, Any]:
        variables = self.online.init(rng, images, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def loss(self, params, state: TrainState, batch, rng):
        raise NotImplementedError

    def after_update(self, state: TrainState) -> TrainState:
        return state

    def frozen_source(self) -> tuple[str, int | None] | None:
        """(workdir, step or None for the newest) of the run whose networks a new run keeps
        frozen in `TrainState.frozen` (SaGe's evaluator); None: `init`'s values stay.

        The trainer loads that run (`ssljax.train.load_frozen`) before a new run writes
        anything, so a missing or mismatched network stops it with a message; never on
        resume, where the run's own checkpoint holds the frozen values.
        """
        return None

    def check_frozen_config(self, config: ml_collections.ConfigDict) -> None:
        """Refuse a `frozen_source` run whose config does not describe the wanted network."""

    def frozen_from(self, loaded: Any) -> Any:
        """`TrainState.frozen` from the `frozen_source` run (an `ssljax.run.LoadedRun`)."""
        raise NotImplementedError

    def schedules(self, step: jax.Array) -> dict[str, jax.Array]:
        """Per-step values of the method's own schedules, logged beside the LR."""
        return {}


class EmaTargetMethod(Method):
    """A method whose target network is an EMA of part of the online network (BYOL family).

    The target holds the online parameters named in `target_keys` and its own BN
    statistics, which only its own forward passes update. τ follows BYOL's cosine
    schedule from `config.tau_base` to 1 (a constant `tau_base` when
    `config.tau_schedule == 'constant'`, as MoCo's key encoder).
    """

    target_keys: tuple[str, ...] = ("encoder", "projector")
    networks = ("online", "target")

    def init(self, rng, images):
        fields = super().init(rng, images)
        fields["target_params"] = {k: fields["params"][k] for k in self.target_keys}
        fields["target_batch_stats"] = {
            k: fields["batch_stats"][k] for k in self.target_keys if k in fields["batch_stats"]
        }
        return fields

    def tau(self, step: jax.Array) -> jax.Array:
        if self.config.get("tau_schedule", "cosine") == "constant":
            return jnp.asarray(self.config.tau_base, jnp.float32)
        return cosine_increase(self.config.tau_base, step, self.total_steps)

    def schedules(self, step):
        return {"tau": self.tau(step)}

    def after_update(self, state: TrainState) -> TrainState:
        online = {k: state.params[k] for k in self.target_keys}
        # `state.step` was already advanced; τ belongs to the step just taken.
        tau = self.tau(state.step - 1)
        return state.replace(target_params=ema(state.target_params, online, tau))

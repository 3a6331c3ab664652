"""The one way to load a training run: its config, its method and a restored state.

    loaded = load_run("runs/byol_fm")            # the newest checkpoint
    variables = loaded.encoder_variables()        # {'params', 'batch_stats'} of the encoder

A checkpoint is restored from its own metadata (the shapes and dtypes it was saved with),
so loading builds no optimiser, opens no dataset and never depends on an evaluation
dataset's class count: the online probe comes back with the shape it was trained with.
The optimiser state is not read. Evaluation, SaGe's evaluator and export all load runs
here; the trainer resumes its own runs through `ssljax.train`.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
from etils.epath import Path
from jax.sharding import Mesh, NamedSharding

from ssljax import engine
from ssljax.checkpoint import Checkpointer
from ssljax.errors import UserError
from ssljax.methods import get_method
from ssljax.methods.base import Method
from ssljax.sharding import REPLICATED, make_mesh
from ssljax.train_state import TrainState


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run was started with (`workdir/config.json`)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise UserError(f"{path} not found: is {workdir} the --workdir of a training run?")
    return ml_collections.ConfigDict(read_json(path))


def read_json(path: Path) -> dict:
    """A workdir's JSON file; a damaged one is a UserError that says what to do."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is corrupt ({e}); restore it from a copy, or start a new --workdir"
        ) from None


def initial_rngs(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
    """(init rng, step rng) of a run, both from `config.seed`."""
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    return init_rng, step_rng


def build_method(config: ml_collections.ConfigDict, total_steps: int | None = None) -> Method:
    """The method `config.method` names. Without `total_steps` (a run loaded for inference)
    the per-step schedules (τ, temperatures) span `config.total_steps`, or one step when the
    run was sized in epochs: loading never opens the dataset to count its steps."""
    if total_steps is None:
        total_steps = max(int(config.get("total_steps", 0) or 0), 1)
    return get_method(config.method)(config, total_steps)


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run's config, its method and its state at `step` (opt_state is None)."""

    workdir: Path
    config: ml_collections.ConfigDict
    method: Method
    state: TrainState
    step: int

    def encoder_variables(self, network: str | None = None) -> dict:
        """{'params', 'batch_stats'} of the encoder `method.encoder` applies in inference mode.

        `network`: 'online' or 'target' (the EMA / momentum / teacher encoder where the
        method keeps one); None: the one the method's paper evaluates
        (`Method.evaluated_network`). Per-method detail, such as Momentum² Teacher's
        Momentum-BN statistics, is `Method.encoder_variables`; a ViT has no statistics ({}).
        """
        return self.method.encoder_variables(self.state, network)


def _random_init(method: Method, config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """The state the run started from (same config and seed), without probe or optimiser."""
    size = config.dataset.image_size
    images = jnp.zeros((2, size, size, 3), jnp.float32)
    init = jax.jit(
        lambda rng: engine.init_state(method, None, rng, images, num_classes=None),
        out_shardings=NamedSharding(mesh, REPLICATED),
    )
    return init(initial_rngs(config)[0])


def load_run(
    workdir: str | Path,
    step: int | None = None,
    *,
    random_init: bool = False,
    mesh: Mesh | None = None,
) -> LoadedRun:
    """The run in `workdir` at checkpoint `step` (default: the newest), replicated on `mesh`
    (default: every device). `random_init`: the untrained network the run started from."""
    workdir = Path(workdir)
    config = load_config(workdir)
    method = build_method(config)
    mesh = make_mesh() if mesh is None else mesh
    if random_init:
        return LoadedRun(workdir, config, method, _random_init(method, config, mesh), 0)
    if not (workdir / "checkpoints").exists():  # (a Checkpointer would create it)
        raise UserError(f"no checkpoint in {workdir}: train first, or pass --random-init")
    checkpointer = Checkpointer(workdir / "checkpoints", asynchronous=False)
    try:
        saved = checkpointer.all_steps()
        if not saved:
            raise UserError(f"no checkpoint in {workdir}: train first, or pass --random-init")
        if step is not None and step not in saved:
            raise UserError(f"no checkpoint for step {step} in {workdir}; saved: {saved}")
        fields = checkpointer.restore_as_saved(
            step, NamedSharding(mesh, REPLICATED), skip=("opt_state",)
        )
    finally:
        checkpointer.close()
    state = TrainState(**{"opt_state": None, **fields})
    return LoadedRun(workdir, config, method, state, int(jax.device_get(state.step)))

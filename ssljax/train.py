"""The pre-training loop: set up a run from its config, restore or init, step, log, save."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils.epath import Path
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from ssljax import engine, files
from ssljax.checkpoint import Checkpointer
from ssljax.data import pipeline, registry
from ssljax.errors import UserError
from ssljax.logger import MetricsLogger
from ssljax.methods import get_method
from ssljax.methods.base import Method
from ssljax.optim import build_optimizer
from ssljax.train_state import TrainState


@dataclasses.dataclass
class Run:
    """Everything derived from a config that training and evaluation both need."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    dataset: Any  # registry.DatasetInfo
    method: Method
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    steps_per_epoch: int
    total_steps: int
    num_classes: int | None
    init: Callable[[jax.Array], TrainState]

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, engine.REPLICATED)

    def rngs(self) -> tuple[jax.Array, jax.Array]:
        """(init rng, step rng), both from `config.seed`."""
        init_rng, step_rng = jax.random.split(jax.random.PRNGKey(self.config.seed))
        return init_rng, step_rng


def validate(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Reject impossible values with a message that says what to change."""
    engine.check_batch_size(config.batch_size, mesh)
    if config.epochs <= 0 and config.total_steps <= 0:
        raise UserError("set --config.epochs (or --config.total_steps) to a positive number")
    if config.dataset.image_size < 8:
        raise UserError(f"dataset.image_size={config.dataset.image_size} is too small (≥ 8)")
    if config.log_every_steps <= 0 or config.checkpoint_every_steps <= 0:
        raise UserError("log_every_steps and checkpoint_every_steps must be positive")


def setup(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Run:
    mesh = engine.make_mesh() if mesh is None else mesh
    validate(config, mesh)
    info, builder = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    num_train = builder.info.splits[config.dataset.train_split or info.train_split].num_examples
    steps_per_epoch = pipeline.steps_per_epoch(config, num_train)
    if steps_per_epoch == 0:
        raise UserError(
            f"the training split has {num_train} images, fewer than one batch of "
            f"{config.batch_size}; lower --config.batch_size"
        )
    total_steps = config.total_steps if config.total_steps > 0 else config.epochs * steps_per_epoch
    method = get_method(config.method)(config, total_steps)
    tx, schedule = build_optimizer(
        config.optimizer, config.batch_size, steps_per_epoch, total_steps
    )
    num_classes = info.num_classes if config.online_probe else None
    size = config.dataset.image_size
    init = engine.make_init(method, tx, mesh, (size, size, 3), num_classes)
    return Run(
        config, mesh, info, method, tx, schedule, steps_per_epoch, total_steps, num_classes, init
    )


# Fields that control one invocation, not the experiment: a resumed run may change them.
RUN_CONTROL_FIELDS = ("max_train_seconds",)


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Write `workdir/config.json`; a resumed run must use the config it started with
    (`RUN_CONTROL_FIELDS` aside)."""
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if path.exists():
        differences = config_differences(_read_json(path), json.loads(text))
        if differences:
            raise UserError(
                f"{workdir} holds a run with a different config ({path}: "
                f"{'; '.join(differences[:5])}); resume it with the same config or choose a "
                "new --workdir"
            )
        return
    if jax.process_index() == 0:
        files.write_text(path, text + "\n")


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """What keeps `current` from resuming a run saved with `saved`, as 'field: a → b'.

    `RUN_CONTROL_FIELDS` may change. A field absent from `saved` was added to ssljax after
    the run started; its default keeps the old behaviour (a rule for new fields), so it
    does not count.
    """
    control = RUN_CONTROL_FIELDS if not prefix else ()
    differences = []
    for name, value in current.items():
        field = prefix + name
        if name in control or name not in saved:
            continue
        if isinstance(value, dict) and isinstance(saved[name], dict):
            differences += config_differences(saved[name], value, field + ".")
        elif saved[name] != value:
            differences.append(f"{field}: {saved[name]!r} → {value!r}")
    differences += [
        f"{prefix}{name}: removed" for name in saved if name not in current and name not in control
    ]
    return differences


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise UserError(f"{path} not found: is {workdir} the --workdir of a training run?")
    return ml_collections.ConfigDict(_read_json(path))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is corrupt ({e}); restore it from a copy, or start a new --workdir"
        ) from None


def restore_or_init(run: Run, checkpointer: Checkpointer, step: int | None = None) -> TrainState:
    init_rng, _ = run.rngs()
    if checkpointer.latest_step() is None:
        if step is not None:
            raise UserError(f"no checkpoint in {checkpointer.manager.directory}")
        return run.init(init_rng)
    if step is not None and step not in checkpointer.all_steps():
        raise UserError(f"no checkpoint for step {step}; saved: {checkpointer.all_steps()}")
    return checkpointer.restore(run.init, init_rng, run.replicated, step)


def _out_of_time(deadline: float | None, step: int, every: int) -> bool:
    """Whether the wall-time budget is spent; with several processes, process 0's clock
    decides at log steps, so that all stop at the same step."""
    if deadline is None:
        return False
    if jax.process_count() == 1:
        return time.monotonic() >= deadline
    if step % every:
        return False
    return bool(multihost_utils.broadcast_one_to_all(np.array(time.monotonic() >= deadline)))


def train(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    mesh: Mesh | None = None,
    stop_at: int | None = None,
) -> TrainState:
    """Pre-train, resuming from the newest checkpoint in `workdir` if there is one.

    `stop_at` ends the run early (after saving) as if it had been interrupted: tests use it
    to show that a resumed run continues exactly as an uninterrupted one.
    `config.max_train_seconds` > 0 does the same when this call has run that long (setup
    and compilation included): the last row of metrics.jsonl then has
    `stopped_by_time_limit` = 1, and running again resumes from that step.
    """
    budget = config.get("max_train_seconds", 0) or 0
    deadline = time.monotonic() + budget if budget > 0 else None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = setup(config, mesh)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    frozen = run.method.load_frozen() if checkpointer.latest_step() is None else None
    save_config(config, workdir)
    state = restore_or_init(run, checkpointer)
    if frozen is not None:
        state = state.replace(frozen=jax.device_put(frozen, run.replicated))
    start = int(jax.device_get(state.step))
    if start:
        print(f"resuming from step {start} in {workdir}", flush=True)
    end = run.total_steps if stop_at is None else min(stop_at, run.total_steps)
    _, step_rng = run.rngs()
    train_step = engine.make_train_step(run.method, run.tx, run.schedule, run.mesh, run.num_classes)
    batches = pipeline.train_batches(config, start_step=start)
    logger = MetricsLogger(
        workdir, run.total_steps, run.steps_per_epoch, config.batch_size, start_step=start
    )
    for step in range(start + 1, end + 1):
        state, metrics = train_step(state, engine.global_batch(next(batches), run.mesh), step_rng)
        out_of_time = _out_of_time(deadline, step, config.log_every_steps)
        if out_of_time:
            metrics = dict(metrics, stopped_by_time_limit=1.0)
        if step % config.log_every_steps == 0 or step == end or out_of_time:
            logger.log(step, metrics)
        if step % config.checkpoint_every_steps == 0 or step == end or out_of_time:
            checkpointer.save(step, state, force=True)
        if out_of_time:
            end = step
            if jax.process_index() == 0:
                print(
                    f"stopped at step {step} of {run.total_steps}: max_train_seconds="
                    f"{budget:g} reached (run again to resume)",
                    flush=True,
                )
            break
    checkpointer.wait()
    checkpointer.close()
    rate = logger.steady_images_per_sec()
    if rate and jax.process_index() == 0:
        print(f"trained to step {end}: {rate:.1f} images/s after compilation", flush=True)
    return state

"""The pre-training loop: set up a run from its config, restore or init, step, log, save."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shlex
import sys
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

from ssljax import config_checks, engine, files, perf, provenance, sharding
from ssljax.checkpoint import Checkpointer
from ssljax.data import pipeline, registry
from ssljax.errors import Preempted, TrainingDiverged, UserError
from ssljax.logger import MetricsLogger
from ssljax.methods.base import Method
from ssljax.optim import build_optimizer
from ssljax.preemption import PreemptionWatch
from ssljax.run import build_method, initial_rngs, load_config, load_run, read_json
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
    builder: Any = None  # the dataset's tfds builder, opened once here

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, sharding.REPLICATED)

    def rngs(self) -> tuple[jax.Array, jax.Array]:
        """(init rng, step rng), both from `config.seed`."""
        return initial_rngs(self.config)


def validate(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Reject impossible values with a message that says what to change."""
    config_checks.check(config)
    sharding.check_batch_size(config.batch_size, mesh)


def setup(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Run:
    mesh = sharding.make_mesh() if mesh is None else mesh
    validate(config, mesh)
    info, builder = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    steps_per_epoch = pipeline.train_steps_per_epoch(config, info, builder)
    total_steps = config.total_steps if config.total_steps > 0 else config.epochs * steps_per_epoch
    method = build_method(config, total_steps)
    tx, schedule = build_optimizer(
        config.optimizer, config.batch_size, steps_per_epoch, total_steps
    )
    num_classes = info.num_classes if config.online_probe else None
    size = config.dataset.image_size
    init = engine.make_init(method, tx, mesh, (size, size, 3), num_classes)
    return Run(
        config,
        mesh,
        info,
        method,
        tx,
        schedule,
        steps_per_epoch,
        total_steps,
        num_classes,
        init,
        builder,
    )


# Fields that control one invocation, not the experiment: a resumed run may change them.
RUN_CONTROL_FIELDS = ("max_train_seconds",)


def check_same_config(config: ml_collections.ConfigDict, workdir: Path) -> bool:
    """Whether `workdir` already holds config.json; a UserError if it differs from
    `config` (a resumed run must use the config it started with, `RUN_CONTROL_FIELDS`
    aside)."""
    path = workdir / "config.json"
    if not path.exists():
        return False
    current = json.loads(config.to_json_best_effort())
    differences = config_differences(read_json(path), current)
    if differences:
        raise UserError(
            f"{workdir} holds a run with a different config ({path}: "
            f"{'; '.join(differences[:5])}); resume it with the same config or choose a "
            "new --workdir"
        )
    return True


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Write `workdir/config.json` unless it is there (and the same: `check_same_config`)."""
    if check_same_config(config, workdir):
        return
    if jax.process_index() == 0:
        text = config.to_json_best_effort(indent=2, sort_keys=True)
        files.write_text(workdir / "config.json", text + "\n")


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """What keeps `current` from resuming a run saved with `saved`, as 'field: a → b'.

    `RUN_CONTROL_FIELDS` may change. A field absent from `saved` was added to ssljax after
    the run started; its default keeps the old behaviour (a rule for new fields), so it
    does not count. A field absent from `current` is one the method does not read (a
    config holds only its method's fields; older ssljax wrote every field for every
    method), so it does not count either.
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
    return differences


def restore_or_init(run: Run, checkpointer: Checkpointer, step: int | None = None) -> TrainState:
    """The state at `step` (default: the newest checkpoint that restores), or a fresh one."""
    init_rng, _ = run.rngs()
    if checkpointer.latest_step() is None:
        if step is not None:
            raise UserError(f"no checkpoint in {checkpointer.manager.directory}")
        return run.init(init_rng)
    if step is not None and step not in checkpointer.all_steps():
        raise UserError(f"no checkpoint for step {step}; saved: {checkpointer.all_steps()}")
    return checkpointer.restore(run.init, init_rng, run.replicated, step)


def load_frozen(method: Method) -> Any:
    """Host values of `TrainState.frozen` for a new run of `method` (None: keep `init`'s).

    The method names the run whose networks it keeps frozen and checks what it gets
    (`Method.frozen_source`, `.check_frozen_config`, `.frozen_from`); the run is loaded
    here, through `ssljax.run`, so that no method imports the loader or the trainer.
    Called once before a new run writes anything; never on resume, where the run's own
    checkpoint holds the frozen values.
    """
    source = method.frozen_source()
    if source is None:
        return None
    workdir, step = source
    method.check_frozen_config(load_config(workdir))
    return jax.device_get(method.frozen_from(load_run(workdir, step)))


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


def _check_workdir(workdir: Path) -> None:
    """Refuse a workdir that is a file or (locally) cannot be created or written."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir={workdir} is a file, not a directory; choose another --workdir")
    if "://" in str(workdir):
        return  # object stores: write permission shows on the first write
    existing = workdir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is a file" if not existing.is_dir() else "is not writable"
        raise UserError(
            f"cannot write to --workdir={workdir}: {existing} {reason}; choose a directory "
            "you can write to"
        )


def _hold(lock: files.WorkdirLock) -> None:
    """Take `lock` on process 0; every process raises the same UserError if another
    trainer holds it (process 0's message names that trainer)."""
    refusal = lock.acquire() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.array(refusal is not None))
        if bool(refused) and refusal is None:
            refusal = (
                f"--workdir={lock.workdir} is being trained by another process (process 0 "
                "names it); wait for it to end or choose another --workdir"
            )
    if refusal is not None:
        raise UserError(refusal)


def _prepare_workdir(
    workdir: Path, config: ml_collections.ConfigDict, lock: files.WorkdirLock
) -> None:
    """Create `workdir`, take its lock if the workdir is new, and write config.json: the
    first writes of a run."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        _hold(lock)  # a new workdir: another trainer may have created it meanwhile
        save_config(config, workdir)
    except OSError as e:
        raise UserError(
            f"cannot write to --workdir={workdir} ({e.strerror or e}); choose a directory "
            "you can write to"
        ) from None


class _NonFiniteWatch:
    """Counts the steps the engine skipped (non-finite loss or gradients).

    The step's `finite` flags stay on the device until `check` (at log and checkpoint
    steps) fetches them together, so watching costs no host round trip per step.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.limit = 1 if config.nonfinite == "stop" else config.nonfinite_max_skips
        self.policy = config.nonfinite
        self.pending: list[tuple[int, jax.Array, jax.Array]] = []
        self.streak, self.skipped, self.last_finite_loss = 0, 0, None
        self.last_finite_step = None

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics["finite"], metrics["loss"]))

    def check(self) -> int:
        """Skipped steps since the last check; raises TrainingDiverged past the limit."""
        values = jax.device_get([(finite, loss) for _, finite, loss in self.pending])
        steps = [step for step, _, _ in self.pending]
        self.pending = []
        skipped = 0
        for step, (finite, loss) in zip(steps, values):
            if finite:
                self.streak, self.last_finite_loss = 0, float(loss)
                self.last_finite_step = step
                continue
            skipped += 1
            self.streak += 1
            if self.streak >= self.limit:
                self._stop(step)
        self.skipped += skipped
        return skipped

    def _stop(self, step: int) -> None:
        last = (
            f"the last finite loss was {self.last_finite_loss:.4g} at step {self.last_finite_step}"
            if self.last_finite_loss is not None
            else "no step of this run had a finite loss"
        )
        rule = (
            "config.nonfinite='stop'"
            if self.policy == "stop"
            else f"{self.streak} consecutive skipped steps (config.nonfinite_max_skips)"
        )
        raise TrainingDiverged(
            f"training stopped at step {step}: the loss or the gradients are not finite "
            f"({rule}); {last}. The checkpoints hold the last finite weights. Try a lower "
            "--config.optimizer.base_lr, a longer --config.optimizer.warmup_epochs, or "
            "--config.model.dtype=float32"
        )


def train(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    mesh: Mesh | None = None,
    stop_at: int | None = None,
) -> TrainState:
    """Pre-train, resuming from the newest intact checkpoint in `workdir` if there is one.

    Everything is checked (config values, dataset, the first batch, the step's trace)
    before the first write to `workdir`, so a refused run leaves it as it was.

    `stop_at` ends the run early (after saving) as if it had been interrupted: tests use it
    to show that a resumed run continues exactly as an uninterrupted one.
    `config.max_train_seconds` > 0 does the same when this call has run that long (setup
    and compilation included): the last row of metrics.jsonl then has
    `stopped_by_time_limit` = 1, and running again resumes from that step.
    SIGTERM (or, with several processes, JAX's preemption notice) saves at the next step
    boundary, all processes at the same step, and raises `Preempted`. Too many
    non-finite steps in a row (`config.nonfinite`) raise `TrainingDiverged`. A workdir
    that another process is training is refused (`files.WorkdirLock`).
    """
    workdir = Path(workdir)
    _check_workdir(workdir)
    lock = files.WorkdirLock(workdir)
    _hold(lock)  # before anything reads the workdir: one trainer at a time
    try:
        return _train(config, workdir, mesh, stop_at, lock)
    finally:
        lock.release()


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mesh: Mesh | None,
    stop_at: int | None,
    lock: files.WorkdirLock,
) -> TrainState:
    budget = config.get("max_train_seconds", 0) or 0
    deadline = time.monotonic() + budget if budget > 0 else None
    run = setup(config, mesh)
    check_same_config(config, workdir)
    checkpoints = workdir / "checkpoints"
    checkpointer = None
    if checkpoints.exists():
        checkpointer = Checkpointer(checkpoints, keep=config.keep_checkpoints)
    resuming = checkpointer is not None and checkpointer.latest_step() is not None
    state = restore_or_init(run, checkpointer) if resuming else None
    start = int(jax.device_get(state.step)) if resuming else 0
    end = run.total_steps if stop_at is None else min(stop_at, run.total_steps)
    batches = pipeline.train_batches(config, start_step=start, dataset=(run.dataset, run.builder))
    if start < end:  # data errors before any write
        first = next(batches)
        batches = itertools.chain([first], batches)
    if not resuming:
        frozen = load_frozen(run.method)
        state = run.init(run.rngs()[0])
        if frozen is not None:
            state = state.replace(frozen=jax.device_put(frozen, run.replicated))
    _, step_rng = run.rngs()
    train_step = engine.make_train_step(run.method, run.tx, run.schedule, run.mesh, run.num_classes)
    if start < end:  # errors in tracing the step, too
        lowered = train_step.lower(state, sharding.global_batch(first, run.mesh), step_rng)

    _prepare_workdir(workdir, config, lock)
    provenance.record_start(workdir, start, list(run.mesh.devices.flat))
    if checkpointer is None:
        checkpointer = Checkpointer(checkpoints, keep=config.keep_checkpoints)
    checkpointer.set_aside_unreadable()
    if start:
        print(f"resuming from step {start} in {workdir}", flush=True)
    logger = MetricsLogger(
        workdir, run.total_steps, run.steps_per_epoch, config.batch_size, start_step=start
    )
    if start < end:  # compile once, explicitly, to read the step's FLOPs
        train_step = lowered.compile()
        logger.set_step_flops(perf.step_flops(train_step), config.model.dtype)
    nonfinite = _NonFiniteWatch(config)
    stop_reason = None
    with PreemptionWatch() as preemption:
        try:
            for step in range(start + 1, end + 1):
                with logger.waiting_for_data():
                    batch = sharding.global_batch(next(batches), run.mesh)
                state, metrics = train_step(state, batch, step_rng)
                nonfinite.add(step, metrics)
                if preemption.reached(step):
                    stop_reason = "preempted"
                elif _out_of_time(deadline, step, config.log_every_steps):
                    stop_reason = "time"
                stopping = stop_reason is not None or step == end
                log_now = step % config.log_every_steps == 0 or stopping
                save_now = step % config.checkpoint_every_steps == 0 or stopping
                if log_now or save_now:
                    skipped = nonfinite.check()
                    metrics = dict(metrics)
                    metrics.pop("finite")
                    if stop_reason == "time":
                        metrics["stopped_by_time_limit"] = 1.0
                    if skipped:
                        metrics["skipped_steps"] = float(skipped)
                        print(
                            f"warning: {skipped} step(s) up to step {step} had a non-finite "
                            f"loss or gradients and were skipped ({nonfinite.streak} in a row)",
                            flush=True,
                        )
                if log_now:
                    logger.log(step, metrics)
                if save_now:
                    checkpointer.save(step, state, force=True)
                if stop_reason is not None:
                    end = step
                    break
        finally:
            checkpointer.wait()
            checkpointer.close()
    if stop_reason == "preempted":
        command = "python " + shlex.join(sys.argv) if sys.argv[0].endswith(".py") else None
        how = f"resume with the same command: {command}" if command else "run again to resume"
        raise Preempted(f"preempted: saved step {end} of {run.total_steps} in {workdir}; {how}")
    if stop_reason == "time" and jax.process_index() == 0:
        print(
            f"stopped at step {end} of {run.total_steps}: max_train_seconds="
            f"{budget:g} reached (run again to resume)",
            flush=True,
        )
    rate = logger.steady_images_per_sec()
    if rate and jax.process_index() == 0:
        print(f"trained to step {end}: {rate:.1f} images/s after compilation", flush=True)
    return state

"""Orbax checkpoints of the TrainState: periodic, keep the newest N, resume from the last.

A checkpoint is the TrainState's fields by name. A field added to TrainState later (a new
method's state) is absent from older checkpoints; it restores as None when the run does
not use it, so adding a method never orphans existing runs.

A newest checkpoint that cannot be read (files cut short by a full disk or a kill
mid-copy) is skipped with a warning that names its step, and the newest intact one is
restored instead (`Checkpointer.restore`); only when none is intact does restoring stop.
The steps found unreadable are remembered for the process, so that `latest_step()` then
names the step actually restored.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils.epath import Path
from jax.sharding import NamedSharding

from ssljax.errors import UserError
from ssljax.train_state import TrainState

# Steps of a checkpoint directory that failed to restore in this process.
_UNREADABLE: dict[str, set[int]] = {}


def write_replicated_arrays_from_one_device() -> None:
    """Save each replicated jax.Array from its first device's copy (one CPU process).

    Orbax's default, replica-parallel writing, splits a replicated array into one slice per
    device so that several hosts share the writing. In one process on CPU it gains nothing,
    and every slice is an eager `lax.slice` that compiles once per shape: a ResNet-50 BYOL
    state's first save took 19.7 s with it and 2.0 s without (8 CPU devices;
    benchmarks/checkpoint_save.py). Checkpoints written either way restore the same.
    Several processes, and accelerators (where the slices spread the device-to-host
    copies over the chips; not measured), keep orbax's default.
    """
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(handler, "_use_replica_parallel", False):
        single = copy.copy(handler)
        single._use_replica_parallel = False
        ocp.type_handlers.register_type_handler(jax.Array, single, override=True)


class Checkpointer:
    """A thin layer over `ocp.CheckpointManager` that knows how to rebuild a TrainState."""

    def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True):
        if keep < 1:
            raise UserError(f"keep_checkpoints={keep} must be ≥ 1")
        if jax.process_count() == 1 and jax.default_backend() == "cpu":
            write_replicated_arrays_from_one_device()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )

    @property
    def _unreadable(self) -> set[int]:
        return _UNREADABLE.setdefault(str(self.directory), set())

    def latest_step(self) -> int | None:
        """The newest step not known to be unreadable."""
        steps = self.all_steps()
        return max(steps) if steps else None

    def all_steps(self) -> list[int]:
        return [s for s in self.manager.all_steps() if s not in self._unreadable]

    def save(self, step: int, state: TrainState, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(
        self,
        init: Callable[[jax.Array], TrainState],
        rng: jax.Array,
        sharding: NamedSharding,
        step: int | None = None,
    ) -> TrainState:
        """The state saved at `step`, laid out like `init(rng)`; by default the newest
        checkpoint that restores, skipping (with a warning) newer ones that do not."""
        if step is not None:
            return self._restore(init, rng, sharding, step)
        return self._newest_that_restores(lambda s: self._restore(init, rng, sharding, s))

    def _newest_that_restores(self, restore: Callable[[int], Any]) -> Any:
        """`restore(step)` of the newest step that restores, skipping (with a warning, and
        remembering them as unreadable) newer ones whose files are damaged."""
        failures = []
        while (newest := self.latest_step()) is not None:
            try:
                restored = restore(newest)
            except UserError:
                raise
            except Exception as e:  # orbax/tensorstore raise many kinds for damaged files
                self._unreadable.add(newest)
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e)
                failures.append(newest)
                print(
                    f"warning: the checkpoint at step {newest} in {self.directory} cannot be "
                    f"restored ({reason}); trying the next older one",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            if failures:
                print(
                    f"warning: restored step {newest} instead of the unreadable step(s) "
                    f"{', '.join(map(str, failures))}",
                    file=sys.stderr,
                    flush=True,
                )
            return restored
        raise UserError(
            f"no checkpoint in {self.directory} can be restored (unreadable: step(s) "
            f"{', '.join(map(str, failures))}); move the damaged step directories away to start "
            "over, or restore them from a copy"
        )

    def set_aside_unreadable(self) -> None:
        """Rename the step directories found unreadable to `<step>.unreadable` (process 0),
        so that the run can save those steps again; they are kept for inspection."""
        unreadable = sorted(self._unreadable & set(self.manager.all_steps()))
        if unreadable and jax.process_index() == 0:
            for step in unreadable:
                source = self.directory / str(step)
                target = self.directory / f"{step}.unreadable"
                if target.exists():
                    target.rmtree()
                source.rename(target)
        if unreadable:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("ssljax: unreadable checkpoints set aside")
            self.manager.reload()
            self._unreadable.difference_update(unreadable)

    def _restore(self, init, rng, sharding, step: int) -> TrainState:
        expected = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            jax.eval_shape(init, rng),
        )
        saved = set(self.manager.item_metadata(step).tree)
        fields = {f.name: getattr(expected, f.name) for f in dataclasses.fields(expected)}
        missing = sorted(name for name, value in fields.items() if name not in saved)
        if any(fields[name] is not None for name in missing):
            raise UserError(
                f"the checkpoint at step {step} has no {', '.join(missing)}, which this "
                "run's method needs: it was written by a different method or ssljax version"
            )
        abstract = {name: value for name, value in fields.items() if name in saved}
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return TrainState(**restored)

    def restore_as_saved(
        self, step: int | None, sharding: NamedSharding, skip: tuple[str, ...] = ()
    ) -> dict:
        """The fields saved at `step` but those in `skip`, with the shapes and dtypes they
        were saved with (no template: for loading a run without its optimiser or dataset).
        `step` None: the newest checkpoint that restores (as `restore`)."""
        if step is None:
            return self._newest_that_restores(lambda s: self.restore_as_saved(s, sharding, skip))
        tree = self.manager.item_metadata(step).tree
        item = {
            name: jax.tree_util.tree_map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), value
            )
            for name, value in tree.items()
            if name not in skip
        }
        args = ocp.args.PyTreeRestore(
            item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        )
        path = Path(self.manager.directory) / str(step) / "default"
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
            return checkpointer.restore(path, args=args)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

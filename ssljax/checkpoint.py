"""Orbax checkpoints of the TrainState: periodic, keep the newest N, resume from the last.

A checkpoint is the TrainState's fields by name. A field added to TrainState later (a new
method's state) is absent from older checkpoints; it restores as None when the run does
not use it, so adding a method never orphans existing runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import orbax.checkpoint as ocp
from etils.epath import Path
from jax.sharding import NamedSharding

from ssljax.errors import UserError
from ssljax.train_state import TrainState


class Checkpointer:
    """A thin layer over `ocp.CheckpointManager` that knows how to rebuild a TrainState."""

    def __init__(self, directory: str | Path, keep: int = 3, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
        )
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=options,
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(
        self,
        init: Callable[[jax.Array], TrainState],
        rng: jax.Array,
        sharding: NamedSharding,
        step: int | None = None,
    ) -> TrainState:
        """The state saved at `step` (the latest by default), laid out like `init(rng)`."""
        step = self.latest_step() if step is None else step
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
        self, step: int, sharding: NamedSharding, skip: tuple[str, ...] = ()
    ) -> dict:
        """The fields saved at `step` but those in `skip`, with the shapes and dtypes they
        were saved with (no template: for loading a run without its optimiser or dataset)."""
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

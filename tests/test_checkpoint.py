"""Checkpoints written before a TrainState field existed still restore."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssljax.checkpoint import Checkpointer
from ssljax.errors import UserError
from ssljax.train_state import TrainState


def _state(center=None):
    return TrainState(
        step=jnp.asarray(3, jnp.int32),
        params={"w": jnp.arange(4.0)},
        batch_stats={"mean": jnp.ones(2)},
        opt_state=(jnp.zeros(4),),
        center=center,
    )


def _save_without(directory, missing):
    """What an older ssljax wrote: the fields of its TrainState, `missing` not among them."""
    state = _state()
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    checkpointer = Checkpointer(directory, asynchronous=False)
    older = {name: value for name, value in fields.items() if name != missing}
    checkpointer.manager.save(3, args=ocp.args.StandardSave(older))
    checkpointer.wait()
    return state


def _replicated():
    return NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), PartitionSpec())


def test_a_field_added_since_restores_as_none_when_the_run_does_not_use_it(tmp_path):
    saved = _save_without(tmp_path / "ckpt", missing="center")
    restored = Checkpointer(tmp_path / "ckpt").restore(
        lambda rng: _state(), jax.random.key(0), _replicated()
    )
    assert restored.center is None and int(restored.step) == 3
    np.testing.assert_array_equal(restored.params["w"], saved.params["w"])
    np.testing.assert_array_equal(restored.opt_state[0], saved.opt_state[0])


def test_a_missing_field_the_run_needs_is_a_user_error(tmp_path):
    _save_without(tmp_path / "ckpt", missing="center")
    with pytest.raises(UserError, match="step 3 has no center"):
        Checkpointer(tmp_path / "ckpt").restore(
            lambda rng: _state(center=jnp.zeros(8)), jax.random.key(0), _replicated()
        )


def _damaged_pair(directory):
    """Checkpoints at steps 3 and 6; every file of step 6 cut in half."""
    checkpointer = Checkpointer(directory, asynchronous=False)
    checkpointer.save(3, _state())
    checkpointer.save(6, _state().replace(step=jnp.asarray(6, jnp.int32)))
    checkpointer.wait()
    for file in (directory / "6").rglob("*"):
        if file.is_file() and file.stat().st_size > 1:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    _damaged_pair(tmp_path / "ckpt")
    checkpointer = Checkpointer(tmp_path / "ckpt")
    restored = checkpointer.restore(lambda rng: _state(), jax.random.key(0), _replicated())
    assert int(restored.step) == 3
    assert "checkpoint at step 6" in capsys.readouterr().err
    assert checkpointer.latest_step() == 3  # what eval names its results after
    checkpointer.set_aside_unreadable()  # so that training can save step 6 again
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["3", "6.unreadable"]


def test_no_intact_checkpoint_is_one_clear_error(tmp_path):
    _damaged_pair(tmp_path / "ckpt")
    for file in (tmp_path / "ckpt" / "3").rglob("*"):
        if file.is_file() and file.stat().st_size > 1:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(UserError, match=r"no checkpoint .* can be restored .*step\(s\) 6, 3"):
        Checkpointer(tmp_path / "ckpt").restore(
            lambda rng: _state(), jax.random.key(0), _replicated()
        )


def test_keeping_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(UserError, match="keep_checkpoints=0"):
        Checkpointer(tmp_path / "ckpt", keep=0)


def test_one_process_writes_replicated_arrays_whole_and_reads_replica_parallel_ones(
    tmp_path, monkeypatch
):
    """Orbax by default writes a replicated array as one slice per device; in one process
    each slice is only an extra compiled `lax.slice`. Checkpoints written that way (every
    run saved before) still restore bit-exactly."""
    import orbax.checkpoint._src.serialization.replica_slices as replica_slices

    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    state = jax.device_put(
        _state().replace(params={"w": jnp.arange(64.0).reshape(8, 8)}), replicated
    )
    slices_per_array = []
    original = replica_slices.get_replica_slices

    def counting(arr, *args, **kwargs):
        result = original(arr, *args, **kwargs)
        slices_per_array.append(len(result.replica_slices))
        return result

    monkeypatch.setattr(replica_slices, "get_replica_slices", counting)
    default = ocp.type_handlers.get_type_handler(jax.Array)
    parallel = ocp.type_handlers.ArrayHandler(use_replica_parallel=True)
    ocp.type_handlers.register_type_handler(jax.Array, parallel, override=True)
    try:  # as orbax writes by default
        older = ocp.CheckpointManager(
            tmp_path / "older", item_handlers=ocp.StandardCheckpointHandler()
        )
        older.save(3, args=ocp.args.StandardSave(state))
        older.wait_until_finished()
    finally:
        ocp.type_handlers.register_type_handler(jax.Array, default, override=True)
    assert max(slices_per_array) == 8  # the 8×8 parameter went out in 8 slices

    slices_per_array.clear()
    checkpointer = Checkpointer(tmp_path / "ckpt", asynchronous=False)
    checkpointer.save(3, state)
    assert slices_per_array and set(slices_per_array) == {1}
    for directory in ("older", "ckpt"):
        restored = Checkpointer(tmp_path / directory).restore(
            lambda rng: _state().replace(params={"w": jnp.zeros((8, 8))}),
            jax.random.key(0),
            replicated,
        )
        np.testing.assert_array_equal(restored.params["w"], np.arange(64.0).reshape(8, 8))
        assert int(restored.step) == 3

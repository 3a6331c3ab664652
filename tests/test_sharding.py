import jax
import numpy as np
import pytest

from ssljax import sharding
from ssljax.errors import UserError


def test_mesh_has_one_data_axis_over_every_device():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == (sharding.DATA_AXIS,)
    assert mesh.devices.size == jax.device_count()


def test_batch_not_divisible_by_device_count_is_a_user_error():
    with pytest.raises(UserError, match="multiple of the 8 devices"):
        sharding.check_batch_size(12, sharding.make_mesh())


def test_global_batch_splits_rows_over_devices():
    mesh = sharding.make_mesh()
    batch = sharding.global_batch({"x": np.arange(16.0).reshape(16, 1)}, mesh)
    assert batch["x"].shape == (16, 1)
    rows = sorted(int(s.data.shape[0]) for s in batch["x"].addressable_shards)
    assert rows == [2] * 8
    np.testing.assert_array_equal(np.asarray(batch["x"]).ravel(), np.arange(16.0))

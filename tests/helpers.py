"""Pieces several test files share: random two-view batches and leaf-wise tree comparison.

The test files import it as `helpers` (pytest puts `tests/` on sys.path for them).
"""

import jax
import numpy as np


def two_view_batch(batch_size: int, size: int, seed: int = 0, num_classes: int = 10) -> dict:
    """{'view1', 'view2': uniform [B, size, size, 3] float32, 'label': [B] int32}."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, size, size, 3)
    return {
        "view1": rng.uniform(size=shape).astype(np.float32),
        "view2": rng.uniform(size=shape).astype(np.float32),
        "label": rng.integers(0, num_classes, size=(batch_size,)).astype(np.int32),
    }


def assert_trees_close(a, b, rtol: float, atol: float) -> None:
    """Same structure, and every leaf close; a failure names the leaf's path."""
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    flat_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for (path, x), y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))

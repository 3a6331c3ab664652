"""Pieces several test files share: random two-view batches, leaf-wise tree comparison,
local multi-process runs and a process that holds a workdir's lock.

The test files import it as `helpers` (pytest puts `tests/` on sys.path for them).
"""

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).parent.parent


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(worker: str, *args: str, count: int = 2) -> list[subprocess.Popen]:
    """`python tests/WORKER PROCESS_ID PORT *ARGS` for each of `count` processes on one
    free localhost port (the workers set their own device count); output is merged."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / worker), str(i), str(port), *map(str, args)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(count)
    ]


@contextlib.contextmanager
def holding_workdir_lock(workdir: Path, *marker: str) -> Iterator[subprocess.Popen]:
    """Another process holding `workdir`'s lock as a trainer does (`marker` goes on its
    command line); it is killed (SIGKILL) on exit, which must free the lock."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(workdir),
            *marker,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdin.close()
        holder.stdout.close()

"""Every test sees 8 simulated CPU devices; the flag must be set before jax is imported.

The suite runs in parallel (`pytest -n 2`, pytest-xdist). What the workers share is made
here, in the controlling process, before they start:
- one XLA compilation cache for the session (inherited by every worker and by every
  `python main.py` a test starts), so the tests that build the same program compile it
  once; it starts empty, as on a fresh machine, and is deleted at the end;
- Fashion-MNIST prepared once in the default tfds directory, so two workers never
  prepare it into the same place at once.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The tests' programs are tiny and run a few steps: XLA's optimisation passes cost more
# than they save (a smoke BYOL step compiles ~40% faster; results stay float32 noise apart).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

_WORKER = "PYTEST_XDIST_WORKER" in os.environ
if not _WORKER and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ssljax-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import tensorflow as tf  # noqa: E402

# tf.data must never grab an accelerator or fight jax for memory.
tf.config.set_visible_devices([], "GPU")

if not _WORKER:
    from ssljax.data import fashion_mnist, registry  # noqa: E402

    if fashion_mnist.debian_files_present():
        registry.get_dataset("fashion_mnist")

# The files whose tests take longest (compiled training steps, several processes) run
# first, so that with whole files per worker (`--dist loadfile`) no long file starts last.
_LONGEST_FIRST = (
    "test_train.py",
    "test_detcon.py",
    "test_sage.py",
    "test_multihost.py",
    "test_export.py",
    "test_backbones.py",
    "test_data.py",
    "test_engine.py",
    "test_dino.py",
    "test_masks.py",
    "test_cli.py",
    "test_run.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept

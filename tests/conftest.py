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

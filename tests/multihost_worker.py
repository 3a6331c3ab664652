"""One process of a 2-process run on localhost (used by tests/test_multihost.py).

python tests/multihost_worker.py PROCESS_ID PORT WORKDIR TOTAL_STEPS
"""

import os
import sys

# 4 devices a process; the test session's other flags (tests/conftest.py) are kept.
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
os.environ["XLA_FLAGS"] = " ".join([*_flags, "--xla_force_host_platform_device_count=4"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process_id: int, port: int, workdir: str, total_steps: int) -> None:
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
    )
    from pathlib import Path

    from ssljax import configlib, train
    from ssljax.errors import Preempted, UserError

    config = configlib.load(str(Path(__file__).parent.parent / "configs" / "byol.py:smoke"))
    config.total_steps = total_steps
    # Every step logged, so that the test can send SIGTERM mid-run; every checkpoint kept
    # (the test compares step 2's with one process's run).
    config.log_every_steps, config.checkpoint_every_steps = 1, 2
    config.keep_checkpoints = total_steps
    try:
        train.train(config, workdir)
    except Preempted as e:
        print(f"process {jax.process_index()}: {e}", flush=True)
    except UserError as e:
        print(f"process {jax.process_index()}: error: {e}", flush=True)
        sys.exit(2)
    print(f"process {jax.process_index()} of {jax.process_count()}: done", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:]))

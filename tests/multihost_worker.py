"""One process of a 2-process run on localhost (used by tests/test_multihost.py).

python tests/multihost_worker.py PROCESS_ID PORT WORKDIR
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process_id: int, port: int, workdir: str) -> None:
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
    )
    from pathlib import Path

    from ssljax import configlib, train

    config = configlib.load(str(Path(__file__).parent.parent / "configs" / "byol.py:smoke"))
    config.total_steps = 2
    config.checkpoint_every_steps = 2
    train.train(config, workdir)
    print(f"process {jax.process_index()} of {jax.process_count()}: done", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

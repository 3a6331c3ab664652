"""One process of a 2-process sharded evaluation on localhost (tests/test_bank.py).

python tests/multihost_eval_worker.py PROCESS_ID PORT

Prints `equal: knn BOOL linear BOOL ...`: the sharded k-NN predictions and linear accuracy
against the same computation on this process's first device, from the gathered features.
"""

import os
import sys

# 4 devices a process; the test session's other flags (tests/conftest.py) are kept.
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
os.environ["XLA_FLAGS"] = " ".join([*_flags, "--xla_force_host_platform_device_count=4"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process_id: int, port: int) -> None:
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
    )
    import dataclasses
    from pathlib import Path

    import numpy as np

    from ssljax import configlib, train
    from ssljax.eval import bank, knn, linear

    config = configlib.load(str(Path(__file__).parent.parent / "configs" / "byol.py:smoke"))
    config.eval.batch_size = 64
    run = train.setup(config)
    assert run.mesh.devices.size == 8 and jax.process_count() == 2
    memory = bank.extract(run, None, "train[:300]", raw_pixels=True)
    queries = bank.extract(run, None, "test[:100]", raw_pixels=True)
    assert len(memory.features.addressable_shards) == 4  # this host holds half the bank

    x, y, q = memory.to_numpy(), memory.ordered_labels(), queries.to_numpy()
    sharded = knn.predict(memory, queries, 200, 0.07, 10, chunk=32)
    single = knn.knn_predict(x, y, q, 200, 0.07, 10)
    recipe = dataclasses.replace(
        linear.get_protocol("moco", epochs=1), learning_rates=(0.01,), batch_size=64
    )
    params, _, _ = linear.select_and_train(memory, None, 10, recipe)
    reference, _, _ = linear.select_and_train(x, y, 10, recipe)
    on_bank = linear.accuracy(params, queries, None, 10, chunk=32)
    on_host = linear.accuracy(reference, q, queries.ordered_labels(), 10)
    knn_top1 = float(np.mean(sharded == queries.ordered_labels()))
    print(
        f"equal: knn {bool(np.array_equal(sharded, single))} linear {on_bank == on_host} "
        f"knn_top1 {knn_top1:.4f} linear_top1 {on_bank['top1']:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))

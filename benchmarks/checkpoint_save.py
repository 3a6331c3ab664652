"""Seconds of `Checkpointer.save` in one process: orbax's replica-parallel writing vs whole
arrays from one device (what ssljax does in a single process; `ssljax/checkpoint.py`).

    python benchmarks/checkpoint_save.py [--config=configs/byol.py:smoke] [--devices=8]
        [--model=resnet50]   # a full-width backbone in place of the config's

Each arm runs in a fresh process (the slices' compilations are per process): the
config's initial TrainState, replicated over `--devices` simulated CPU devices, saved
three times (synchronously, so that the whole write is timed). Prints one JSON line per
arm: the three save times, and the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def arm(config_spec: str, model: str | None, replica_parallel: bool) -> dict:
    import time

    import jax
    import orbax.checkpoint as ocp

    from ssljax import checkpoint, configlib, train

    config = configlib.load(config_spec)
    if model:
        config.model.name, config.model.width = model, 1.0
    run = train.setup(config)
    state = run.init(run.rngs()[0])
    jax.block_until_ready(state)
    if replica_parallel:  # orbax's default, kept however Checkpointer is configured
        checkpoint.write_replicated_arrays_from_one_device = lambda: None
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=True), override=True
        )
    seconds = []
    with tempfile.TemporaryDirectory() as directory:
        saver = checkpoint.Checkpointer(Path(directory) / "checkpoints", asynchronous=False)
        for step in (1, 2, 3):
            start = time.perf_counter()
            saver.save(step, state, force=True)
            saver.wait()
            seconds.append(round(time.perf_counter() - start, 2))
    mib = sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) / 2**20
    return {
        "arm": "orbax replica-parallel" if replica_parallel else "ssljax, one process",
        "config": config_spec,
        "model": f"{config.model.name} ×{config.model.width}",
        "devices": jax.device_count(),
        "state_mib": round(mib, 1),
        "save_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/byol.py:smoke")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--model", help="a backbone at full width, e.g. resnet50")
    parser.add_argument("--arm", choices=("parallel", "single"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # the child process
        print(json.dumps(arm(args.config, args.model, args.arm == "parallel")), flush=True)
        return
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(ROOT),
    )
    for name in ("parallel", "single"):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        child = subprocess.run(
            [sys.executable, __file__, f"--config={args.config}", f"--arm={name}"]
            + ([f"--model={args.model}"] if args.model else []),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:  # a bad --config or --model: the child's own last line
            lines = child.stderr.strip().splitlines() or ["(no output)"]
            print(f"error: the {name} arm failed: {lines[-1]}", file=sys.stderr)
            sys.exit(2)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result.update(cpus=os.cpu_count(), load_before=load)
        print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()

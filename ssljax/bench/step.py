"""`python -m ssljax.bench step`: the real train step on random data of a config's shapes.

Builds the method, optimiser and state exactly as training does (`engine.make_init`,
`engine.make_train_step`), compiles the step once on a random batch of the config's
views (two views, multi-crop, DetCon masks and ids), runs `warmup` steps, then times
`steps` steps one by one and reports their min and median with XLA's FLOP count.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ssljax import engine, perf, sharding
from ssljax.data import registry
from ssljax.methods import get_method
from ssljax.optim import build_optimizer

STEPS_PER_EPOCH = 1000  # only the LR and τ schedules read it; they do not change the cost


def random_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0) -> dict:
    """A batch with the shapes and dtypes `pipeline.train_batches` yields for `config`."""
    rng = np.random.default_rng(seed)
    size = config.dataset.image_size

    def images(*shape):
        return rng.random((batch_size, *shape), dtype=np.float32)

    if "multicrop" in config:
        mc = config.multicrop
        local = mc.local_size
        batch = {
            "global": images(mc.num_global, size, size, 3),
            "local": images(mc.num_local, local, local, 3),
            "pixel_scale_ratio": np.full((batch_size,), 2.0, np.float32),
        }
    else:
        batch = {"view1": images(size, size, 3), "view2": images(size, size, 3)}
    masks = config.get("masks")
    if masks is not None and masks.kind != "none":
        grid, samples = masks.grid, masks.num_samples
        segments = 6  # a typical count of FH segments owning a cell of a 7×7 grid
        for view in (1, 2):
            batch[f"mask{view}"] = rng.integers(0, segments, (batch_size, grid, grid), np.int32)
        ids = rng.integers(0, segments, (batch_size, samples), np.int32)
        batch["ids1"], batch["ids2"] = ids, ids.copy()
    info = registry.DATASETS.get(config.dataset.name)
    if info is not None and info.label_key is not None:
        classes = info.num_classes or 1
        batch["label"] = rng.integers(0, classes, (batch_size,), np.int32)
    return batch


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def benchmark_step(
    config: ml_collections.ConfigDict, steps: int = 10, warmup: int = 2, mesh=None
) -> dict[str, Any]:
    """Compile and time one train step of `config` on `mesh` (all devices by default);
    returns the figures as a dict."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    sharding.check_batch_size(config.batch_size, mesh)
    total_steps = config.total_steps if config.total_steps > 0 else config.epochs * STEPS_PER_EPOCH
    method = get_method(config.method)(config, total_steps)
    tx, schedule = build_optimizer(
        config.optimizer, config.batch_size, STEPS_PER_EPOCH, total_steps
    )
    info = registry.DATASETS.get(config.dataset.name)
    num_classes = info.num_classes if info is not None and config.online_probe else None
    size = config.dataset.image_size
    init = engine.make_init(method, tx, mesh, (size, size, 3), num_classes)
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state = init(init_rng)
    local = config.batch_size // jax.process_count()
    batch = sharding.global_batch(random_batch(config, local), mesh)
    train_step = engine.make_train_step(method, tx, schedule, mesh, num_classes)

    start = time.perf_counter()
    compiled = train_step.lower(state, batch, step_rng).compile()
    compile_seconds = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = compiled(state, batch, step_rng)
    jax.block_until_ready((state, metrics) if warmup else state)
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, batch, step_rng)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)

    devices = mesh.devices.size
    fastest, median = min(times), statistics.median(times)
    flops = perf.step_flops(compiled)
    device = mesh.devices.flat[0]
    peak, peak_source = perf.peak_flops(device, config.model.dtype)
    memory = compiled.memory_analysis()
    compiled_bytes = (
        memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        if memory is not None
        else None
    )
    return {
        "config": config.method + (f":{config.preset}" if config.preset else ""),
        "model": f"{config.model.name} x{config.model.width:g}",
        "image_size": size,
        "batch_size": config.batch_size,
        "devices": devices,
        "device_kind": device.device_kind,
        "steps": steps,
        "step_time_min_s": fastest,
        "step_time_median_s": median,
        # CPU seconds of this process per step: on a shared, loaded CPU the work done,
        # steadier than wall time (on an accelerator, host time only).
        "step_cpu_time_median_s": statistics.median(cpu_times),
        "images_per_sec": config.batch_size / median,
        "images_per_sec_per_device": config.batch_size / median / devices,
        "flops_per_step": flops * devices if flops else None,
        "flops_per_step_per_device": flops,
        "achieved_flops_per_sec_per_device": flops / median if flops else None,
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
        "mfu": perf.mfu(flops, median, peak),
        "peak_memory_bytes": perf.peak_memory_bytes(device),
        "compiled_memory_bytes": compiled_bytes,
        "compile_time_s": compile_seconds,
        "load_average": load_average(),
        "loss": float(np.asarray(metrics["loss"])),
    }

"""`python -m ssljax.bench step` reports sane figures; the peak table finds the devices."""

import math

import jax
import pytest

from ssljax import configlib, perf, sharding
from ssljax.bench.step import benchmark_step, random_batch


@pytest.fixture(scope="module")
def byol_smoke_step():
    config = configlib.load("configs/byol.py:smoke")
    # One ViT block compiles faster than a ResNet; the figures are alike.
    config.model.update(name="vit_tiny", depth=1, patch_size=8)
    return benchmark_step(config, steps=2, warmup=1, mesh=sharding.make_mesh(jax.devices()[:2]))


def test_step_benchmark_reports_every_field_with_a_sane_value(byol_smoke_step):
    r = byol_smoke_step
    assert r["config"] == "byol:smoke" and r["batch_size"] == 32 and r["devices"] == 2
    assert 0 < r["step_time_min_s"] <= r["step_time_median_s"] and r["step_cpu_time_median_s"] > 0
    assert r["images_per_sec"] == pytest.approx(32 / r["step_time_median_s"])
    assert r["images_per_sec_per_device"] == pytest.approx(r["images_per_sec"] / 2)
    # Per device: 4 images, two views through online and target ViT blocks at 32 px,
    # forward and backward: a few MFLOP, well under 10 GFLOP.
    assert 1e6 < r["flops_per_step_per_device"] < 1e10
    assert r["flops_per_step"] == pytest.approx(2 * r["flops_per_step_per_device"])
    assert r["achieved_flops_per_sec_per_device"] == pytest.approx(
        r["flops_per_step_per_device"] / r["step_time_median_s"]
    )
    assert r["peak_flops_per_device"] > 1e8 and "measured" in r["peak_source"]
    assert 0 < r["mfu"] < 10  # a measured CPU peak on a loaded machine is itself noisy
    assert r["peak_memory_bytes"] is None  # the CPU backend reports no device memory
    assert r["compiled_memory_bytes"] > 0 and r["compile_time_s"] > 0
    assert math.isfinite(r["loss"])


def test_random_batch_has_the_pipeline_shapes_for_detcon_and_multicrop():
    detcon = random_batch(configlib.load("configs/detcon_b.py:smoke"), 4)
    assert detcon["mask1"].shape == (4, 4, 4) and detcon["ids2"].shape == (4, 16)
    swav = configlib.load("configs/sslight_swav.py:smoke")
    crops = random_batch(swav, 4)
    mc = swav.multicrop
    assert crops["local"].shape == (4, mc.num_local, mc.local_size, mc.local_size, 3)
    assert crops["global"].shape[1] == mc.num_global and "view1" not in crops


@pytest.mark.parametrize(
    "kind, bf16",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v6 lite", 918e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
    ],
)
def test_peak_table_matches_device_kinds(kind, bf16):
    assert perf.lookup_peak(kind).bfloat16 == bf16


def test_unknown_device_has_no_peak_and_no_mfu():
    assert perf.lookup_peak("TPU v99") is None and perf.lookup_peak("Some GPU") is None
    assert perf.mfu(1e9, 1.0, None) is None

"""What a compiled step costs and how close it runs to the device's peak.

`step_flops` reads XLA's cost analysis of a compiled step (FLOPs of the per-device
program, a multiply-add counted as 2); `peak_flops` gives the device's dense matrix peak
from `PEAKS` (vendor figures, each with its source) or, on CPU, a measured matmul rate;
MFU = achieved FLOP/s ÷ peak, per device. Used by `python -m ssljax.bench` and the
training log (`mfu`, `images_per_sec_per_device`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Peak:
    """Dense matrix-unit FLOP/s of one JAX device (one chip, or one core where JAX shows
    each core as a device), for bfloat16 and float32 operands, and where they come from."""

    bfloat16: float
    float32: float
    source: str


_TPU_DOCS = "cloud.google.com/tpu/docs/"
# jax's `device_kind` → peak. TPU float32 matmuls run as bfloat16 passes at the default
# precision, so both entries carry the bfloat16 figure. GPU figures are dense (no
# sparsity), the SXM parts unless the kind names another; float32 is the non-tensor rate.
PEAKS: dict[str, Peak] = {
    "TPU v3": Peak(61.5e12, 61.5e12, _TPU_DOCS + "v3: 123 TFLOP/s bf16 per chip, 2 cores"),
    "TPU v4": Peak(275e12, 275e12, _TPU_DOCS + "v4: 275 TFLOP/s bf16 per chip"),
    "TPU v5 lite": Peak(197e12, 197e12, _TPU_DOCS + "v5e: 197 TFLOP/s bf16 per chip"),
    "TPU v5e": Peak(197e12, 197e12, _TPU_DOCS + "v5e: 197 TFLOP/s bf16 per chip"),
    "TPU v5": Peak(459e12, 459e12, _TPU_DOCS + "v5p: 459 TFLOP/s bf16 per chip"),
    "TPU v5p": Peak(459e12, 459e12, _TPU_DOCS + "v5p: 459 TFLOP/s bf16 per chip"),
    "TPU v6 lite": Peak(918e12, 918e12, _TPU_DOCS + "v6e: 918 TFLOP/s bf16 per chip"),
    "TPU v6e": Peak(918e12, 918e12, _TPU_DOCS + "v6e: 918 TFLOP/s bf16 per chip"),
    "V100": Peak(125e12, 15.7e12, "NVIDIA V100 datasheet: 125 TFLOP/s fp16 tensor, 15.7 fp32"),
    "A100": Peak(312e12, 19.5e12, "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense, 19.5 fp32"),
    "A10": Peak(125e12, 31.2e12, "NVIDIA A10 datasheet: 125 TFLOP/s bf16 dense, 31.2 fp32"),
    "L4": Peak(121e12, 30.3e12, "NVIDIA L4 datasheet: 121 TFLOP/s bf16 dense, 30.3 fp32"),
    "H100 PCIe": Peak(756e12, 51.2e12, "NVIDIA H100 datasheet: PCIe 756 TFLOP/s bf16 dense"),
    "H100": Peak(989e12, 66.9e12, "NVIDIA H100 datasheet: SXM 989 TFLOP/s bf16 dense, 67 fp32"),
}


def lookup_peak(device_kind: str) -> Peak | None:
    """The `PEAKS` entry for a device kind; the longest matching name wins
    ('TPU v5 lite' before 'TPU v5', 'H100 PCIe' before 'H100')."""
    kind = device_kind.strip()
    if kind.startswith("TPU"):
        return PEAKS.get(kind)
    names = sorted((n for n in PEAKS if not n.startswith("TPU") and n in kind), key=len)
    return PEAKS[names[-1]] if names else None


@functools.cache
def measured_matmul_peak(size: int = 1024, repeats: int = 5) -> float:
    """The best float32 FLOP/s of a jitted size³ matmul on the default device (CPU's
    "peak": the rate its matmul library reaches, not a datasheet figure)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_flops(device: Any = None, dtype: str = "float32") -> tuple[float | None, str]:
    """(peak FLOP/s of one device for `dtype` operands, its source); (None, why) when
    the device is not in `PEAKS`."""
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        return measured_matmul_peak(), "measured: best float32 1024³ jnp matmul on this CPU"
    peak = lookup_peak(device.device_kind)
    if peak is None:
        return None, f"no peak figure for {device.device_kind!r} in ssljax.perf.PEAKS"
    value = peak.bfloat16 if dtype == "bfloat16" else peak.float32
    return value, peak.source


def step_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled (per-device, after partitioning) program, from XLA's
    cost analysis; None where the backend gives none."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def mfu(flops_per_device: float | None, seconds: float, peak: float | None) -> float | None:
    """Model FLOP utilisation: (FLOPs per device / seconds) / peak FLOP/s per device."""
    if not flops_per_device or not peak or seconds <= 0:
        return None
    return flops_per_device / seconds / peak


def peak_memory_bytes(device: Any = None) -> int | None:
    """The device's peak bytes in use so far, where the backend reports it (GPU, TPU);
    None on CPU."""
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None

"""Where a run reports: `metrics.jsonl`, TensorBoard, and one progress line per log step."""

from __future__ import annotations

import contextlib
import sys
import time

import jax
import numpy as np
from etils.epath import Path

from ssljax import files


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class MetricsLogger:
    """Writes metrics from process 0 only; measures img/s between calls.

    Each row also has `images_per_sec_per_device`, `data_wait_fraction` (the share of the
    interval the loop spent blocked on the input pipeline, timed by `waiting_for_data`)
    and, once `set_step_flops` has the compiled step's FLOPs, `mfu` (`ssljax.perf`).

    On resume, rows logged after the restored checkpoint (by a run that died before its
    next checkpoint) are dropped, so `metrics.jsonl` reads as one uninterrupted run; so is
    a last line cut off by a kill (with a warning). Rows are appended (`ssljax.files`).
    """

    def __init__(
        self,
        workdir: Path,
        total_steps: int,
        steps_per_epoch: int,
        batch_size: int,
        start_step: int = 0,
    ):
        self.enabled = jax.process_index() == 0
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.batch_size = batch_size
        self.path = Path(workdir) / "metrics.jsonl"
        self._last_time, self._last_step = time.perf_counter(), start_step
        self._start_time, self._start_step = self._last_time, start_step
        self._steady_images, self._steady_seconds = 0, 0.0
        self._writer, self._rows = None, []
        self._data_wait, self._step_flops, self._peak = 0.0, None, None
        if not self.enabled:
            return
        if self.path.exists():
            rows = files.read_jsonl(self.path)
            self._rows = [r for r in rows if r.get("step", 0) <= start_step]
            files.write_jsonl(self.path, self._rows)
        if start_step and not self._rows:
            print(
                f"warning: {self.path} has no rows up to step {start_step} (missing or "
                "emptied): its history restarts here",
                file=sys.stderr,
            )
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(str(Path(workdir) / "tensorboard"))

    @contextlib.contextmanager
    def waiting_for_data(self):
        """Time the block as waiting for input (`data_wait_fraction`)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._data_wait += time.perf_counter() - start

    def set_step_flops(self, flops_per_device: float | None, dtype: str = "float32") -> None:
        """FLOPs of one step per device (XLA cost analysis of the compiled step), for `mfu`."""
        from ssljax import perf

        self._step_flops = flops_per_device
        self._peak = perf.peak_flops(jax.devices()[0], dtype)[0] if flops_per_device else None

    def log(self, step: int, metrics: dict) -> dict:
        """Record `metrics` (device scalars) for `step`; returns the row written."""
        metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        images = (step - self._last_step) * self.batch_size
        seconds = max(now - self._last_time, 1e-9)
        if self._last_step > self._start_step:  # the first interval includes compilation
            self._steady_images += images
            self._steady_seconds += seconds
        row = {
            "step": step,
            "epoch": step / max(self.steps_per_epoch, 1),
            **metrics,
            "images_per_sec": images / seconds,
            "images_per_sec_per_device": images / seconds / jax.device_count(),
            "data_wait_fraction": min(self._data_wait / seconds, 1.0),
            "elapsed_sec": now - self._start_time,
        }
        if self._step_flops and self._peak:
            row["mfu"] = self._step_flops * (step - self._last_step) / seconds / self._peak
        self._data_wait = 0.0
        self._last_time, self._last_step = now, step
        if self.enabled:
            self._rows.append(row)
            files.append_jsonl(self.path, row, self._rows)
            with self._writer.as_default(step=step):
                import tensorflow as tf

                for name, value in row.items():
                    if name not in ("step",):
                        tf.summary.scalar(name, value)
            self._writer.flush()
            self._print(row)
        return row

    def _print(self, row: dict) -> None:
        rate = row["images_per_sec"]
        eta = (self.total_steps - row["step"]) * self.batch_size / max(rate, 1e-9)
        extra = f" | top1 {row['online_top1']:.3f}" if "online_top1" in row else ""
        print(
            f"step {row['step']}/{self.total_steps} (epoch {row['epoch']:.2f}) | "
            f"loss {row['loss']:.4f}{extra} | lr {row['lr']:.3g} | "
            f"{rate:.0f} img/s | data wait {row['data_wait_fraction']:.0%} | "
            f"ETA {_format_seconds(eta)}",
            flush=True,
        )

    def steady_images_per_sec(self) -> float | None:
        """Throughput after the first (compiling) log interval, or None if too short."""
        return self._steady_images / self._steady_seconds if self._steady_seconds else None

"""Preemption: SIGTERM (what a spot or preemptible VM gets) asks training to stop cleanly.

With one process, a SIGTERM handler records the request and the loop saves at the next
step boundary. With several (`jax.distributed`), JAX's preemption service (it also listens
for SIGTERM, and for the scheduler's notices) agrees on one step for all hosts:
`multihost_utils.reached_preemption_sync_point(step)` turns true on every host at that
same step, so all save the same checkpoint — the protocol orbax's CheckpointManager
uses for its own preemption saves.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`with PreemptionWatch() as watch: ... if watch.reached(step): save and stop`.

    `reached` must be called at every step by every process (a local check, no device
    transfer). The previous SIGTERM handler is put back on exit.
    """

    def __init__(self):
        self.signalled = False
        self._previous = None

    def __enter__(self) -> PreemptionWatch:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        self.signalled = True

    def reached(self, step: int) -> bool:
        """Whether to save at `step` and stop."""
        if jax.process_count() == 1:
            return self.signalled
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is disabled (jax config)
            return False

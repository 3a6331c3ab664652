"""The one explicit value a run carries from step to step."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes; a checkpoint is exactly this value.

    Fields a method does not use stay None (an empty pytree). Each collection lives in its
    own field so that it is obvious what the optimiser touches (`params` only) and what is
    moved by other rules: EMA targets, running statistics, queues.
    """

    step: jax.Array
    params: Any  # online network and heads, incl. the online probe: the optimiser's parameters
    batch_stats: Any  # running BN statistics of the online network
    opt_state: Any
    target_params: Any = None  # EMA (BYOL/DetCon_B/M²T/SaGe) or momentum key encoder (MoCo)
    target_batch_stats: Any = None  # the target's own running BN statistics
    queue: Any = None  # MoCo / SwAV: replicated on every device
    momentum_stats: Any = None  # Momentum² Teacher: running stats of Momentum BN
    frozen: Any = None  # networks never trained, loaded at the start: SaGe's evaluator h_G
    center: Any = None  # DINO: running mean of the teacher's outputs, pmean'd in the loss

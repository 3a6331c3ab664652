"""Range and choice checks of config values, run before a run writes anything.

Each rule names a field (dotted), what it must be, and the test; a field a config does not
have (another method's) is skipped. Types are already enforced by `ml_collections` when a
flag overrides a field; these rules catch values of the right type that cannot work
(`total_steps=-5`, `tau_base=2.0`, `keep_checkpoints=0`, `model.dtype=float8`). Checks that
need the dataset or the devices (splits, batch divisibility) run in `train.setup`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_collections

from ssljax.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("skip", "stop")


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def positive_int(x) -> bool:
    return _int(x) and x > 0


def nonnegative_int(x) -> bool:
    return _int(x) and x >= 0


def positive(x) -> bool:
    return _number(x) and x > 0


def nonnegative(x) -> bool:
    return _number(x) and x >= 0


def probability(x) -> bool:
    return _number(x) and 0 <= x <= 1


def fraction(x) -> bool:
    """In (0, 1]."""
    return _number(x) and 0 < x <= 1


def one_of(*choices) -> Callable[[Any], bool]:
    return lambda x: x in choices


def optional(check):
    return lambda x: x is None or check(x)


def each(check, length: int | None = None):
    def test(x):
        return (
            isinstance(x, list | tuple)
            and (length is None or len(x) == length)
            and all(check(v) for v in x)
        )

    return test


def _augment_presets():
    from ssljax.data.augment import PRESETS

    return tuple(PRESETS)


# (field, what it must be, test)
RULES: list[tuple[str, str, Callable[[Any], bool]]] = [
    ("seed", "an integer", _int),
    ("batch_size", "a positive integer", positive_int),
    ("epochs", "an integer ≥ 0", nonnegative_int),
    ("total_steps", "an integer ≥ 0 (0: use epochs)", nonnegative_int),
    ("dataset.image_size", "an integer ≥ 8", lambda x: _int(x) and x >= 8),
    ("dataset.shuffle_buffer", "a positive integer", positive_int),
    ("augment.s_min", "in (0, 1]", optional(fraction)),
    ("augment.p_blur", "two probabilities (view 1, view 2)", optional(each(probability, 2))),
    ("augment.p_solarize", "two probabilities (view 1, view 2)", optional(each(probability, 2))),
    ("model.width", "positive", positive),
    ("model.dtype", f"one of {', '.join(DTYPES)}", one_of(*DTYPES)),
    ("model.bn_momentum", "in [0, 1]", probability),
    ("model.patch_size", "a positive integer", positive_int),
    ("model.depth", "an integer ≥ 0 (0: the model's own)", nonnegative_int),
    ("model.drop_path_rate", "in [0, 1)", lambda x: _number(x) and 0 <= x < 1),
    ("projector.hidden_dims", "positive integers", each(positive_int)),
    ("projector.out_dim", "a positive integer", positive_int),
    ("predictor.hidden_dims", "positive integers", each(positive_int)),
    ("predictor.out_dim", "a positive integer", positive_int),
    ("tau_base", "in [0, 1]", probability),
    ("tau_schedule", "'cosine' or 'constant'", one_of("cosine", "constant")),
    ("alpha_base", "in [0, 1]", probability),
    ("alpha_schedule", "'cosine' or 'constant'", one_of("cosine", "constant")),
    ("temperature", "positive", positive),
    ("optimizer.base_lr", "a number ≥ 0", nonnegative),
    ("optimizer.weight_decay", "a number ≥ 0", nonnegative),
    ("optimizer.momentum", "in [0, 1]", probability),
    ("optimizer.warmup_epochs", "a number ≥ 0", nonnegative),
    ("optimizer.schedule", "cosine, steps or constant", one_of("cosine", "steps", "constant")),
    ("optimizer.decay_at", "fractions of training in (0, 1]", each(fraction)),
    ("optimizer.decay_factor", "positive", positive),
    ("masks.num_samples", "a positive integer", positive_int),
    ("masks.grid", "a positive integer", positive_int),
    ("moco.queue_size", "a positive integer", positive_int),
    ("dino.center_momentum", "in [0, 1]", probability),
    ("dino.student_temperature", "positive", positive),
    ("dino.teacher_temperature", "positive", positive),
    ("dino.warmup_teacher_temperature", "positive", positive),
    ("swav.temperature", "positive", positive),
    ("swav.epsilon", "positive", positive),
    ("swav.sinkhorn_iterations", "a positive integer", positive_int),
    ("swav.num_prototypes", "a positive integer", positive_int),
    ("multicrop.num_global", "a positive integer", positive_int),
    ("multicrop.num_local", "an integer ≥ 0", nonnegative_int),
    ("multicrop.global_min_scale", "in (0, 1]", fraction),
    ("multicrop.local_min_scale", "in (0, 1]", fraction),
    ("multicrop.local_max_scale", "in (0, 1]", fraction),
    ("log_every_steps", "a positive integer", positive_int),
    ("checkpoint_every_steps", "a positive integer", positive_int),
    ("keep_checkpoints", "a positive integer (checkpoints kept)", positive_int),
    ("max_train_seconds", "a number ≥ 0 (0: no limit)", nonnegative),
    ("nonfinite", f"one of {', '.join(NONFINITE_POLICIES)}", one_of(*NONFINITE_POLICIES)),
    ("nonfinite_max_skips", "a positive integer", positive_int),
    ("eval.batch_size", "a positive integer", positive_int),
    ("eval.knn_k", "a positive integer", positive_int),
    ("eval.knn_temperature", "positive", positive),
]

_MISSING = object()


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for name in dotted.split("."):
        if not isinstance(value, ml_collections.ConfigDict) or name not in value:
            return _MISSING
        value = value[name]
    return value


def check(config: ml_collections.ConfigDict) -> None:
    """Raise a UserError naming every field whose value cannot work."""
    problems = []
    for field, must_be, test in RULES:
        value = _get(config, field)
        if value is _MISSING:
            continue
        if not test(value):
            problems.append(f"--config.{field}={value!r}: must be {must_be}")
    preset = _get(config, "augment.preset")
    if preset is not _MISSING and preset not in _augment_presets():
        choices = ", ".join(_augment_presets())
        problems.append(f"--config.augment.preset={preset!r}: must be one of {choices}")
    if not problems:
        total, epochs = _get(config, "total_steps"), _get(config, "epochs")
        if total == 0 and epochs == 0:
            problems.append("epochs and total_steps are both 0: set one to a positive number")
    if problems:
        raise UserError("; ".join(problems))

"""Pre-train with ssljax.

    python main.py --config=configs/byol.py:fashion_mnist --workdir=runs/byol_fm
    python main.py --config=configs/byol.py --workdir=gs://bucket/byol --config.batch_size=4096

Running again with the same --workdir resumes from its newest checkpoint. Presets follow
the colon (`imagenet` when none is given); `--config.FIELD=VALUE` overrides any field.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with a preset: configs/byol.py:fashion_mnist",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU pods)."
)
flags.mark_flags_as_required(["config", "workdir"])


def _unknown_field_message(argv, error: KeyError) -> str:
    """'unknown config field X: METHOD does not read it', naming the config's method."""
    import re

    field = re.sub(r"[^\w.]", "", str(error.args[0] if error.args else error))
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    try:
        from ssljax import configlib

        method = configlib.load(spec).method if spec else None
    except Exception:  # the config file itself is broken: say only what is known
        method = None
    if not method:
        return f"unknown config field {field!r} (see the config file for the fields)"
    return (
        f"unknown config field {field!r}: the {method} method does not read it "
        f"({spec.partition(':')[0]} holds every field it reads)"
    )


USAGE = "usage: main.py --config=CONFIG[:PRESET] --workdir=DIR [--config.FIELD=VALUE ...]"


def _refuse(message: str) -> None:
    print(f"error: {message}\n{USAGE}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl's parser, but a bad flag, config key or preset is one line, not a traceback."""
    from ssljax.errors import UserError

    try:
        rest = flags.FLAGS(argv)
    except Exception as e:  # anything raised while loading and overriding the config
        cause = e.__cause__ or e.__context__ or e
        if isinstance(cause, UserError):
            message = str(cause)
        elif isinstance(cause, KeyError):
            message = _unknown_field_message(argv, cause)
        elif isinstance(e, flags.Error):
            message = str(e).splitlines()[0]
        else:
            message = f"{cause}"
        _refuse(message)
    if len(rest) > 1:
        _refuse(f"unexpected argument(s) {' '.join(rest[1:])}: every option is --name=value")
    return rest


def _loaded_config():
    """The --config value; a config file that failed to load is refused in one line
    (config_flags reports it only when the config is first used)."""
    config = _CONFIG.value
    try:
        config.get("method")
    except OSError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        _refuse(
            f"cannot load --config={flags.FLAGS['config'].serialize().partition('=')[2]}: "
            f"{lines[-1]}"
        )
    return config


def main(argv):
    from absl import logging

    from ssljax.errors import Preempted, TrainingDiverged, UserError

    logging.set_verbosity(logging.WARNING)  # tfds and orbax are chatty at INFO

    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # tf.data only; leave accelerators to jax
        import jax

        if _DISTRIBUTED.value:
            jax.distributed.initialize()
        from ssljax import train

        config = _loaded_config()
        train.train(config, _WORKDIR.value)
        if config.eval.get("knn_after_training", False):
            from ssljax.eval import knn

            knn.report_against_random_init(_WORKDIR.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Preempted as e:
        print(e, flush=True)
        sys.exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

"""Benchmarks that print one JSON line.

    python -m ssljax.bench step --config=configs/byol.py:fashion_mnist [--steps 10]
        [--batch-size 64] [--config.FIELD=VALUE ...]
    python -m ssljax.bench pipeline --config=configs/detcon_b.py [--batches 20]
        [--batch-size 64] [--config.FIELD=VALUE ...]

`step` times the compiled train step on random data (ssljax.bench.step); `pipeline` the
tf.data input pipeline alone on mock ImageNet-sized JPEGs (ssljax.bench.pipeline).
docs/performance.md explains the fields and holds the measured tables.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

COMMANDS = ("step", "pipeline")
USAGE = (
    "usage: python -m ssljax.bench {step|pipeline} --config=CONFIG[:PRESET] "
    "[--steps N] [--batch-size B] [--config.FIELD=VALUE ...]"
)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/byol.py:fashion_mnist"
)
_STEPS = flags.DEFINE_integer("steps", 10, "step: timed steps after the warm-up.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "step: untimed steps after compilation.")
_BATCHES = flags.DEFINE_integer("batches", 20, "pipeline: timed batches after the first.")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", None, "Global batch (overrides the config's).")
_MASK_CACHE = flags.DEFINE_enum(
    "mask-cache", "both", ["both", "with", "without"],
    "pipeline, DetCon: read FH masks from a cache, compute them in tf.data, or both.",
)  # fmt: skip
_IMAGES = flags.DEFINE_integer("images", 512, "pipeline: mock JPEGs in the dataset.")


def parse_flags(argv):
    """absl's parser; a bad flag, config key or preset is one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:
        cause = e.__cause__ or e.__context__ or e
        if isinstance(cause, KeyError):
            message = f"unknown config field {cause} (see the config file for the fields)"
        elif isinstance(e, flags.Error):
            message = str(e)
        else:
            message = f"{type(cause).__name__}: {cause}"
        print(f"error: {message}\n{USAGE}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    from ssljax.errors import UserError

    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(f"error: name one command, step or pipeline\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if _CONFIG.value is None:
        print(f"error: --config is required\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        config = _CONFIG.value
        if _BATCH_SIZE.value is not None:
            config.batch_size = _BATCH_SIZE.value
        if argv[1] == "step":
            from ssljax.bench.step import benchmark_step

            result = benchmark_step(config, steps=_STEPS.value, warmup=_WARMUP.value)
            print(json.dumps(result), flush=True)
        else:
            from ssljax.bench.pipeline import benchmark_pipeline

            for result in benchmark_pipeline(
                config, batches=_BATCHES.value, mask_cache=_MASK_CACHE.value,
                num_images=_IMAGES.value,
            ):  # fmt: skip
                print(json.dumps(result), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

"""python -m ssljax.eval knn --workdir=DIR [--checkpoint=STEP] [--random-init] [--raw-pixels]
python -m ssljax.eval linear --workdir=DIR [--protocol=moco|byol] [--epochs=N] [--random-init]"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ssljax.eval", description=__doc__)
    sub = parser.add_subparsers(dest="protocol", required=True)
    knn = sub.add_parser("knn", help="weighted k-NN (20-NN, cosine, T = 0.07)")
    knn.add_argument("--workdir", required=True, help="the --workdir of a training run")
    knn.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    knn.add_argument("--dataset", default=None, help="evaluate on another dataset")
    knn.add_argument("--random-init", action="store_true",
                     help="the untrained network of the same config (the baseline)")
    knn.add_argument("--raw-pixels", action="store_true",
                     help="k-NN on the flattened eval images instead of features")
    knn.add_argument("--distributed", action="store_true",
                     help="call jax.distributed.initialize() first (multi-host pods)")
    linear = sub.add_parser("linear", help="linear classifier on frozen features")
    linear.add_argument("--workdir", required=True, help="the --workdir of a training run")
    linear.add_argument("--protocol", dest="linear_protocol", default="moco",
                        choices=("moco", "byol"),
                        help="moco: SGD lr 30, 100 epochs, x0.1 at 60%%/80%%; byol: Nesterov, "
                             "80 epochs cosine, lr swept on held-out train images")
    linear.add_argument("--epochs", type=int, default=None,
                        help="override the protocol's epochs (quick runs)")
    linear.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    linear.add_argument("--dataset", default=None, help="evaluate on another dataset")
    linear.add_argument("--random-init", action="store_true",
                        help="the untrained network of the same config (the baseline)")
    linear.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host pods)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from ssljax.errors import UserError

    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        if args.distributed:
            import jax

            jax.distributed.initialize()
        if args.protocol == "knn":
            from ssljax.eval import knn

            result = knn.evaluate(args.workdir, args.checkpoint, args.random_init,
                                  args.raw_pixels, args.dataset)
        elif args.protocol == "linear":
            from ssljax.eval import linear

            result = linear.evaluate(args.workdir, args.linear_protocol, args.checkpoint,
                                     args.random_init, args.dataset, args.epochs)
        print(json.dumps(result))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Evaluate a pre-trained encoder; prints one JSON line and writes DIR/eval/NAME.json.

    python -m ssljax.eval knn --workdir=DIR [--raw-pixels]
    python -m ssljax.eval linear --workdir=DIR [--protocol=moco|byol] [--epochs=N] [--raw-pixels]
    python -m ssljax.eval semi --workdir=DIR --fraction=0.01|0.1 [--epochs=N] [--batch-size=B]
    python -m ssljax.eval perceptual --workdir=DIR [...]

Every subcommand also takes --checkpoint=STEP (default: the newest), --dataset=NAME
(evaluate on another registered dataset), --random-init (the untrained network of the
same config: the baseline) and --distributed (multi-host pods); knn, linear and semi take
--network=online|target (default: the network the method's paper evaluates: the teacher
for DINO and Momentum² Teacher, the online/query encoder otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SUBCOMMANDS = {
    "knn": "weighted k-NN top-1 (20-NN and 200-NN, cosine, T = 0.07)",
    "linear": "linear classifier on frozen, average-pooled features (top-1/top-5)",
    "semi": "fine-tune encoder + linear head on a class-balanced 1%% or 10%% subset",
    "perceptual": "SaGe's perceptual test: classify reconstructions of held-out images",
}


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the --workdir of a training run")
    parser.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    parser.add_argument("--dataset", default=None, help="evaluate on another dataset")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="the untrained network of the same config (the baseline)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host pods)",
    )


def _network_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network",
        choices=("online", "target"),
        default=None,
        help="which encoder: online (student, MoCo's query) or target (EMA/teacher/key); "
        "default: the one the method's paper evaluates",
    )


def _perceptual_module(parser: argparse.ArgumentParser):
    """`ssljax.eval.perceptual`, imported only when its subcommand is asked for."""
    import importlib

    try:
        return importlib.import_module("ssljax.eval.perceptual")
    except ModuleNotFoundError as e:
        if e.name != "ssljax.eval.perceptual":
            parser.exit(2, f"error: the perceptual test needs {e.name}: {e}\n")
        parser.exit(
            2,
            "error: the perceptual test is not available in this version "
            "(ssljax/eval/perceptual.py is missing)\n",
        )


def parse_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m ssljax.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="protocol", required=True)
    commands = {name: sub.add_parser(name, help=text) for name, text in SUBCOMMANDS.items()}
    for command in commands.values():
        _common_arguments(command)

    for name in ("knn", "linear", "semi"):
        _network_argument(commands[name])

    knn = commands["knn"]
    knn.add_argument(
        "--raw-pixels",
        action="store_true",
        help="k-NN on the flattened eval images instead of features",
    )

    linear = commands["linear"]
    linear.add_argument(
        "--protocol",
        dest="linear_protocol",
        default="moco",
        choices=("moco", "byol"),
        help="moco: SGD lr 30, 100 epochs, x0.1 at 60%%/80%%; byol: Nesterov, "
        "80 epochs cosine, lr swept on held-out train images",
    )
    linear.add_argument(
        "--epochs", type=int, default=None, help="override the protocol's epochs (quick runs)"
    )
    linear.add_argument(
        "--raw-pixels",
        action="store_true",
        help="the classifier on the flattened eval images instead of features",
    )

    semi = commands["semi"]
    semi.add_argument(
        "--fraction",
        type=float,
        default=0.01,
        help="labelled share of the training split: 0.01 (60 epochs) or 0.1 (30 epochs)",
    )
    semi.add_argument("--epochs", type=int, default=None, help="override the epochs")
    semi.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch (default 4096 on imagenet2012, else 256; LR = 0.05 x B/256)",
    )
    semi.add_argument(
        "--seed", type=int, default=0, help="which subset (and head init, data order)"
    )

    if argv and argv[0] == "perceptual":
        _perceptual_module(parser).add_arguments(commands["perceptual"])
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """The result of the evaluation `args` names (also written to DIR/eval/)."""
    if args.protocol == "knn":
        from ssljax.eval import knn

        return knn.evaluate(
            args.workdir,
            args.checkpoint,
            args.random_init,
            args.raw_pixels,
            args.dataset,
            network=args.network,
        )
    if args.protocol == "linear":
        from ssljax.eval import linear

        return linear.evaluate(
            args.workdir,
            args.linear_protocol,
            args.checkpoint,
            args.random_init,
            args.dataset,
            args.epochs,
            args.raw_pixels,
            args.network,
        )
    if args.protocol == "semi":
        from ssljax.eval import semi

        return semi.evaluate(
            args.workdir,
            args.fraction,
            args.checkpoint,
            args.random_init,
            args.dataset,
            args.epochs,
            args.batch_size,
            args.seed,
            args.network,
        )
    from ssljax.eval import perceptual

    return perceptual.run(args)


def main(argv=None) -> None:
    args = parse_args(argv)
    from ssljax.errors import UserError

    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        if args.distributed:
            import jax

            jax.distributed.initialize()
        result = run(args)
        print(json.dumps(result), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

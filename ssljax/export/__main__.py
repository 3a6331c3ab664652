"""Export a pre-trained encoder as a PyTorch state_dict for torchvision or timm.

    python -m ssljax.export --workdir=DIR --format=torchvision|timm --out=FILE.pth
        [--checkpoint=STEP] [--network=online|target] [--random-init]

FILE ends in .pth/.pt (torch.save) or .safetensors; FILE.json beside it names the model
constructor, the input size and the mean/std to normalise RGB images in [0, 1] with.
--network defaults to the network the method's paper evaluates (the teacher for DINO and
Momentum² Teacher, the online/query encoder otherwise). docs/transfer.md shows how to
fine-tune the result in detectron2, mmdetection and torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ssljax.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="the --workdir of a training run")
    parser.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    parser.add_argument(
        "--network",
        choices=("online", "target"),
        default=None,
        help="online (student, MoCo's query) or target (EMA/teacher/key); "
        "default: the one the method's paper evaluates",
    )
    parser.add_argument("--format", required=True, choices=("torchvision", "timm"))
    parser.add_argument("--out", required=True, help="FILE.pth, FILE.pt or FILE.safetensors")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="the untrained network of the run's config (a baseline; no checkpoint needed)",
    )
    return parser.parse_args(argv)


def export(
    workdir: str,
    out: str,
    format: str,
    network: str | None = None,
    checkpoint: int | None = None,
    random_init: bool = False,
) -> dict:
    """Write `out` and its JSON card; returns the card. Every check that can fail on the
    user's input runs before anything is read from the checkpoint or written."""
    from ssljax.export import convert, files
    from ssljax.export.encoder import load_encoder
    from ssljax.run import load_config

    path = files.check_out_path(out)
    config = load_config(workdir)
    size = config.dataset.image_size
    spec = convert.target(config.model, size, format)
    encoder = load_encoder(workdir, network, checkpoint, random_init)
    module, variables = encoder.module, encoder.variables
    state_dict = convert.state_dict(module, variables, spec)
    mean, std = convert.input_mean_std(module, spec)
    card = {
        "format": spec.format,
        "architecture": spec.architecture,
        "constructor": spec.constructor,
        "args": list(spec.args),
        "kwargs": spec.kwargs,
        "identity_head": spec.identity_head,
        "strict": True,
        "input_size": [3, size, size],
        "input": "RGB in [0, 1], then (x - mean) / std per channel, NCHW",
        "mean": mean,
        "std": std,
        "num_features": int(module.num_features),
        "output": "model(x) is the pooled feature vector [B, num_features] (ssljax's 'pooled')",
        "batch_norm_epsilon": convert.BN_EPSILON if variables.get("batch_stats") else None,
        "source": {
            "workdir": os.path.abspath(workdir),
            "method": config.method,
            "network": encoder.network,
            "checkpoint": "random_init" if random_init else encoder.step,
        },
        "file": path.name,
    }
    files.write_state_dict(path, state_dict)
    files.write_card(files.card_path(path), card)
    return card


def main(argv=None) -> None:
    args = parse_args(argv)
    from ssljax.errors import UserError

    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        start = time.perf_counter()
        card = export(
            args.workdir, args.out, args.format, args.network, args.checkpoint, args.random_init
        )
        seconds = time.perf_counter() - start
        size_mb = os.path.getsize(args.out) / 1e6
        summary = {"out": args.out, "megabytes": round(size_mb, 2), "seconds": round(seconds, 2)}
        print(json.dumps({**summary, "constructor": card["constructor"]}), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

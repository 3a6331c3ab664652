"""Export a real-size ResNet-50 (BYOL's imagenet preset, random init) and check it in PyTorch.

    python benchmarks/export_resnet50.py [--workdir=/tmp/ssljax_export_r50]

Prints: the wall time of `python -m ssljax.export` (process start to exit) and of the
export itself, the file sizes (.pth and .safetensors), the largest relative difference
between ssljax's pooled features and torchvision's on 4 photos at 224 px, and whether
torchvision's Mask R-CNN + FPN accepts the weights with `strict=True` (docs/transfer.md).
The PyTorch side runs in its own process (see docs/transfer.md on torch beside TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TORCH_SIDE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch, torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from ssljax.export.files import load_torch_model

    out, images_path = sys.argv[1], sys.argv[2]
    card = json.load(open(out.rsplit(".", 1)[0] + ".json"))
    model = load_torch_model(out)
    images = np.load(images_path)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    mean = torch.tensor(card["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        features = model((x - mean) / std).numpy()
    np.save(images_path.replace(".npy", "_torch.npy"), features)
    state = torch.load(out, weights_only=True)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
    backbone.body.load_state_dict(state, strict=True)
    detector = MaskRCNN(backbone, num_classes=91).eval()
    with torch.no_grad():
        detections = detector([torch.from_numpy(images[0].transpose(2, 0, 1).copy())])
    print(json.dumps({"maskrcnn_fpn_strict_load": True, "detections": len(detections[0]["boxes"])}))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/ssljax_export_r50")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")

    import numpy as np
    from skimage import data, transform

    from ssljax import configlib, train

    config = configlib.load(str(ROOT / "configs" / "byol.py"))  # imagenet preset: ResNet-50
    train.save_config(config, workdir)  # a run directory; --random-init needs no checkpoint

    results = {"machine": f"{platform.node()} {os.cpu_count()} CPUs", "load": os.getloadavg()}
    for suffix in (".pth", ".safetensors"):
        out = workdir / f"resnet50{suffix}"
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ssljax.export",
                f"--workdir={workdir}",
                "--random-init",
                "--format=torchvision",
                f"--out={out}",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        printed = json.loads(done.stdout.strip().splitlines()[-1])
        results[suffix] = {
            "command_seconds": round(time.perf_counter() - start, 1),
            "export_seconds": printed["seconds"],
            "megabytes": printed["megabytes"],
        }

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    images = np.stack([transform.resize(p, (224, 224), anti_aliasing=True) for p in photos])
    images = images.astype(np.float32)
    images_path = workdir / "photos.npy"
    np.save(images_path, images)
    done = subprocess.run(
        [sys.executable, "-c", TORCH_SIDE, str(workdir / "resnet50.pth"), str(images_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    results["torchvision"] = json.loads(done.stdout.strip().splitlines()[-1])

    import ssljax

    ours = np.asarray(ssljax.load_encoder(str(workdir), random_init=True)(images)["pooled"])
    theirs = np.load(str(images_path).replace(".npy", "_torch.npy"))
    error = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    results["pooled_max_relative_difference"] = error
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

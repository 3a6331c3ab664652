"""Draw docs/images/sage_reconstructions.png from the runs of benchmarks/sage_table7.sh.

    python scripts/sage_reconstructions_figure.py --root=runs/sage_table7 \
        [--out=docs/images/sage_reconstructions.png] [--images=12]

Top row: held-out Fashion-MNIST test images (the first of the split, the evaluation view);
below, each row's reconstructions of them, as `python -m ssljax.eval perceptual` saved them
(`DIR/eval/perceptual_grid.npz`), labelled with the row's perceptual top-1 and MSE.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROWS = (
    ("byol", "BYOL (lambda = 0)"),
    ("pixel_mse", "pixel MSE only"),
    ("random_evaluator", "random evaluator"),
    ("trained_evaluator", "trained evaluator"),
)
SCALE, GAP, LABEL = 3, 4, 230


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="runs/sage_table7")
    parser.add_argument("--out", default="docs/images/sage_reconstructions.png")
    parser.add_argument("--images", type=int, default=12)
    args = parser.parse_args()

    rows, originals = [], None
    for name, label in ROWS:
        eval_dir = os.path.join(args.root, name, "eval")
        grid_path = os.path.join(eval_dir, "perceptual_grid.npz")
        if not os.path.exists(grid_path):
            print(f"skipping {name}: no {grid_path}")
            continue
        grid = np.load(grid_path)
        originals = grid["originals"][: args.images] if originals is None else originals
        result = json.load(open(os.path.join(eval_dir, "perceptual.json")))
        label += f"\n{100 * result['reconstruction']:.1f}% · MSE {result['reconstruction_mse']:.3f}"
        rows.append((label, grid["reconstructions"][: args.images]))
    if originals is None:
        raise SystemExit(f"no perceptual_grid.npz under {args.root}: run the benchmark first")
    original = (
        json.load(open(os.path.join(args.root, "trained_evaluator", "eval", "perceptual.json")))
        if rows
        else {}
    )
    top = "originals" + (f"\n{100 * original['original']:.1f}%" if original else "")
    rows.insert(0, (top, originals))

    n, size = len(originals), originals.shape[1] * SCALE
    canvas = Image.new("RGB", (LABEL + n * (size + GAP), len(rows) * (size + GAP) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    for r, (label, images) in enumerate(rows):
        y = GAP + r * (size + GAP)
        draw.multiline_text((8, y + size // 2 - 20), label, fill="black", font=font)
        for c, image in enumerate(images):
            pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
            tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (LABEL + c * (size + GAP), y))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out} ({canvas.size[0]}×{canvas.size[1]})")


if __name__ == "__main__":
    main()

"""Draw docs/images/detcon_masks.png: FH masks of a few photos and DetCon's two views.

    python scripts/detcon_masks_figure.py [--out=docs/images/detcon_masks.png]

Per row: a scikit-image photo; its Felzenszwalb–Huttenlocher mask at the paper's
ImageNet parameters (scale 1000, σ 0.8, min_size 1000) on the full-size image; then the
two augmented views (`byol` preset, 224 px) exactly as the training pipeline makes them
(`ssljax.data.masks.views_with_masks`), each with its 7×7 majority grid drawn over it:
cells of the 16 sampled segment ids are tinted with the segment's colour (the same
colour as in the mask), the other cells are darkened.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssljax.data import augment, fh, masks  # noqa: E402

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea")
PANEL, GRID, SAMPLES, GAP, HEADER = 224, 7, 16, 8, 52


def colours(num: int) -> np.ndarray:
    """A fixed, well-spread colour per segment id."""
    rng = np.random.default_rng(3)
    return rng.integers(40, 256, size=(num, 3)).astype(np.uint8)


def fit(image: np.ndarray, resample=Image.BICUBIC) -> Image.Image:
    """The image scaled into a PANEL×PANEL box on a white background."""
    pil = Image.fromarray(image)
    scale = PANEL / max(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), resample)
    box = Image.new("RGB", (PANEL, PANEL), "white")
    box.paste(pil, ((PANEL - pil.width) // 2, (PANEL - pil.height) // 2))
    return box


def mask_panel(mask: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Segments in their colours with dark boundaries."""
    rgb = palette[mask]
    rgb[boundaries(mask)] = 0
    return fit(rgb, Image.NEAREST)


def boundaries(mask: np.ndarray) -> np.ndarray:
    edge = np.zeros(mask.shape, bool)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    return edge


def view_panel(view, pixel_mask, cells, ids, palette) -> Image.Image:
    """The view with its g×g majority map (sampled segments tinted, the rest darkened)
    and the boundaries of its pixel-level mask (the image's crop and flip) in black."""
    pixels = (view * 255).astype(np.float32)
    step = PANEL / GRID
    draw_ids = set(int(i) for i in ids)
    for y in range(GRID):
        for x in range(GRID):
            rows = slice(round(y * step), round((y + 1) * step))
            cols = slice(round(x * step), round((x + 1) * step))
            segment = int(cells[y, x])
            if segment in draw_ids:
                pixels[rows, cols] = 0.45 * pixels[rows, cols] + 0.55 * palette[segment]
            else:
                pixels[rows, cols] *= 0.3
    pixels[boundaries(pixel_mask)] = 0
    panel = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for k in range(1, GRID):
        draw.line([(round(k * step), 0), (round(k * step), PANEL)], fill=(255, 255, 255))
        draw.line([(0, round(k * step)), (PANEL, round(k * step))], fill=(255, 255, 255))
    return panel


def row(name: str, seed: int, font) -> Image.Image:
    import skimage.data
    import tensorflow as tf

    image = getattr(skimage.data, name)()[..., :3]
    mask = fh.felzenszwalb_mask(image)  # the paper's ImageNet parameters
    out = masks.views_with_masks(
        tf.constant(image),
        tf.constant(mask[..., None]),
        tf.constant([seed, 0], tf.int64),
        "byol",
        PANEL,
        GRID,
        SAMPLES,
    )
    out = {k: v.numpy() for k, v in out.items()}
    pixel_masks = [  # the views' pixel-level masks, from the same seeds as the views
        augment.augment_view(
            tf.constant(image),
            augment.fold_seed(tf.constant([seed, 0], tf.int64), v),
            "byol",
            v,
            PANEL,
            extra=[tf.constant(mask[..., None])],
        )[1][0].numpy()[..., 0]
        for v in (0, 1)
    ]
    palette = colours(int(mask.max()) + 1)
    panels = [fit(image), mask_panel(mask, palette)]
    panels += [
        view_panel(out[f"view{v}"], pixel_masks[v - 1], out[f"mask{v}"], out[f"ids{v}"], palette)
        for v in (1, 2)
    ]
    shared = np.array_equal(out["ids1"], out["ids2"])
    distinct = len(np.unique(out["ids1"]))
    captions = [
        f"{name} {image.shape[1]}x{image.shape[0]}",
        f"FH mask: {mask.max() + 1} segments",
        f"view 1: {distinct} distinct id{'s' if distinct > 1 else ''} sampled",
        f"view 2: {'same ids' if shared else 'own ids'}",
    ]
    strip = Image.new("RGB", (4 * PANEL + 3 * GAP, PANEL + 20), "white")
    draw = ImageDraw.Draw(strip)
    for k, (panel, caption) in enumerate(zip(panels, captions, strict=True)):
        strip.paste(panel, (k * (PANEL + GAP), 20))
        draw.text((k * (PANEL + GAP) + 2, 2), caption, fill="black", font=font)
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images", "detcon_masks.png"))
    args = parser.parse_args()
    try:
        font = ImageFont.load_default(size=14)
        title_font = ImageFont.load_default(size=16)
    except (TypeError, OSError):  # Pillow without FreeType
        font = title_font = ImageFont.load_default()
    rows = [row(name, seed, font) for seed, name in enumerate(PHOTOS)]
    width = rows[0].width + 2 * GAP
    figure = Image.new("RGB", (width, HEADER + sum(r.height + GAP for r in rows)), "white")
    ImageDraw.Draw(figure).multiline_text(
        (GAP, 6),
        f"DetCon masks: FH (scale 1000, sigma 0.8, min_size 1000) on the full image, two "
        f"byol views,\n{GRID}x{GRID} majority grid, {SAMPLES} ids sampled: tinted cells; "
        "darkened cells are not sampled; black: the view's segment boundaries",
        fill="black",
        font=title_font,
    )
    y = HEADER
    for strip in rows:
        figure.paste(strip, (GAP, y))
        y += strip.height + GAP
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    figure.save(args.out, optimize=True)
    print(f"wrote {args.out} ({figure.width}×{figure.height})")


if __name__ == "__main__":
    main()

"""FH mask throughput at ImageNet-like sizes, on one core and on every core.

    python benchmarks/fh_throughput.py [--seconds=20] [--workers=N] [--height=375 --width=500]

Each image goes through exactly the precompute command's per-image work
(`ssljax.data.mask_cache._segment_images`: `skimage.segmentation.felzenszwalb` with the
paper's ImageNet parameters scale 1000, σ 0.8, min_size 1000, then the int32 zlib
record). Inputs are scikit-image's bundled photos resized to 500×375, about ImageNet's
mean image size. Prints images/s and the implied time for ImageNet's 1,281,167 training
images; the DetCon authors report 2–3 days on 16 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ssljax.data import fh, mask_cache  # noqa: E402

IMAGENET_TRAIN_IMAGES = 1_281_167
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def photos(height: int, width: int) -> list[np.ndarray]:
    import skimage.data
    import skimage.transform

    out = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()[..., :3]
        resized = skimage.transform.resize(image, (height, width), anti_aliasing=True)
        out.append((resized * 255).round().astype(np.uint8))
    return out


def rate(images, params, seconds: float, pool=None, workers: int = 1) -> tuple[float, float]:
    """Images/s of wall time and of this process's CPU time (the rate of an idle core)
    over at least `seconds`, in whole rounds of 2 images per worker."""
    done, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        batch = [images[(done + i) % len(images)] for i in range(max(2 * workers, 1))]
        if pool is None:
            mask_cache._segment_images(batch, params)
        else:
            pool.starmap(mask_cache._segment_images, [([image], params) for image in batch])
        done += len(batch)
    return done / (time.perf_counter() - started), done / (time.process_time() - cpu_started)


def days(images_per_second: float) -> str:
    seconds = IMAGENET_TRAIN_IMAGES / images_per_second
    return f"{seconds / 86400:.1f} days ({seconds / 3600:.0f} h)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    args = parser.parse_args()

    import skimage

    params = fh.FHParams()  # scale 1000, σ 0.8, min_size 1000
    images = photos(args.height, args.width)
    segments = [len(np.unique(fh.felzenszwalb_mask(image))) for image in images]
    print(
        f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores available, "
        f"load average {os.getloadavg()[0]:.1f}; Python {platform.python_version()}, "
        f"scikit-image {skimage.__version__}"
    )
    print(
        f"images: {len(images)} scikit-image photos at {args.height}×{args.width}, "
        f"FH {params.key}: {np.mean(segments):.0f} segments an image on average"
    )
    one, one_cpu = rate(images, params, args.seconds)
    print(f"1 core:   {one:6.2f} images/s (wall) → ImageNet train in {days(one)}")
    print(f"          {one_cpu:6.2f} images/s of CPU time (an idle core) → {days(one_cpu)}")
    print(
        f"          ×16 idle cores (linear): {days(16 * one_cpu)}  "
        "[DetCon authors: 2–3 days on 16 cores]"
    )
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            rate(images, params, 0.0, pool, args.workers)  # start the workers
            every, _ = rate(images, params, args.seconds, pool, args.workers)
        print(
            f"{args.workers} cores: {every:6.2f} images/s ({every / one:.2f}× one core) → "
            f"ImageNet train in {days(every)}"
        )


if __name__ == "__main__":
    main()

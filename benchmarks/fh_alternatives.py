"""FH segmentation alternatives against scikit-image's: speed per core and agreement.

    python benchmarks/fh_alternatives.py [--repeats=3] [--height=375 --width=500]

For each of scikit-image's bundled photos (benchmarks/fh_throughput.py's, resized to
about ImageNet's mean size) with the paper's ImageNet parameters (scale/k 1000, σ 0.8,
min_size 1000): the segmentation of `ssljax.data.masks.felzenszwalb_mask`
(scikit-image) and of OpenCV's `cv2.ximgproc.segmentation.createGraphSegmentation`
(the same Felzenszwalb–Huttenlocher algorithm, from opencv-contrib), CPU seconds per
image on one thread, and the adjusted Rand index (ARI) of the two segmentations.
Adoption rule (issue 19): ARI ≥ 0.95 on every photo and ≥ 3× faster per core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from ssljax.data import masks  # noqa: E402


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert–Arabie ARI of two labelings of the same pixels."""
    _, a = np.unique(a.ravel(), return_inverse=True)
    _, b = np.unique(b.ravel(), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x):
        x = np.asarray(x, np.float64)
        return float((x * (x - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs([a.size])
    maximum = (rows + cols) / 2
    if maximum == expected:  # both labelings a single segment (or both all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)


def cpu_seconds(fn, image, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        out = fn(image)
        best = min(best, time.process_time() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    spec = importlib.util.spec_from_file_location(
        "fh_throughput", os.path.join(ROOT, "benchmarks", "fh_throughput.py")
    )
    fh_throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fh_throughput)
    photos = fh_throughput.photos(args.height, args.width)

    def skimage_fh(image):
        return masks.felzenszwalb_mask(image, 1000, 0.8, 1000)

    def opencv_fh(image):
        segmenter = cv2.ximgproc.segmentation.createGraphSegmentation(
            sigma=0.8, k=1000, min_size=1000
        )
        return segmenter.processImage(np.ascontiguousarray(image[..., ::-1]))

    rows = []
    for name, image in zip(fh_throughput.PHOTOS, photos):
        sk_seconds, sk = cpu_seconds(skimage_fh, image, args.repeats)
        cv_seconds, cv = cpu_seconds(opencv_fh, image, args.repeats)
        rows.append(
            {
                "photo": name,
                "segments_skimage": int(sk.max() + 1),
                "segments_opencv": int(cv.max() + 1),
                "ari": round(adjusted_rand_index(sk, cv), 4),
                "skimage_s": round(sk_seconds, 4),
                "opencv_s": round(cv_seconds, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    speedup = sum(r["skimage_s"] for r in rows) / sum(r["opencv_s"] for r in rows)
    worst = min(r["ari"] for r in rows)
    summary = {
        "opencv_version": cv2.__version__,
        "size": [args.height, args.width],
        "speedup_per_core": round(speedup, 2),
        "min_ari": worst,
        "mean_ari": round(float(np.mean([r["ari"] for r in rows])), 4),
        "adopt": bool(worst >= 0.95 and speedup >= 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""Speed of bench's hand-crafted extractors against plain per-image scikit-image calls.

:func:`run` generates textured gray images (seeded), then for each extractor times
``extractor.transform(images)`` against a loop of the scikit-image call(s) that
produce the equivalent output on the same images:

==============  ================================================================
extractor       baseline (per image)
==============  ================================================================
hog             ``skimage.feature.hog`` (9 orientations, 8x8 cells, 2x2 blocks, L2-Hys)
lbp             ``local_binary_pattern(P=8, R)`` + ``np.histogram`` for R = 1, 2, 3
glcm            ``graycomatrix`` (256 levels, 3 distances x 4 angles, symmetric,
                normed) + ``graycoprops`` for 6 properties
sift            ``skimage.feature.SIFT().detect_and_extract``; bench's default
                (dense grid, RootSIFT) descriptor stage
sift_detect     the same baseline; bench with ``keypoints="detect"`` (like for like)
color_hist      ``rgb2hsv`` + ``np.histogramdd`` (information only)
granulometry    ``skimage.morphology.opening``/``closing`` by ``disk(1..8)`` (information)
==============  ================================================================

Protocol: OpenCV is limited to one thread during the run (scikit-image is
single-threaded, so the ratio is per core), each pair is warmed up on a few images,
then timed ``repeats`` (5) times in alternation, each repeat the mean over as many calls
as take :data:`MIN_REPEAT_S` (0.1 s); the best (minimum) is reported, as for
the CNN rows: other processes only ever add time, so the minimum is the least noisy
estimate of what the code costs (the medians are kept in the row too). The clock is
the process CPU time by default (``clock="cpu"``): for this single-threaded work it
equals the wall time on an idle machine and, unlike the wall time, it does not
depend on what else the machine runs; ``clock="wall"`` measures wall time. The
slow baselines (GLCM at 256 levels, SIFT, granulometry: 50-250 ms per image) run on
the first ``n_slow`` images (stated in the row's ``n_images``) to keep the whole run
well under a minute; both SIFT rows share one baseline measurement.

Targets (``target`` in each row): hog >= 10x, lbp >= 3x, glcm (256 levels) >= 5x,
sift >= 15x. Run ``python -m bench.perf_handcrafted [--quick]`` to print the table.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Callable

import cv2
import numpy as np

log = logging.getLogger(__name__)

TARGETS = {"hog": 10.0, "lbp": 3.0, "glcm": 5.0, "sift": 15.0}


def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded textured uint8 gray images: blurred noise, a grating and blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(n):
        noise = rng.integers(0, 256, (size, size), dtype=np.uint8)
        base = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(0.8, 3.0))).astype(np.float32)
        f, a = rng.uniform(0.05, 0.4), rng.uniform(0, np.pi)
        grating = 60 * np.sin(f * (np.cos(a) * xx + np.sin(a) * yy))
        img = 0.8 * (base - base.mean()) * 3 + grating + 128
        for _ in range(int(rng.integers(2, 6))):
            c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.circle(img, c, int(rng.integers(2, max(3, size // 8))), float(rng.uniform(0, 255)), -1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _colorise(images: list[np.ndarray]) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.applyColorMap(im, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB) for im in images]


MIN_REPEAT_S = 0.1
"""A timed repeat calls the function until this much time has passed and keeps the mean
(``timeit``'s autorange): a 5 ms call timed once is at the mercy of one cache flush."""


def _time(fn: Callable[[], object], clock: Callable[[], float], min_s: float = MIN_REPEAT_S) -> float:
    """Seconds per call of ``fn``, over as many calls as take ``min_s`` (at least one)."""
    loops, t0 = 0, clock()
    while True:
        fn()
        loops += 1
        elapsed = clock() - t0
        if elapsed >= min_s:
            return elapsed / loops


def _cases(images, n_slow):
    """(name, bench callable, baseline callable, baseline description, images used)."""
    from skimage.color import rgb2hsv
    from skimage.feature import SIFT, graycomatrix, graycoprops, hog, local_binary_pattern
    from skimage.morphology import closing, disk, opening

    from .features.color import ColorHistogram
    from .features.glcm import GLCM
    from .features.granulometry import Granulometry
    from .features.hog import HOG
    from .features.lbp import LBPHistogram
    from .features.sift import SiftDescriptors

    size = images[0].shape[0]
    rgb = _colorise(images)
    slow = images[:n_slow]
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    props = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")

    def sk_hog(ims):
        return [hog(im, 9, (8, 8), (2, 2), "L2-Hys") for im in ims]

    def sk_lbp(ims):
        return [np.concatenate([np.histogram(local_binary_pattern(im, 8, r, "uniform"), bins=10,
                                             range=(0, 10), density=False)[0] / im.size for r in (1, 2, 3)])
                for im in ims]

    def sk_glcm(ims):
        out = []
        for im in ims:
            P = graycomatrix(im, [1, 2, 4], angles, levels=256, symmetric=True, normed=True)
            out.append([graycoprops(P, p) for p in props])
        return out

    def sk_sift(ims):
        out = []
        for im in ims:
            s = SIFT()
            try:
                s.detect_and_extract(im)
                out.append(s.descriptors)
            except RuntimeError:  # no keypoint
                out.append(None)
        return out

    def sk_color(ims):
        return [np.histogramdd(rgb2hsv(im).reshape(-1, 3), bins=(8, 4, 4), range=((0, 1),) * 3)[0]
                for im in ims]

    def sk_gran(ims):
        out = []
        for im in ims:
            out.append([opening(im, disk(r)).sum() for r in range(1, 9)] +
                       [closing(im, disk(r)).sum() for r in range(1, 9)])
        return out

    hog_x = HOG(size=(size, size))
    lbp_x = LBPHistogram(radii=(1, 2, 3), points=8, method="uniform")
    glcm_x = GLCM(levels=256, distances=(1, 2, 4), angles=(0, 45, 90, 135), symmetric=True, props=props)
    sift_dense = SiftDescriptors()
    sift_detect = SiftDescriptors(keypoints="detect", rootsift=False)
    color_x = ColorHistogram(bins=(8, 4, 4), mode="joint")
    gran_x = Granulometry(radii=8, closings=True)
    return [
        ("hog", lambda ims: hog_x.transform(ims), sk_hog,
         "skimage.feature.hog(9 orientations, 8x8 cells, 2x2 blocks, L2-Hys) per image", images),
        ("lbp", lambda ims: lbp_x.transform(ims), sk_lbp,
         "skimage local_binary_pattern(P=8, R=1,2,3, 'uniform') + np.histogram per image", images),
        ("glcm", lambda ims: glcm_x.transform(ims), sk_glcm,
         "skimage graycomatrix(256 levels, d=1,2,4 x 4 angles, symmetric, normed) + graycoprops x6", slow),
        ("sift", lambda ims: sift_dense.transform(ims), sk_sift,
         "skimage.feature.SIFT().detect_and_extract per image (bench: dense RootSIFT, the default)",
         slow),
        ("sift_detect", lambda ims: sift_detect.transform(ims), sk_sift,
         "skimage.feature.SIFT().detect_and_extract per image (bench: keypoints='detect')", slow),
        ("color_hist", lambda ims: color_x.transform(ims), sk_color,
         "skimage rgb2hsv + np.histogramdd(8x4x4) per image (information only)", rgb),
        ("granulometry", lambda ims: gran_x.transform(ims), sk_gran,
         "skimage.morphology opening+closing by disk(1..8) per image (information only)", slow),
    ]


def run(n_images: int = 64, size: int = 128, quick: bool = False, repeats: int | None = None,
        n_slow: int | None = None, seed: int = 0, only=None, clock: str = "cpu") -> list[dict]:
    """Time every extractor against its scikit-image baseline; one dict per extractor.

    Row keys: ``extractor``, ``bench_s``, ``baseline_s`` (best seconds for all the
    row's images), ``ratio`` (baseline / bench), ``baseline`` (description),
    ``n_images``, ``size``, ``target`` (required ratio or ``None``), ``repeats``,
    ``clock`` (``"cpu"`` or ``"wall"``).
    ``quick`` uses 16 images, 6 for the slow baselines and 2 repeats. ``only``: names
    to run.
    """
    if quick:
        n_images, repeats = min(n_images, 16), repeats or 2
        n_slow = n_slow or 6
    repeats = repeats or 5
    n_slow = min(n_slow or 16, n_images)
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    timer = time.process_time if clock == "cpu" else time.perf_counter
    images = make_images(n_images, size, seed)
    old_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    rows = []
    baseline_cache: dict = {}  # (baseline function, n images) -> (best, median) seconds
    try:
        for name, bench_fn, base_fn, desc, ims in _cases(images, n_slow):
            if only is not None and name not in only:
                continue
            bench_fn(ims[:2])  # warm-up: imports, caches, lookup tables
            key = (base_fn, len(ims))
            if key not in baseline_cache:
                base_fn(ims[:2])
            tb, tr = [], []
            for _ in range(repeats):
                tb.append(_time(lambda: bench_fn(ims), timer))
                if key not in baseline_cache:
                    tr.append(_time(lambda: base_fn(ims), timer))
            bench_s = min(tb)
            base_s, base_med = baseline_cache.setdefault(
                key, (min(tr), statistics.median(tr)) if tr else (0.0, 0.0))
            row = {"extractor": name, "bench_s": bench_s, "baseline_s": base_s,
                   "bench_median_s": statistics.median(tb), "baseline_median_s": base_med,
                   "ratio": base_s / bench_s if bench_s > 0 else float("inf"), "baseline": desc,
                   "n_images": len(ims), "size": size, "target": TARGETS.get(name),
                   "repeats": repeats, "clock": clock}
            log.info("%s: bench %.4fs, baseline %.4fs, ratio %.1fx", name, bench_s, base_s, row["ratio"])
            rows.append(row)
    finally:
        cv2.setNumThreads(old_threads)
    return rows


def main(argv=None) -> int:  # pragma: no cover - thin command-line wrapper
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args(argv)
    rows = run(args.n_images, args.size, args.quick, clock=args.clock)
    print(f"{'extractor':<13} {'bench s':>9} {'skimage s':>10} {'ratio':>7} {'target':>7}  n  baseline"
          f"   ({args.clock} time)")
    for r in rows:
        tgt = f"{r['target']:.0f}x" if r["target"] else "-"
        print(f"{r['extractor']:<13} {r['bench_s']:9.4f} {r['baseline_s']:10.4f} {r['ratio']:6.1f}x {tgt:>7} "
              f"{r['n_images']:3d}  {r['baseline']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

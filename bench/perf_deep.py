"""How fast is ``cnn`` extraction, measured against plain Keras on the same images.

For each backbone, in one process:

* **bench** -- :class:`bench.features.deep.CNNFeatures` reading JPEG files from disk
  through a lazy sequence (decoded on ``__getitem__``), i.e. decode + resize +
  preprocess + inference, overlapped by its prefetch thread, in its steady state
  (frozen graph, as after :data:`~bench.features.deep.FREEZE_MIN_IMAGES` images);
* **(a) predict** -- ``model.predict`` of the very same Keras model on the images
  decoded, resized and preprocessed up front into a NumPy array (only ``predict`` is
  timed): the way Keras users usually extract features;
* **(b) forward** -- bench's own compiled forward pass alone on those images
  preloaded (as the uint8 batches it takes), the floor bench can reach when image
  loading is fully hidden.

Ratios are ``baseline_s / bench_s`` (above 1: bench is faster). Targets: (a) >= 1.5
for MobileNetV2, (b) >= 0.85 for every backbone. Every method gets one full warm-up
pass (building, tracing, freezing excluded); then the methods are timed round-robin
``repeats`` times and the best time of each is kept, with the same batch size
everywhere. The 1-minute load average is recorded: on a shared machine the numbers
are only as good as the quiet they were measured in. Weights are random (``random-init``):
speed does not depend on their values, and no download is needed.

Backbones: MobileNetV2 and ResNet50 (``keras.applications``) and EfficientNet-Lite0 (built
by bench, :mod:`bench.features.efficientnet_lite`; the default pipeline's CNN), all at
224 px.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

TARGET_VS_PREDICT = {"mobilenetv2": 1.5}
TARGET_VS_FORWARD = 0.85
LIGHT_PARAMS_M = 5.0  # backbones below this many parameters get more images by default


class JpegFolder:
    """A lazy image sequence over files: ``seq[i]`` decodes file ``i`` to RGB uint8."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        import cv2
        bgr = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot decode {self.paths[i]}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_images(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEG files (smoothed noise + gradients) of ``size`` x ``size``."""
    import cv2
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        noise = rng.normal(0, 40, (size, size, 3)).astype(np.float32)
        img = cv2.GaussianBlur(noise, (0, 0), 1.5 + 3 * rng.random())
        img += 255 * np.stack([yy * rng.random(), xx * rng.random(), (xx + yy) / 2 * rng.random()], -1)
        p = folder / f"img_{i:04d}.jpg"
        cv2.imwrite(str(p), np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def _interleaved(methods: dict, repeats: int) -> dict:
    """Time each method ``repeats`` times, round-robin (so background load drifts hit all
    of them alike); returns ``{name: (best_s, median_s, last_output)}``."""
    times: dict = {k: [] for k in methods}
    outs: dict = {}
    for _ in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v), outs[k]) for k, v in times.items()}


def _threads() -> dict:
    try:
        import keras
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            return {"intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}
    except Exception:  # pragma: no cover - informative only
        pass
    return {}


def measure_backbone(backbone: str, files: Sequence[Path], input_size=224, batch_size: int = 32,
                     repeats: int = 3) -> dict:
    """Time bench against (a) ``model.predict`` and (b) the bare forward pass for one backbone."""
    from .features.deep import CNNFeatures, available_cpus

    images = JpegFolder(files)
    n = len(images)
    ext = CNNFeatures(backbone=backbone, weights="random", input_size=input_size,
                      batch_size=batch_size)

    t0 = time.perf_counter()
    ext.freeze()  # steady state of a large dataset (transform freezes after FREEZE_MIN_IMAGES)
    ext.transform(images)  # warm-up: build, freeze, trace
    first_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    x = ext.preprocess(images)  # decoded + resized + preprocessed up front, for Keras
    preload_s = time.perf_counter() - t0
    x_u8 = ext.prepare(images)  # the same, as bench's compiled call takes it (uint8)
    model = ext.model_

    def forward_only():
        return np.concatenate([ext.forward_(x_u8[i:i + batch_size]) for i in range(0, n, batch_size)])
    methods = {"bench": lambda: ext.transform(images),
               "predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
               "forward": forward_only}
    for fn in list(methods.values())[1:]:
        fn()  # warm-up (bench's was the first transform)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    timed = _interleaved(methods, repeats)
    (bench_s, bench_med, feats), (predict_s, predict_med, ref), (forward_s, forward_med, _) = (
        timed["bench"], timed["predict"], timed["forward"])

    scale = float(np.abs(ref).max()) or 1.0
    target_a = TARGET_VS_PREDICT.get(backbone)
    row = {
        "backbone": backbone, "n_images": n, "input_size": list(ext.input_hw_),
        "batch_size": batch_size, "repeats": repeats, "weights": "random-init (timing only)",
        "device": ext.device_, "forward": ext.forward_how_, "cpus": available_cpus(), **_threads(),
        "first_run_s": round(first_s, 3), "bench_s": round(bench_s, 3),
        "bench_median_s": round(bench_med, 3), "bench_images_per_s": round(n / bench_s, 1),
        "predict_s": round(predict_s, 3), "predict_median_s": round(predict_med, 3),
        "forward_s": round(forward_s, 3), "forward_median_s": round(forward_med, 3),
        "preload_s": round(preload_s, 3),
        "speedup_vs_predict": round(predict_s / bench_s, 3),
        "ratio_vs_forward": round(forward_s / bench_s, 3),
        "target_vs_predict": target_a, "target_vs_forward": TARGET_VS_FORWARD,
        "max_rel_diff_vs_predict": float(np.abs(feats - ref).max() / scale),
        "load_average_1min": None if load_before is None else round(load_before, 2),
    }
    row["met"] = bool(row["ratio_vs_forward"] >= TARGET_VS_FORWARD
                      and (target_a is None or row["speedup_vs_predict"] >= target_a))
    log.info("perf %s: bench %.2fs (%.1f img/s), predict %.2fs (x%.2f), forward %.2fs (x%.2f)",
             backbone, bench_s, n / bench_s, predict_s, row["speedup_vs_predict"], forward_s,
             row["ratio_vs_forward"])
    return row


def run(quick: bool = False, backbones: Sequence[str] = ("mobilenetv2", "resnet50", "efficientnet_lite0"),
        n_images: int | None = None, input_size=224, batch_size: int = 32,
        repeats: int | None = None, workdir: str | Path | None = None,
        progress: Callable[[str], None] | None = None) -> list[dict]:
    """Measure every backbone; returns one dict per backbone (see :func:`measure_backbone`).

    ``n_images=None`` uses 256 images for light backbones (< 5 M parameters) and 64 for
    the others (32 with ``quick``); ``repeats=None`` is 3 (1 with ``quick``). The JPEG
    files go to ``workdir`` or a temporary folder that is removed afterwards.
    """
    from .features.backbones import get_backbone

    repeats = repeats or (1 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench-perf-deep-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        rows = []
        for name in backbones:
            bb = get_backbone(name)
            n = n_images or (32 if quick else (256 if bb.params_m < LIGHT_PARAMS_M else 64))
            files = write_images(folder / f"jpeg_{n}", n)
            if progress is not None:
                progress(f"{name}: {n} images, {repeats} repeats")
            rows.append(measure_backbone(name, files, input_size, batch_size, repeats))
        return rows


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of :func:`run`'s results."""
    head = (f"{'backbone':14s} {'n':>4s} {'size':>7s} {'bench s':>8s} {'img/s':>7s} "
            f"{'predict s':>9s} {'(a) x':>6s} {'forward s':>9s} {'(b) x':>6s}  forward pass")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['backbone']:14s} {r['n_images']:4d} {r['input_size'][0]:>7d} "
                     f"{r['bench_s']:8.3f} {r['bench_images_per_s']:7.1f} {r['predict_s']:9.3f} "
                     f"{r['speedup_vs_predict']:6.2f} {r['forward_s']:9.3f} "
                     f"{r['ratio_vs_forward']:6.2f}  {r['forward']} on {r['device']}")
    lines.append("(a) = model.predict time / bench time, (b) = bare forward time / bench time; "
                 "random weights (timing only)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual use: python -m bench.perf_deep [--quick]
    import json
    import sys
    logging.basicConfig(level=logging.INFO)
    results = run(quick="--quick" in sys.argv)
    print(format_rows(results))
    print(json.dumps(results, indent=1))

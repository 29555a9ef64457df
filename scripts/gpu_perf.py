"""Frozen-CNN throughput with Keras 3 on the JAX backend (a GPU when JAX sees one).

Run through ``scripts/gpu_perf.sh`` (which installs what is missing); directly::

    KERAS_BACKEND=jax PYTHONPATH=. python scripts/gpu_perf.py [--backbones ...] [--json out.json]

For each backbone at 224 px: PNG files (256 px, photo-like) are written to a temporary
folder, the ``cnn`` extractor (engine ``auto``, which is Keras on JAX: a ``jax.jit`` of
the BatchNorm-folded stateless call with a fixed batch shape) reads and embeds them once
to warm up (compilation), then ``--repeats`` timed passes, best kept:

* ``files img/s`` -- from the files on disk (decode + resize in bench's prefetch thread,
  overlapped with the device);
* ``alone img/s`` -- the compiled call alone on the images preloaded as uint8 batches.

Weights: EfficientNet-Lite0 its packaged ImageNet weights; MobileNetV2 and ResNet50 random
weights with calibrated BatchNorm statistics (speed does not depend on them). Prints a
table and, with ``--json``, writes every figure with the device and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

BACKBONES = ("efficientnet_lite0", "mobilenetv2", "resnet50")


def measure(backbone: str, files, batch_size: int, repeats: int, workdir: Path) -> dict:
    from bench.features.deep import CNNFeatures
    from bench.perf_deep import ImageFolder, _weights_for
    images = ImageFolder(files)
    n = len(images)
    weights, label = _weights_for(backbone, 224, workdir)
    ext = CNNFeatures(backbone=backbone, weights=weights, input_size=224, batch_size=batch_size)
    t0 = time.perf_counter()
    ext.transform(images)
    first = time.perf_counter() - t0
    x = ext.prepare(images)

    def alone():
        for i in range(0, n, batch_size):
            ext.forward_(x[i:i + batch_size])
    alone()
    best_files = best_alone = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ext.transform(images)
        best_files = min(best_files, time.perf_counter() - t0)
        t0 = time.perf_counter()
        alone()
        best_alone = min(best_alone, time.perf_counter() - t0)
    return {"backbone": backbone, "n_images": n, "batch_size": batch_size, "input_size": 224,
            "weights": label, "device": ext.device_, "engine": ext.describe()["engine"],
            "forward": ext.forward_how_, "first_run_s": round(first, 2),
            "files_s": round(best_files, 3), "files_images_per_s": round(n / best_files, 1),
            "alone_s": round(best_alone, 3), "alone_images_per_s": round(n / best_alone, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args(argv)

    import jax
    import keras
    from bench.perf_deep import write_images
    if keras.backend.backend() != "jax":
        print(f"error: Keras runs on {keras.backend.backend()!r}, not jax", file=sys.stderr)
        print("hint: run with KERAS_BACKEND=jax (scripts/gpu_perf.sh sets it)", file=sys.stderr)
        return 2
    devices = [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in jax.devices()]
    print(f"jax {jax.__version__}, keras {keras.__version__}, devices: {', '.join(devices)}")
    if jax.devices()[0].platform == "cpu":
        print("note: JAX sees no GPU; the figures below are CPU figures")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-perf-") as tmp:
        files = write_images(Path(tmp) / "png", args.n_images)
        for name in args.backbones:
            rows.append(measure(name, files, args.batch_size, args.repeats, Path(tmp)))
            r = rows[-1]
            print(f"{name:20s} {r['device']:8s} files {r['files_images_per_s']:8.1f} img/s   "
                  f"alone {r['alone_images_per_s']:8.1f} img/s   (first pass {r['first_run_s']} s; "
                  f"{r['forward']})", flush=True)
    if args.json:
        meta = {"jax": jax.__version__, "keras": keras.__version__, "devices": devices,
                "python": platform.python_version(), "machine": platform.node()}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

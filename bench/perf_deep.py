"""How fast is ``cnn`` extraction, per inference engine, against TensorFlow's compiled forward pass.

For each backbone (224 px, batch 32), in one process, on PNG files written to a
temporary folder:

* **forward** (the baseline) -- TensorFlow's compiled forward pass alone (bench's
  ``tf.function``, frozen graph: BatchNorm folded), on the images decoded, resized and
  batched up front as uint8 tensors;
* **predict** -- ``model.predict`` of the same Keras model on the images preprocessed up
  front into a float32 array: the way Keras users usually extract features;
* **files, engine E** -- :class:`bench.features.deep.CNNFeatures` with ``engine=E``
  reading the PNG files from disk through a lazy sequence (decode + resize + inference,
  overlapped by its prefetch thread), in its steady state; E is ``keras`` (frozen
  ``tf.function``) and every installed engine of :mod:`bench.features.engines`
  (``onnxruntime``, ``openvino``); the default CPU engine (``auto``) is marked;
* **alone, engine E** -- the engine's forward pass on the preloaded uint8 batches;
* **jax** (when JAX is installed) -- the extractor under ``KERAS_BACKEND=jax`` (its
  ``jax.jit`` of the BatchNorm-folded stateless call) from the same files, in a
  subprocess, on the first :data:`JAX_IMAGES` images, after one warm-up pass.

Every ratio is ``forward_s / method_s`` scaled to the same number of images (above 1:
faster than TensorFlow's compiled forward pass). The rows kept from before are bench
(keras engine, files) against ``model.predict`` (a) and against the forward pass (b).
Targets: the default CPU engine from files >= 1.5x the forward pass for MobileNetV2 and
EfficientNet-Lite0, >= 1.1x for ResNet50, embeddings equal within 1e-4 (max abs).

Every method gets one full warm-up pass (building, exporting, checking, tracing,
freezing excluded); then the methods are timed round-robin ``repeats`` times and the best
time of each is kept. The 1-minute load average is recorded: on a shared machine the
numbers are only as good as the quiet they were measured in.

Weights: EfficientNet-Lite0 has its packaged ImageNet weights; MobileNetV2 and ResNet50
get random weights with *calibrated* BatchNorm statistics (one training-mode pass over 16
images, momentum 0), written to a ``.weights.h5`` file: plain random init makes their
embeddings vanish (~1e-11), which would make every "max abs difference" vacuous.
Speed does not depend on the values.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

TARGET_VS_PREDICT = {"mobilenetv2": 1.5}
TARGET_VS_FORWARD = 0.85
TARGET_DEFAULT_ENGINE = {"mobilenetv2": 1.5, "efficientnet_lite0": 1.5, "resnet50": 1.1}
"""Default CPU engine from files / TensorFlow's compiled forward pass (issue 16)."""
LIGHT_PARAMS_M = 5.0  # backbones below this many parameters get more images by default
JAX_IMAGES = 64
ENGINES = ("onnxruntime", "openvino")


class ImageFolder:
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


JpegFolder = ImageFolder  # the name before PNG files


def write_images(folder: Path, n: int, size: int = 256, seed: int = 0, ext: str = "png") -> list[Path]:
    """``n`` photo-like image files (smoothed noise + gradients) of ``size`` x ``size``."""
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
        p = folder / f"img_{i:04d}.{ext}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext in ("jpg", "jpeg") else []
        cv2.imwrite(str(p), np.clip(img, 0, 255).astype(np.uint8), params)
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


def calibrated_weights(backbone: str, input_size, folder: Path, seed: int = 0) -> str:
    """Random weights of ``backbone`` with data-dependent BatchNorm statistics, as a file."""
    import keras

    from . import weights as weights_mod
    from .features.backbones import get_backbone
    bb = get_backbone(backbone)
    path = Path(folder) / f"{backbone}-{bb.input_hw(input_size)[0]}-calibrated.weights.h5"
    if path.is_file():
        return str(path)
    with weights_mod.seeded(seed):
        model = bb.build(input_size)
    h, w = bb.input_hw(input_size)
    calib = np.random.default_rng(seed).uniform(0, 255, (16, h, w, 3)).astype(np.float32)
    calib = np.asarray(bb.preprocess_fn()(calib), dtype=np.float32)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    momenta = [la.momentum for la in bns]
    for la in bns:
        la.momentum = 0.0
    model(calib, training=True)
    for la, m in zip(bns, momenta):
        la.momentum = m
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    return str(path)


def _weights_for(backbone: str, input_size, folder: Path) -> tuple[str, str]:
    """``(weights parameter, label)``: packaged ImageNet where offline-available, else calibrated."""
    from .features.backbones import get_backbone
    if get_backbone(backbone).source == "package":
        return "imagenet", "imagenet (packaged)"
    return calibrated_weights(backbone, input_size, folder), "random, calibrated BatchNorm (timing only)"


def _jax_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("jax") is not None


_JAX_SCRIPT = r"""
import json, os, sys, time
import numpy as np
from bench.features.deep import CNNFeatures
from bench.perf_deep import ImageFolder
args = json.loads(sys.argv[1])
images = ImageFolder(args["files"])
ext = CNNFeatures(backbone=args["backbone"], weights=args["weights"], input_size=args["input_size"],
                  batch_size=args["batch_size"], engine="keras")
t0 = time.perf_counter(); ext.transform(images); first = time.perf_counter() - t0
best = None
for _ in range(args["repeats"]):
    t0 = time.perf_counter(); feats = ext.transform(images); dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
np.save(args["out"], feats)
print(json.dumps({"jax_s": best, "first_run_s": first, "how": ext.forward_how_, "device": ext.device_}))
"""


def measure_jax(backbone: str, files: Sequence[Path], weights: str, input_size, batch_size: int,
                repeats: int, workdir: Path) -> dict | None:
    """The extractor under ``KERAS_BACKEND=jax`` from ``files`` in a subprocess (None: no JAX)."""
    if not _jax_available():
        return None
    out = Path(workdir) / f"jax-{backbone}.npy"
    args = {"backbone": backbone, "weights": weights, "input_size": input_size, "files": [str(f) for f in files],
            "batch_size": batch_size, "repeats": max(1, repeats), "out": str(out)}
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, json.dumps(args)], capture_output=True,
                          text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        log.warning("perf %s on JAX failed: %s", backbone, proc.stderr.strip()[-800:])
        return {"error": proc.stderr.strip()[-300:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["feats"] = np.load(out)
    return res


def _engine_methods(backbone, images, x_u8, weights, input_size, batch_size) -> tuple[dict, dict]:
    """Warmed-up extractors of every installed engine: ``({name: extractor}, {name: info})``."""
    from .features import engines
    from .features.deep import CNNFeatures
    exts, info = {}, {}
    for name in ENGINES:
        if not engines.installed(name):
            info[name] = {"skipped": "not installed"}
            continue
        ext = CNNFeatures(backbone=backbone, weights=weights, input_size=input_size,
                          batch_size=batch_size, engine=name)
        t0 = time.perf_counter()
        ext.use_engine()
        ext.transform(images)
        info[name] = {"first_run_s": round(time.perf_counter() - t0, 3), "how": ext.forward_how_,
                      "used": ext.engine_, "fallback": ext.engine_choice_.fallback}
        if ext.engine_ == name:
            exts[name] = ext
    return exts, info


def measure_backbone(backbone: str, files: Sequence[Path], input_size=224, batch_size: int = 32,
                     repeats: int = 3, workdir: Path | None = None, jax: bool = True) -> dict:
    """Time every engine against TensorFlow's compiled forward pass for one backbone."""
    from .features import engines
    from .features.deep import CNNFeatures, available_cpus

    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-perf-deep-"))
    images = ImageFolder(files)
    n = len(images)
    weights, weights_label = _weights_for(backbone, input_size, workdir)
    ext = CNNFeatures(backbone=backbone, weights=weights, input_size=input_size,
                      batch_size=batch_size, engine="keras")
    t0 = time.perf_counter()
    ext.freeze()  # steady state of a large dataset (transform freezes after FREEZE_MIN_IMAGES)
    ext.transform(images)  # warm-up: build, freeze, trace
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = ext.preprocess(images)  # decoded + resized + preprocessed up front, for Keras
    preload_s = time.perf_counter() - t0
    t0 = time.process_time()
    x_u8 = ext.prepare(images)  # the same, as the compiled calls take them (uint8)
    decode_cpu_s = time.process_time() - t0  # decode + resize, one thread: what a loader costs
    model = ext.model_
    exts, engine_info = _engine_methods(backbone, images, x_u8, weights, input_size, batch_size)

    def alone(forward):
        return lambda: np.concatenate([forward(x_u8[i:i + batch_size]) for i in range(0, n, batch_size)])
    methods = {"bench": lambda: ext.transform(images),
               "predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
               "forward": alone(ext.forward_)}
    for name, e in exts.items():
        methods[f"files_{name}"] = (lambda e=e: e.transform(images))
        methods[f"alone_{name}"] = alone(e.forward_)
    for key, fn in methods.items():
        if key != "bench":
            fn()  # warm-up (bench's was the first transform)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    timed = _interleaved(methods, repeats)
    timed["decode_cpu_s"] = decode_cpu_s
    row = _row(backbone, n, ext, timed, weights_label, batch_size, repeats, first_s, preload_s,
               load_before, available_cpus())
    # what `auto` (the default) picks here: the engines timed on this CPU (engines.speed)
    auto = CNNFeatures(backbone=backbone, weights=weights, input_size=input_size,
                       batch_size=batch_size, engine="auto").use_engine()
    default = auto.engine_
    row["auto_how"] = auto.forward_how_
    row["engines"] = _engine_rows(timed, engine_info, default, backbone)
    if jax:
        row["jax"] = _jax_row(backbone, files, weights, input_size, batch_size, repeats, workdir,
                              timed, n)
    row["default_engine"] = default
    d = row["engines"].get(default, {})
    row["default_ratio_vs_forward"] = d.get("ratio_files_vs_forward")
    log.info("perf %s: forward %.2fs; %s", backbone, row["forward_s"], "; ".join(
        f"{k} files x{v.get('ratio_files_vs_forward')}" for k, v in row["engines"].items()))
    return row


def _diff(a, b) -> dict:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    from .features.engines import tolerance
    scale = float(np.abs(b).max()) or 1.0
    return {"max_abs_diff": float(np.abs(a - b).max()), "max_rel_diff": float(np.abs(a - b).max() / scale),
            "tolerance": tolerance(b)}


def _row(backbone, n, ext, timed, weights_label, batch_size, repeats, first_s, preload_s,
         load_before, cpus) -> dict:
    (bench_s, bench_med, feats), (predict_s, predict_med, ref), (forward_s, forward_med, _) = (
        timed["bench"], timed["predict"], timed["forward"])
    target_a = TARGET_VS_PREDICT.get(backbone)
    row = {
        "backbone": backbone, "n_images": n, "input_size": list(ext.input_hw_),
        "batch_size": batch_size, "repeats": repeats, "weights": weights_label,
        "device": ext.device_, "forward": ext.forward_how_, "cpus": cpus, **_threads(),
        "first_run_s": round(first_s, 3), "bench_s": round(bench_s, 3),
        "bench_median_s": round(bench_med, 3), "bench_images_per_s": round(n / bench_s, 1),
        "predict_s": round(predict_s, 3), "predict_median_s": round(predict_med, 3),
        "forward_s": round(forward_s, 3), "forward_median_s": round(forward_med, 3),
        "forward_images_per_s": round(n / forward_s, 1), "preload_s": round(preload_s, 3),
        "decode_cpu_ms_per_image": round(1000 * timed["decode_cpu_s"] / n, 3),
        "speedup_vs_predict": round(predict_s / bench_s, 3),
        "ratio_vs_forward": round(forward_s / bench_s, 3),
        "predict_ratio_vs_forward": round(forward_s / predict_s, 3),
        "target_vs_predict": target_a, "target_vs_forward": TARGET_VS_FORWARD,
        "max_rel_diff_vs_predict": _diff(feats, ref)["max_rel_diff"],
        "max_abs_diff_vs_predict": _diff(feats, ref)["max_abs_diff"],
        "load_average_1min": None if load_before is None else round(load_before, 2),
    }
    row["met"] = bool(row["ratio_vs_forward"] >= TARGET_VS_FORWARD
                      and (target_a is None or row["speedup_vs_predict"] >= target_a))
    return row


def _cores() -> int:
    from .features.deep import available_cpus
    return available_cpus()


def _engine_rows(timed, info, default, backbone) -> dict:
    forward_s, predict_s, ref = timed["forward"][0], timed["predict"][0], timed["bench"][2]
    n = len(ref)
    out = {}
    for name in ENGINES:
        r = dict(info.get(name, {}))
        if f"files_{name}" in timed:
            files_s, files_med, feats = timed[f"files_{name}"]
            alone_s = timed[f"alone_{name}"][0]
            # the best a loader sharing the cores with the engine allows: the engine's CPU
            # (alone_s on every core) plus the decoding CPU, spread over the cores
            bound_s = alone_s + timed.get("decode_cpu_s", 0.0) / max(1, _cores())
            r.update(files_s=round(files_s, 3), files_median_s=round(files_med, 3),
                     files_bound_vs_forward=round(forward_s / bound_s, 3),
                     files_images_per_s=round(n / files_s, 1), alone_s=round(alone_s, 3),
                     ratio_files_vs_forward=round(forward_s / files_s, 3),
                     ratio_files_vs_predict=round(predict_s / files_s, 3),
                     ratio_alone_vs_forward=round(forward_s / alone_s, 3), **_diff(feats, ref))
            if name == default:
                target = TARGET_DEFAULT_ENGINE.get(backbone)
                r.update(default=True, target=target,
                         met=bool(target is None or (r["ratio_files_vs_forward"] >= target
                                                     and r["max_abs_diff"] <= r["tolerance"])))
        out[name] = r
    return out


def _jax_row(backbone, files, weights, input_size, batch_size, repeats, workdir, timed, n) -> dict | None:
    k = min(len(files), JAX_IMAGES)
    res = measure_jax(backbone, files[:k], weights, input_size, batch_size, min(repeats, 2), workdir)
    if res is None or "error" in res:
        return res
    forward_per_image = timed["forward"][0] / n
    out = {"n_images": k, "jax_s": round(res["jax_s"], 3), "first_run_s": round(res["first_run_s"], 3),
           "images_per_s": round(k / res["jax_s"], 1), "how": res["how"], "device": res["device"],
           "ratio_vs_forward": round(forward_per_image * k / res["jax_s"], 3),
           **_diff(res["feats"], timed["bench"][2][:k])}
    return out


def run(quick: bool = False, backbones: Sequence[str] = ("mobilenetv2", "resnet50", "efficientnet_lite0"),
        n_images: int | None = None, input_size=224, batch_size: int = 32,
        repeats: int | None = None, workdir: str | Path | None = None, jax: bool | None = None,
        progress: Callable[[str], None] | None = None) -> list[dict]:
    """Measure every backbone; returns one dict per backbone (see :func:`measure_backbone`).

    ``n_images=None`` uses 256 images for light backbones (< 5 M parameters) and 64 for
    the others (32 with ``quick``); ``repeats=None`` is 3 (1 with ``quick``); ``jax=None``
    measures the JAX route when JAX is installed, except with ``quick``. The PNG files go
    to ``workdir`` or a temporary folder that is removed afterwards.
    """
    from .features.backbones import get_backbone

    repeats = repeats or (1 if quick else 3)
    jax = (not quick) if jax is None else jax
    with tempfile.TemporaryDirectory(prefix="bench-perf-deep-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        rows = []
        for name in backbones:
            bb = get_backbone(name)
            n = n_images or (32 if quick else (256 if bb.params_m < LIGHT_PARAMS_M else 64))
            files = write_images(folder / f"png_{n}", n)
            if progress is not None:
                progress(f"{name}: {n} images, {repeats} repeats")
            rows.append(measure_backbone(name, files, input_size, batch_size, repeats, folder, jax))
        return rows


def table_rows(r: dict) -> list[dict]:
    """One measurement as the ratio rows of docs/BENCHMARKS.md (section ``deep``)."""
    size = "x".join(str(v) for v in r.get("input_size", []))
    what = f"{r['backbone']} {size}"
    load = f"load avg {r.get('load_average_1min')}"
    common = {"section": "deep", "n_images": r["n_images"]}
    fwd = "TensorFlow's compiled forward pass (frozen tf.function) alone on preloaded uint8 tensors"
    note = f"{r['bench_images_per_s']} img/s, batch {r['batch_size']}, {r.get('weights')}, {r.get('forward')}, {load}"
    predict = "model.predict on the same images preloaded in RAM (decode+resize+preprocess not timed)"
    rows = [
        {**common, "what": f"{what}: files on disk -> embeddings, engine keras", "bench_s": r["bench_s"],
         "baseline_s": r["predict_s"], "ratio": r["speedup_vs_predict"], "note": note,
         "baseline": predict, "target": r.get("target_vs_predict")},
    ]
    for name, e in (r.get("engines") or {}).items():
        if e.get("default") and "files_s" in e:  # what `bench run` does on a CPU
            rows.append({**common, "bench_s": e["files_s"], "baseline_s": r["predict_s"],
                         "what": f"{what}: files on disk -> embeddings, default CPU engine ({name})",
                         "ratio": e["ratio_files_vs_predict"], "baseline": predict,
                         "target": r.get("target_vs_predict"),
                         "note": f"{e['files_images_per_s']} img/s, auto: {r.get('auto_how')}, {load}"})
    rows += [
        {**common, "what": f"{what}: files on disk -> embeddings, engine keras", "bench_s": r["bench_s"],
         "baseline_s": r["forward_s"], "ratio": r["ratio_vs_forward"], "note": note,
         "baseline": "the compiled forward pass alone on preloaded tensors",
         "target": r.get("target_vs_forward")},
        {**common, "what": f"{what}: model.predict, preloaded float32", "bench_s": r["predict_s"],
         "baseline_s": r["forward_s"], "ratio": r.get("predict_ratio_vs_forward"), "baseline": fwd,
         "note": f"{load}"},
    ]
    for name, e in (r.get("engines") or {}).items():
        if "files_s" not in e:
            rows.append({**common, "what": f"{what}: engine {name}", "bench_s": None, "baseline_s": None,
                         "ratio": None, "baseline": fwd,
                         "note": e.get("skipped") or f"fell back to {e.get('used')}: {e.get('fallback')}"})
            continue
        mark = " (default CPU engine)" if e.get("default") else ""
        status = "" if "met" not in e else f"; target {'met' if e['met'] else 'NOT met'}"
        diff = f"max abs diff vs keras {e['max_abs_diff']:.1e} (rel {e['max_rel_diff']:.1e})"
        bound = (f", at most {e['files_bound_vs_forward']:.2f}x with decoding "
                 f"({r.get('decode_cpu_ms_per_image')} ms of CPU per image) sharing the cores"
                 if e.get("files_bound_vs_forward") else "")
        rows.append({**common, "what": f"{what}: files on disk -> embeddings, engine {name}{mark}",
                     "bench_s": e["files_s"], "baseline_s": r["forward_s"],
                     "ratio": e["ratio_files_vs_forward"], "baseline": fwd, "target": e.get("target"),
                     "note": f"{e['files_images_per_s']} img/s, {e['how']}, {diff}{bound}, {load}{status}"})
        rows.append({**common, "what": f"{what}: engine {name} alone, preloaded uint8",
                     "bench_s": e["alone_s"], "baseline_s": r["forward_s"],
                     "ratio": e["ratio_alone_vs_forward"], "baseline": fwd, "note": load})
    j = r.get("jax")
    if j and "error" not in j:
        diff = f"max abs diff vs TensorFlow {j['max_abs_diff']:.1e} (rel {j['max_rel_diff']:.1e})"
        rows.append({"section": "deep", "n_images": j["n_images"],
                     "what": f"{what}: files on disk -> embeddings, KERAS_BACKEND=jax (CPU)",
                     "bench_s": j["jax_s"], "baseline_s": round(r["forward_s"] * j["n_images"] / r["n_images"], 3),
                     "ratio": j["ratio_vs_forward"], "baseline": fwd + " (same images, scaled)",
                     "note": f"{j['images_per_s']} img/s, {j['how']}, {diff}, subprocess"})
    elif j:
        rows.append({"section": "deep", "what": f"{what}: KERAS_BACKEND=jax", "bench_s": None,
                     "baseline_s": None, "ratio": None, "baseline": fwd, "note": f"failed: {j['error']}"})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of :func:`run`'s results."""
    lines = [f"{'backbone':18s} {'method':34s} {'seconds':>8s} {'img/s':>7s} {'x forward':>9s}  max abs diff"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        n = r["n_images"]
        entries = [("forward (baseline)", r["forward_s"], 1.0, None),
                   ("model.predict", r["predict_s"], r["predict_ratio_vs_forward"], r["max_abs_diff_vs_predict"]),
                   ("files, engine keras", r["bench_s"], r["ratio_vs_forward"], 0.0)]
        for name, e in (r.get("engines") or {}).items():
            if "files_s" in e:
                mark = " *" if e.get("default") else ""
                entries.append((f"files, engine {name}{mark}", e["files_s"], e["ratio_files_vs_forward"],
                                e["max_abs_diff"]))
                entries.append((f"alone, engine {name}", e["alone_s"], e["ratio_alone_vs_forward"], None))
        j = r.get("jax")
        if j and "error" not in j:
            entries.append((f"files, jax ({j['n_images']} images)", j["jax_s"], j["ratio_vs_forward"],
                            j["max_abs_diff"]))
        for label, s, ratio, diff in entries:
            k = j["n_images"] if label.startswith("files, jax") else n
            lines.append(f"{r['backbone']:18s} {label:34s} {s:8.3f} {k / s:7.1f} {ratio:9.2f}  "
                         + ("" if diff is None else f"{diff:.1e}"))
    lines.append("x forward = TensorFlow's compiled forward pass on preloaded tensors / method (per image); "
                 "* = default CPU engine")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual use: python -m bench.perf_deep [--quick]
    logging.basicConfig(level=logging.INFO)
    results = run(quick="--quick" in sys.argv)
    print(format_rows(results))
    print(json.dumps(results, indent=1, default=str))

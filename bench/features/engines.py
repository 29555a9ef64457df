"""Inference engines for frozen-CNN embeddings: Keras, ONNX Runtime, OpenVINO.

The ``cnn`` extractor (:mod:`bench.features.deep`) computes the same embeddings with
any of these; ``engine`` picks which:

* ``keras`` -- the Keras model itself, through bench's compiled call (a ``tf.function``
  on TensorFlow, a ``jax.jit`` of the BatchNorm-folded stateless call on JAX,
  :mod:`bench.features.jax_forward`);
* ``onnxruntime`` -- the exact no-top model *with its pooling and the backbone's
  preprocessing* (uint8 RGB in, embeddings out) exported once with tf2onnx
  (opset :data:`OPSET`) and run by ONNX Runtime's CPU provider, intra-op threads =
  usable cores, all graph optimisations (BatchNorm fused into convolutions, conv +
  activation fusion, NCHWc layouts);
* ``openvino`` -- the same ONNX file compiled by OpenVINO for the CPU (f32 inference
  precision, threads = cores);
* ``auto`` (default) -- on a CPU with the TensorFlow backend the fastest installed
  engine of :data:`AUTO_CPU`, timed on this CPU once per exported model (:func:`speed`),
  else ``keras`` (GPUs, other Keras backends, ``precision: mixed``). The extractor starts on
  Keras and switches after :data:`bench.features.deep.ENGINE_MIN_IMAGES` images (the
  export costs seconds), or at once when the model's export is cached already.

Exported files are cached under ``<bench cache>/onnx/`` (``cache.dir`` of the run,
``$BENCH_CACHE_DIR`` or ``~/.cache/bench``), named by a hash of the model's identity
(backbone, weights provenance -- packaged checkpoint sha256, Keras cache file size and
mtime, or seed -- input size, layer, pooling, preprocessing, precision, and the Keras,
TensorFlow and tf2onnx versions and the opset). Before first use each (file, runtime)
pair is checked: the embeddings of :data:`CHECK_BATCH` deterministic images must equal
the Keras ones within :data:`CHECK_TOL` (max abs, after pooling). The result is kept
beside the file (``<key>.check.json``) so later extractors neither re-export nor
re-check. When the export, the runtime or the check fails, one WARNING says why and
the extractor uses ``keras``; the engine actually used is what the run's provenance
(``features.json``: ``describe.engine``) records.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("auto", "keras", "onnxruntime", "openvino")
AUTO_CPU = ("onnxruntime", "openvino")
"""Engines ``auto`` may use on a CPU. When several are installed, each is timed once per
exported model on this CPU (:func:`speed`, kept beside the file) and the fastest is used:
which one wins depends on the network and the CPU (docs/BENCHMARKS.md: ONNX Runtime for
MobileNetV2 and EfficientNet-Lite0, OpenVINO for ResNet50 on the 2-core machine)."""
SPEED_IMAGES = 16
SPEED_ROUNDS = 3
OPSET = 17
CHECK_TOL = 1e-4
CHECK_ULPS = 16
"""The check's tolerance is ``CHECK_TOL`` (max abs), widened to ``CHECK_ULPS`` float32
spacings at the largest embedding value where that is larger (:func:`tolerance`): ResNet50's
pooled features reach ~300, where one float32 step is 3.1e-5 and TensorFlow's own BatchNorm-
folded graph differs from its unfolded one by 3.5e-4 (docs/BENCHMARKS.md)."""
CHECK_BATCH = 4
INPUT_NAME = "images"

stats = {"exports": 0, "checks": 0}
"""Counters of this process (the tests count exports to see the cache work)."""

_lock = threading.Lock()
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino"),
             "tf2onnx": ("tf2onnx", "tf2onnx")}


class EngineUnavailable(RuntimeError):
    """An engine cannot run here (missing package, wrong backend); the caller falls back."""


@dataclass
class EngineChoice:
    """What the extractor runs: ``forward(uint8 NHWC batch) -> float32 (n, d)``."""

    name: str                       # "keras" | "onnxruntime" | "openvino" (the one used)
    forward: Callable[[np.ndarray], np.ndarray] | None
    how: str                        # route, for logs and benchmarks
    requested: str = "auto"
    onnx_path: str | None = None
    max_abs_diff: float | None = None
    fallback: str | None = None     # why keras was used instead of the requested engine


# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------
def check_engine(value, where: str = "feature 'cnn', parameter 'engine'") -> str:
    """``value`` if it names an engine, else a :class:`ConfigError` saying which exist."""
    if not isinstance(value, str) or value not in ENGINES:
        from ..errors import did_you_mean
        hint = did_you_mean(value, ENGINES) + ("auto = the faster of ONNX Runtime and OpenVINO on "
                                               "a CPU, Keras on a GPU; keras = the Keras model itself")
        raise ConfigError(f"{where}: engine={value!r} is not one of {', '.join(ENGINES)}", hint)
    return value


def installed(name: str) -> bool:
    """Whether the Python package behind engine (or exporter) ``name`` can be imported."""
    module = _PACKAGES.get(name, (name, name))[1]
    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def resolve(engine: str, device: str, backend: str, precision: str = "float32") -> tuple[str, str | None]:
    """``(engine to try, why not the requested one or None)``; no package is imported."""
    check_engine(engine)
    if engine == "keras":
        return "keras", None
    if engine == "auto":
        if device != "CPU" or backend != "tensorflow" or precision != "float32":
            return "keras", None
        for name in AUTO_CPU:
            if installed(name) and installed("tf2onnx"):
                return name, None
        log.debug("engine auto: none of %s (with tf2onnx) installed; using keras", AUTO_CPU)
        return "keras", None
    if backend != "tensorflow":
        return "keras", (f"engine {engine} exports with tf2onnx, which needs the TensorFlow backend "
                         f"(KERAS_BACKEND={backend})")
    if precision != "float32":
        return "keras", f"engine {engine} runs float32 models only (precision={precision})"
    for pkg in (engine, "tf2onnx"):
        if not installed(pkg):
            extra = "openvino" if pkg == "openvino" else None
            how = f"pip install 'bench[{extra}]'" if extra else f"pip install {pkg}"
            return "keras", f"engine {engine} needs the package {pkg}, which is not installed ({how})"
    return engine, None


# ---------------------------------------------------------------------------------------
# export and its cache
# ---------------------------------------------------------------------------------------
def onnx_dir() -> Path:
    """``<bench cache>/onnx``: exported models and their check results."""
    from .. import weights
    return weights.bench_weights_dir().parent / "onnx"


def model_key(identity: dict) -> str:
    """File stem of the exported model of ``identity`` (plus exporter and framework versions)."""
    full = dict(identity, opset=OPSET, tf2onnx=_version("tf2onnx"), keras=_version("keras"),
                tensorflow=_version("tensorflow") if _version("tensorflow") != "absent"
                else _version("tensorflow-cpu"), input="uint8 NHWC RGB")
    text = json.dumps(full, sort_keys=True, default=str)
    name = str(identity.get("backbone", "model"))
    return f"{name}-{hashlib.blake2b(text.encode(), digest_size=10).hexdigest()}"


@contextlib.contextmanager
def _quiet_tf2onnx():
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(model, input_hw, preprocess: Callable | None, path: Path) -> Path:
    """Export ``uint8 batch -> preprocess -> model`` to ``path`` (tf2onnx, opset 17).

    Written under a unique temporary name and renamed into place, so concurrent exports
    of the same model never leave a partial file.
    """
    import tensorflow as tf
    import tf2onnx
    spec = tf.TensorSpec((None, int(input_hw[0]), int(input_hw[1]), 3), tf.uint8, name=INPUT_NAME)

    def infer(x):
        x = tf.cast(x, tf.float32)
        if preprocess is not None:
            x = preprocess(x)
        return model(x, training=False)
    fn = tf.function(infer, input_signature=[spec], autograph=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.onnx")
    try:
        with _quiet_tf2onnx():
            tf2onnx.convert.from_function(fn, input_signature=[spec], opset=OPSET, output_path=str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with _lock:
        stats["exports"] += 1
    log.info("exported %s to %s (%.1f MB)", model.name, path, path.stat().st_size / 1e6)
    return path


def is_exported(identity: dict) -> bool:
    """Whether the export of ``identity`` is in the cache already (no import, no build)."""
    path = onnx_dir() / f"{model_key(identity)}.onnx"
    return path.is_file() and path.stat().st_size > 0


def ensure_onnx(model, input_hw, preprocess, identity: dict) -> Path:
    """The cached export of ``identity``, made now when absent."""
    path = onnx_dir() / f"{model_key(identity)}.onnx"
    if path.is_file() and path.stat().st_size > 0:
        log.debug("reusing exported model %s", path)
        return path
    return export_onnx(model, input_hw, preprocess, path)


# ---------------------------------------------------------------------------------------
# runtimes
# ---------------------------------------------------------------------------------------
def onnxruntime_forward(path: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """An ONNX Runtime CPU session of ``path`` as ``fn(uint8 batch) -> float32``."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # threads that spin between runs steal the core the image loader needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        out = session.run(None, {name: np.ascontiguousarray(batch, dtype=np.uint8)})[0]
        return np.asarray(out, dtype=np.float32)
    return forward, f"onnxruntime {ort.__version__} (CPU, {so.intra_op_num_threads} threads)"


def openvino_forward(path: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The ONNX file compiled by OpenVINO for the CPU (f32) as ``fn(uint8 batch) -> float32``."""
    import openvino as ov
    core = ov.Core()
    n = int(threads)
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": n,
                                                     "INFERENCE_PRECISION_HINT": "f32",
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def forward(batch: np.ndarray) -> np.ndarray:
        res = request.infer({0: np.ascontiguousarray(batch, dtype=np.uint8)})
        return np.array(res[output], dtype=np.float32)
    return forward, f"openvino {ov.__version__.split('-')[0]} (CPU, {n} threads)"


RUNTIMES = {"onnxruntime": onnxruntime_forward, "openvino": openvino_forward}


# ---------------------------------------------------------------------------------------
# the equality check
# ---------------------------------------------------------------------------------------
def reference_batch(input_hw, n: int = CHECK_BATCH, seed: int = 0) -> np.ndarray:
    """``n`` deterministic uint8 RGB images: smooth gradients with noise and a flat one."""
    h, w = int(input_hw[0]), int(input_hw[1])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 255 * rng.random(3)
        img = base + rng.normal(0, 30 * (i % 3), (h, w, 3))
        out[i] = np.clip(img if i < n - 1 or n == 1 else np.full_like(img, 128), 0, 255)
    return out


def _check_file(path: Path) -> Path:
    return path.with_suffix(".check.json")


def _read_check_file(path: Path) -> dict:
    """The JSON beside the exported model ``path`` (``{}`` when absent or unreadable)."""
    try:
        data = json.loads(_check_file(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached_check(path: Path, engine: str) -> dict | None:
    hit = _read_check_file(path).get(f"{engine}=={_version(engine)}")
    return hit if isinstance(hit, dict) else None


def _update_check_file(path: Path, update: Callable[[dict], None]) -> None:
    """Apply ``update`` to the JSON beside the exported model ``path`` and write it back
    atomically (a unique temporary name, then a rename)."""
    target = _check_file(path)
    with _lock:
        data = _read_check_file(path)
        update(data)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, target)


def _store_check(path: Path, engine: str, result: dict) -> None:
    _update_check_file(path, lambda data: data.__setitem__(f"{engine}=={_version(engine)}", result))


def tolerance(reference) -> float:
    """The largest max-abs difference accepted from embeddings whose Keras values are
    ``reference``: :data:`CHECK_TOL`, or :data:`CHECK_ULPS` float32 spacings at the largest
    absolute value when that is larger (float32 cannot do better at that magnitude)."""
    ref = np.asarray(reference, dtype=np.float32)
    top = float(np.abs(ref).max()) if ref.size and np.isfinite(ref).all() else 0.0
    return max(CHECK_TOL, CHECK_ULPS * float(np.spacing(np.float32(top))))


def compare(forward, keras_forward, input_hw) -> tuple[float, float]:
    """``(max abs difference, tolerance)`` of two forward passes on :func:`reference_batch`."""
    x = reference_batch(input_hw)
    with _lock:
        stats["checks"] += 1
    ref = np.asarray(keras_forward(x))
    return float(np.max(np.abs(np.asarray(forward(x)) - ref))), tolerance(ref)


def checked(engine: str, path: Path, forward, keras_forward, input_hw) -> float:
    """The check of (``path``, ``engine``), run once and remembered beside the file.

    Raises :class:`EngineUnavailable` when the embeddings differ by more than
    :func:`tolerance`."""
    hit = _cached_check(path, engine)
    if hit is not None and hit.get("ok"):
        return float(hit["max_abs_diff"])
    diff, tol = compare(forward, keras_forward, input_hw)
    ok = bool(np.isfinite(diff) and diff <= tol)
    _store_check(path, engine, {"max_abs_diff": diff, "ok": ok, "tol": tol, "n_images": CHECK_BATCH})
    if not ok:
        raise EngineUnavailable(f"its embeddings differ from Keras' by {diff:.3g} (max abs) on "
                                f"{CHECK_BATCH} check images, above the tolerance {tol:.3g}")
    return diff


def _speed_key(threads: int) -> str:
    from ..provenance import cpu_name
    return f"{cpu_name()}|threads={int(threads)}"


def stored_speed(names, path: Path, threads: int) -> dict[str, float] | None:
    """Milliseconds per image of every engine in ``names`` as :func:`speed` measured them
    for ``path`` on this CPU (same engine versions and threads), or ``None`` if any is
    missing."""
    known = _read_check_file(path).get("speed", {})
    known = known.get(_speed_key(threads), {}) if isinstance(known, dict) else {}
    keys = {name: f"{name}=={_version(name)}" for name in names}
    if not isinstance(known, dict) or not all(k in known for k in keys.values()):
        return None
    return {name: float(known[k]) for name, k in keys.items()}


def speed(runs: dict, path: Path, input_hw, threads: int) -> dict[str, float]:
    """Milliseconds per image of each engine in ``runs`` (``{name: forward}``) on this CPU,
    for the model at ``path``: :data:`SPEED_IMAGES` check images, the engines interleaved
    :data:`SPEED_ROUNDS` times after a warm-up, the best round of each. Measured once per
    (file, engine versions, CPU, threads) and kept beside the file (:func:`stored_speed`)."""
    import time
    known = stored_speed(runs, path, threads)
    if known is not None:
        return known
    x = reference_batch(input_hw, SPEED_IMAGES, seed=1)
    best = {name: float("inf") for name in runs}
    for fn in runs.values():
        fn(x)  # warm-up
    for _ in range(SPEED_ROUNDS):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn(x)
            best[name] = min(best[name], time.perf_counter() - t0)
    ms = {name: round(1000 * t / len(x), 3) for name, t in best.items()}
    key, names = _speed_key(threads), {name: f"{name}=={_version(name)}" for name in runs}
    try:
        _update_check_file(path, lambda data: data.setdefault("speed", {}).setdefault(key, {}).update(
            {names[n]: v for n, v in ms.items()}))
    except OSError as exc:  # a read-only cache: timed again next time, nothing lost
        log.debug("engine timings not stored beside %s: %s", path, exc)
    return ms


def _fastest(path: Path, candidates: list[str], *, keras_forward, input_hw, threads: int,
             label: str) -> tuple[str, Callable, str, float]:
    """``(name, forward, how, max_abs_diff)`` of the fastest checked engine of ``candidates``
    (``auto`` with several installed); raises :class:`EngineUnavailable` if none works.

    Timed here before (:func:`stored_speed`): only the fastest engine that loads and passes
    its check is loaded. Otherwise every candidate is loaded, checked and timed."""
    known = stored_speed(candidates, path, threads)
    ready, failed = {}, []
    for name in sorted(candidates, key=known.get) if known else candidates:
        try:
            forward, how = RUNTIMES[name](path, threads)
            ready[name] = (forward, how, checked(name, path, forward, keras_forward, input_hw))
        except Exception as exc:  # noqa: BLE001 - one engine failing leaves the others
            failed.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if known:
            break
    if not ready:
        raise EngineUnavailable("; ".join(failed))
    ms = known or (speed({n: r[0] for n, r in ready.items()}, path, input_hw, threads)
                   if len(ready) > 1 else None)
    name = min(ready, key=ms.get) if ms else next(iter(ready))
    forward, how, diff = ready[name]
    if ms:
        timing = ", ".join(f"{n} {ms[n]:.2f}" for n in sorted(ms))
        log.info("%s: engine auto: %s ms per image on this CPU; using %s", label, timing, name)
        how = f"{how}, fastest here (auto: {timing} ms/image)"
    return name, forward, how, diff


# ---------------------------------------------------------------------------------------
# choosing
# ---------------------------------------------------------------------------------------
def choose(engine: str, *, model, input_hw, preprocess, identity: dict, keras_forward,
           keras_how: str, device: str, backend: str, threads: int, precision: str = "float32",
           label: str = "cnn") -> EngineChoice:
    """The engine the extractor runs (``engine`` after resolution, export and check).

    Any failure of a non-Keras engine logs one WARNING and returns the Keras choice.
    """
    name, why = resolve(engine, device, backend, precision)
    keras_choice = EngineChoice("keras", keras_forward, keras_how, requested=engine)
    if why is not None:
        log.warning("%s: %s; using keras", label, why)
        keras_choice.fallback = why
        return keras_choice
    if name == "keras":
        return keras_choice
    candidates = [name]
    if engine == "auto":  # every installed engine auto may use, timed on this CPU
        candidates = [n for n in AUTO_CPU if installed(n)] or [name]
    try:
        path = ensure_onnx(model, input_hw, preprocess, identity)
        if len(candidates) > 1:
            name, forward, how, diff = _fastest(path, candidates, keras_forward=keras_forward,
                                                input_hw=input_hw, threads=threads, label=label)
        else:
            forward, how = RUNTIMES[name](path, threads)
            diff = checked(name, path, forward, keras_forward, input_hw)
    except Exception as exc:  # noqa: BLE001 - any failure of the optional engine falls back
        why = f"engine {name} failed ({type(exc).__name__}: {str(exc)[:300]})"
        log.warning("%s: %s; using keras", label, why)
        keras_choice.fallback = why
        return keras_choice
    log.info("%s: %s on %s, embeddings within %.2g of Keras (max abs)", label, how, path.name, diff)
    return EngineChoice(name, forward, how, requested=engine, onnx_path=str(path), max_abs_diff=diff)

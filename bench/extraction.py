"""Stage "extract features": each ``features:`` entry built into a :class:`Feature`
and its per-image matrix (a :class:`FeatureMatrix`) loaded from the feature cache or
computed once, in chunks, in parallel where the extractor allows it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import records as rec
from .cache import make_key
from .errors import BenchError
from .imaging import Prepare
from .parallel import n_workers
from .registry import FEATURES
from .runfolder import FEATURES_META
from .weights import weights_of

log = logging.getLogger(__name__)

Progress = Callable[[str, int], object]  # (description, total) -> object with update(n), close()


# --------------------------------------------------------------------------- typed values
@dataclass
class Feature(Mapping):
    """One ``features:`` entry, built: the extractor split into its per-image ``stage``
    (cached) and its ``fold_stage`` (fitted inside each fold's pipeline, or ``None``).

    Also readable as a mapping (``f["stage"]``, ``f.get("family")``), the form the
    explain and counting stages (and their tests' stand-ins) take."""

    label: str
    spec: dict
    extractor: Any
    stage: Any
    fold_stage: Any
    prepare: Prepare
    family: str

    def __getitem__(self, key: str):
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def cache_key(self, dataset) -> str:
        return make_key(dataset.fingerprint(), self.stage.cache_key(), self.prepare.key())

    def describe(self) -> dict:
        return self.extractor.describe() if hasattr(self.extractor, "describe") else {}


@dataclass
class FeatureMatrix:
    """The per-image output of a feature over the whole dataset: a float32 ``(n, d)``
    matrix (possibly memory-mapped from the cache) or an object array when a fold
    stage follows (e.g. SIFT descriptor sets)."""

    feature: Feature
    X: Any
    ms_per_image: float | None
    cached: bool

    @property
    def dense(self) -> bool:
        return self.X.dtype != object and self.X.ndim == 2

    def meta(self) -> dict:
        """The feature's entry of ``features.json``."""
        f, desc = self.feature, self.feature.describe()
        return {"name": f.spec["name"], "family": f.family, "weights": weights_of(desc),
                "weights_file": desc.get("weights_file"), "engine": desc.get("engine"), "describe": desc,
                "n_features": int(self.X.shape[1]) if self.dense else None,
                "extract_ms_per_image": self.ms_per_image, "cached": self.cached,
                "params": f.spec["params"], "prepare": f.spec["prepare"]}


def _prepare_of(prep: dict) -> Prepare:
    return Prepare(prep["color"], tuple(prep["size"]) if prep["size"] else None,
                   tuple(prep["depth_range"]) if isinstance(prep["depth_range"], list)
                   else prep["depth_range"], prep["interpolation"],
                   tuple(prep["crop"]) if prep.get("crop") else None)


def build_feature(spec: dict, cfg: dict) -> Feature:
    """The :class:`Feature` of one validated ``features:`` entry (the label gains
    ``[random-init]`` when its CNN weights are random)."""
    extractor = FEATURES.create(spec["name"], where=f"features ({spec['label']})", **spec["params"])
    if spec["name"] == "cnn" and "on_missing_weights" in extractor.get_params() \
            and "on_missing_weights" not in spec["params"]:
        extractor.set_params(on_missing_weights=cfg["on_missing_weights"])
    if spec["name"] == "cnn" and "engine" in extractor.get_params() and "engine" not in spec["params"]:
        extractor.set_params(engine=cfg.get("engine", "auto"))
    stage, fold_stage = extractor.stages()
    weights = weights_of(extractor.describe()) if hasattr(extractor, "describe") else None
    return Feature(label=rec.tagged(spec["label"], weights), spec=spec, extractor=extractor, stage=stage, fold_stage=fold_stage,
                   prepare=_prepare_of(spec["prepare"]), family=getattr(extractor, "family", "handcrafted"))


# --------------------------------------------------------------------------- computing
def parallel_safe(stage) -> bool:
    """Whether a per-image stage may run in several worker processes: the extractor's
    own ``parallel_safe`` (:class:`bench.features.base.Extractor`), else hand-crafted
    stages only."""
    flag = getattr(stage, "parallel_safe", None)
    if flag is not None:
        return bool(flag)
    return getattr(stage, "family", "handcrafted") == "handcrafted"


class _LoaderView:
    """What a worker needs of a dataset: ``load(i)``. Shipping the whole dataset (its
    per-image keys, ids and metadata: ~7 MB for 100,000 images) with every chunk made
    the pickling cost grow with the dataset size times the number of chunks."""

    def __init__(self, loader):
        self.loader = loader

    def load(self, i):
        return self.loader(int(i))


def _extract_chunk(stage, dataset, prepare: Prepare, idx, limit_threads: bool):
    if limit_threads:
        import cv2
        cv2.setNumThreads(1)
    t0 = time.perf_counter()
    images = [prepare(dataset.load(i)) for i in idx]
    out = stage.transform(images)
    return out, time.perf_counter() - t0


def _as_output(parts: list):
    if parts and isinstance(parts[0], np.ndarray) and parts[0].dtype == object:
        out = np.empty(sum(len(p) for p in parts), dtype=object) if parts[0].ndim == 1 else None
        if out is None:
            return np.concatenate(parts, axis=0)
        i = 0
        for p in parts:
            for item in p:
                out[i] = item
                i += 1
        return out
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False)


def _chunk_results(stage, dataset, prepare, chunks, workers: int, backend: str):
    from joblib import Parallel, delayed
    if workers > 1 and len(chunks) > 1:
        source = _LoaderView(dataset.loader) if callable(getattr(dataset, "loader", None)) else dataset
        return Parallel(n_jobs=workers, backend=None if backend == "dask" else backend,
                        return_as="generator")(
            delayed(_extract_chunk)(stage, source, prepare, idx, True) for idx in chunks)
    return (_extract_chunk(stage, dataset, prepare, idx, False) for idx in chunks)


def compute_per_image(stage, dataset, prepare: Prepare, *, chunk_size: int = 32, n_jobs: int = 1,
                      backend: str = "loky", progress: Progress | None = None, desc: str = "",
                      out_path: Path | None = None):
    """Apply a per-image stage to every image in chunks; return ``(X, seconds_of_work)``.

    ``seconds_of_work`` sums the chunks' own times (single-worker equivalent), so
    ms/image does not depend on ``n_jobs``. Dense results stream into a
    memory-mapped ``.npy`` at ``out_path`` when given, so memory stays bounded.
    """
    n = len(dataset)
    safe = parallel_safe(stage)
    workers = n_workers(n_jobs) if safe and backend != "sequential" else 1
    if not safe:  # one process, large chunks: the extractor batches and prefetches inside
        chunk_size = max(chunk_size, getattr(stage, "preferred_chunk", 256))
    chunks = [np.arange(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    bar = progress(desc, n) if progress else None
    total_s = 0.0
    parts, mm, row = [], None, 0
    try:
        for out, secs in _chunk_results(stage, dataset, prepare, chunks, workers, backend):
            total_s += secs
            if out_path is not None and isinstance(out, np.ndarray) and out.dtype != object \
                    and out.ndim == 2:
                if mm is None:
                    mm = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32,
                                                   shape=(n, out.shape[1]))
                mm[row:row + len(out)] = out
                row += len(out)
            else:
                parts.append(out)
            if bar is not None:
                bar.update(len(out))
    finally:
        if bar is not None:
            bar.close()
    if mm is not None:
        mm.flush()
        return mm, total_s
    return _as_output(parts), total_s


def load_or_extract(feature: Feature, dataset, cache, par: dict,
                    progress: Progress | None = None) -> FeatureMatrix:
    """The feature's matrix from the cache, or computed and stored there (under the
    cache's per-key lock, so two runs compute a key once)."""
    key = feature.cache_key(dataset)
    label, stage = feature.label, feature.stage
    with cache.lock(key):
        hit = cache.get(key, len(dataset), label)
        if hit is not None:
            X, meta = hit
            log.info("feature %s: %d x %s from cache", label, len(X),
                     X.shape[1] if getattr(X, "ndim", 1) == 2 else "var")
            return FeatureMatrix(feature, X, meta.get("ms_per_image"), cached=True)
        t0 = time.perf_counter()
        tmp_out = cache.stream_path(key) if cache.enabled and getattr(stage, "dense_output", True) else None
        X, work_s = compute_per_image(
            stage, dataset, feature.prepare, chunk_size=par["chunk_size"], n_jobs=par["n_jobs"],
            backend=par["backend"], progress=progress, desc=f"extract {label}", out_path=tmp_out)
        ms = 1000.0 * work_s / max(1, len(dataset))
        wall = time.perf_counter() - t0
        meta = {"ms_per_image": ms, "wall_s": wall, "label": label, "extractor": stage.cache_key()}
        if isinstance(X, np.memmap):
            X.flush()
            del X
            X = cache.commit_stream(key, meta)
        else:
            if tmp_out is not None:
                cache.discard_stream(key)
            cache.put(key, X, meta)
        log.info("feature %s: %.2f ms/image (%.1f s wall)", label, ms, wall)
        return FeatureMatrix(feature, X, ms, cached=False)


# --------------------------------------------------------------------------- the stage
def extract_features(ctx, needed: Callable[[Feature], bool]) -> None:
    """Put the matrices of the built features (``ctx.features``) that the run needs
    (``needed(feature)``) into ``ctx.matrices``; ``features.json`` is updated after each.
    A failing extractor fails its cells (records), not the run."""
    meta = dict(ctx.folder.read_json(FEATURES_META, {}) or {})
    ctx.features_meta = meta
    ctx.cache.ensure_usable({f.cache_key(ctx.dataset): (f.label, len(ctx.dataset))
                             for f in ctx.features.values() if needed(f)})
    for feature in list(ctx.features.values()):
        if not needed(feature):
            continue
        try:
            fm = load_or_extract(feature, ctx.dataset, ctx.cache, ctx.config["parallel"], ctx.progress)
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken extractor fails its cells, not the run
            log.error("feature %s failed: %s: %s", feature.label, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            _record_failed_extraction(ctx, feature, f"extraction: {type(exc).__name__}: {exc}")
            continue
        if fm.X.dtype != object and fm.X.ndim == 2 and not np.all(np.isfinite(fm.X)):
            n_bad = int((~np.isfinite(np.asarray(fm.X))).any(axis=1).sum())
            log.warning("feature %s: %d images have NaN/inf values; cells will fail", feature.label, n_bad)
        ctx.matrices[feature.label] = fm
        meta[feature.label] = fm.meta()
        ctx.folder.write_json(FEATURES_META, meta)


def _record_failed_extraction(ctx, feature: Feature, error: str) -> None:
    done = ctx.done
    for c in ctx.config["classifiers"]:
        for s in ctx.plan.splits:
            cid = rec.cell_id(feature.label, c["label"], s.index)
            if cid not in done:
                ctx.folder.append(rec.make_record(
                    run_id=ctx.run_id, dataset=ctx.dataset.name, feature=feature.label,
                    family=feature.family, classifier=c["label"], split=s.index, repeat=s.repeat,
                    fold=s.fold, status="failed", error=error, cell_id=cid, time=rec.now()))

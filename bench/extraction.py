"""Stage "extract features": each ``features:`` entry built into a :class:`Feature`
and its per-image matrix (a :class:`FeatureMatrix`) loaded from the feature cache or
computed once, in chunks, in parallel where the extractor allows it.

The parallel-safe (hand-crafted) features missing from the cache are computed together,
in one pass (:func:`extract_together`, :func:`compute_many`): each task is a range of
image indices and a light loader; the worker reads and decodes each image once, runs
every feature on it and writes the rows straight into that feature's memory-mapped
``.npy`` in the cache, so the parent only schedules. The cache still holds one matrix per
feature under the same key as when features were extracted one at a time. CNN features
run one at a time in the parent (:func:`compute_per_image`).
"""
from __future__ import annotations

import contextlib
import logging
import statistics
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
    return Feature(label=rec.tagged(spec["label"], weights), spec=spec, extractor=extractor, stage=stage,
                   fold_stage=fold_stage, prepare=_prepare_of(spec["prepare"]),
                   family=getattr(extractor, "family", "handcrafted"))


# --------------------------------------------------------------------------- computing
def parallel_safe(stage) -> bool:
    """Whether a per-image stage may run in several worker processes: the extractor's
    own ``parallel_safe`` (:class:`bench.features.base.Extractor`), else hand-crafted
    stages only."""
    flag = getattr(stage, "parallel_safe", None)
    if flag is not None:
        return bool(flag)
    return getattr(stage, "family", "handcrafted") == "handcrafted"


# ---- one pass of several stages: workers read and decode their own images, once
PROBE_IMAGES = 4        # images of each worker's first task, which measures the per-image cost
TASK_SECONDS = 0.3      # work aimed at per task (chunk_size: auto)
TASKS_PER_WORKER = 4    # with several workers, at least this many tasks each (no idle tail)
MAX_CHUNK = 1024        # images per task at most (memory holds a task's images)


def choose_chunk_size(cost_s: float, n_left: int, workers: int, target_s: float = TASK_SECONDS,
                      min_tasks: int = TASKS_PER_WORKER, max_size: int = MAX_CHUNK) -> int:
    """Images per task for ``parallel.chunk_size: auto``, from the measured seconds per image
    ``cost_s``: about ``target_s`` of work per task (the cost of scheduling a task is then
    small against it), and with several workers at least ``min_tasks`` tasks per worker for
    the ``n_left`` images, so the last tasks end close together."""
    size = int(target_s / cost_s) if cost_s > 0 else max_size
    size = min(max(1, size), max_size, max(1, n_left))
    if workers > 1:
        size = min(size, max(1, -(-n_left // (min_tasks * workers))))
    return size


def _ranges(start: int, stop: int, size: int) -> list:
    return [np.arange(s, min(s + size, stop)) for s in range(start, stop, size)]


def _write_rows(path: str, start: int, X) -> None:
    """A task's rows straight into the memory-mapped ``.npy`` the parent created."""
    X = np.asarray(X)
    if X.dtype == object or X.ndim != 2:
        raise ValueError(f"rows of shape {X.shape} ({X.dtype}) after dense rows for the first images")
    mm = np.load(path, mmap_mode="r+", allow_pickle=False)
    if X.shape[1] != mm.shape[1]:
        raise ValueError(f"{X.shape[1]} values per image here, {mm.shape[1]} for the first images")
    mm[start:start + len(X)] = X
    del mm  # no msync here: the pages are the file's, the parent flushes once at the end


def _run_stage(stage, prepare: Prepare, raw: list, start: int, out, load_s: float, catch: bool):
    t0 = time.perf_counter()
    try:
        X = stage.transform([prepare(im) for im in raw])
        if out is not None:
            _write_rows(out, start, X)
            X = None
        return True, X, load_s + time.perf_counter() - t0
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failing extractor fails its feature, not the others
        if not catch:
            raise
        return False, f"{type(exc).__name__}: {exc}", 0.0


def _read_only(im):
    """A read-only view of an image (the loader's own array keeps its flags)."""
    if not isinstance(im, np.ndarray):
        return im
    view = im.view()
    view.setflags(write=False)
    return view


def _extract_many(stages, prepares, load, idx, outs, limit_threads: bool, catch: bool = True):
    """One task (in a worker, or in the parent with one worker): read and decode each image of
    the contiguous range ``idx`` once, then give each stage (``None``: skipped) its own
    preparation of them. A stage's rows go into the memory-mapped ``.npy`` ``outs[k]`` when
    given, else back as an array. Returns ``(start, count, (seconds, CPU seconds), per stage:
    (ok, rows or None or error text, seconds))``; a stage's seconds include the loading, so
    its ms/image is what the feature alone costs."""
    if limit_threads:
        import cv2
        cv2.setNumThreads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    start, live = int(idx[0]), [s for s in stages if s is not None]
    try:
        raw = [load(int(i)) for i in idx]
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a loader that fails for every stage alike
        if not catch:
            raise
        text = f"{type(exc).__name__}: {exc}"
        return start, len(idx), (time.perf_counter() - t0, time.process_time() - cpu0), [
            None if s is None else (False, text, 0.0) for s in stages]
    if len(live) > 1:  # shared by several stages: none may change the pixels another one sees
        raw = [_read_only(im) for im in raw]
    load_s = time.perf_counter() - t0
    res = [None if s is None else _run_stage(s, prep, raw, start, out, load_s, catch)
           for s, prep, out in zip(stages, prepares, outs)]
    return start, len(idx), (time.perf_counter() - t0, time.process_time() - cpu0), res


class _Pass:
    """One pass of several parallel-safe stages over a dataset (:func:`compute_many`): the
    parent schedules tasks, keeps the rows that come back (the first tasks', or all of them
    without a memory-mapped output) and the per-stage errors."""

    def __init__(self, stages, prepares, dataset, out_paths, workers: int, backend: str, bar, catch: bool):
        self.stages, self.prepares, self.dataset = list(stages), list(prepares), dataset
        self.out_paths = list(out_paths) if out_paths is not None else [None] * len(self.stages)
        self.workers, self.backend, self.bar, self.catch = workers, backend, bar, catch
        k = len(self.stages)
        self.errors: list = [None] * k
        self.secs = [0.0] * k
        self.mms: list = [None] * k
        self.parts: list = [{} for _ in range(k)]
        self.costs: list = []       # seconds per image of each task, in the order they finished
        self.sizes: list = []       # the chunk sizes chosen
        self.tasks, self.task_s, self.task_cpu_s = 0, 0.0, 0.0
        self.parent_s = 0.0         # parent's time keeping rows and errors (Amdahl's serial part)

    def run(self, chunk_size) -> "_Pass":
        """The first task of each worker, whose rows come back (they give the widths of the
        memory-mapped outputs and the first costs), then the others."""
        n = len(self.dataset)
        size = PROBE_IMAGES if chunk_size == "auto" else int(chunk_size)
        first = _ranges(0, min(n, size * self.workers), size)
        self._collect(self._map(first, to_files=False))
        start = int(first[-1][-1]) + 1 if first else 0
        if start < n and any(e is None for e in self.errors):
            self._collect(self._map(self._chunks(start, n, chunk_size), to_files=True))
        return self

    def _chunks(self, start: int, n: int, chunk_size):
        """The remaining index ranges, each sized when it is scheduled: from the median cost of
        the last tasks that finished (the first tasks of fresh workers cost more)."""
        while start < n:
            if chunk_size == "auto":
                size = choose_chunk_size(statistics.median(self.costs[-8:]), n - start, self.workers)
            else:
                size = int(chunk_size)
            self.sizes.append(size)
            yield np.arange(start, min(start + size, n))
            start += size

    @property
    def chunk_size(self):
        return int(statistics.median(self.sizes)) if self.sizes else None

    def _source(self, idx):
        """What a worker loads images with: the dataset's loader, cut to ``idx`` where it can be."""
        loader = getattr(self.dataset, "loader", None)
        if not callable(loader):
            return self.dataset.load
        return loader.subset(idx) if hasattr(loader, "subset") else loader

    def _map(self, chunks, to_files: bool):
        stages = [None if e is not None else s for s, e in zip(self.stages, self.errors)]
        if self.workers <= 1:
            loader = getattr(self.dataset, "loader", None)
            load = loader if callable(loader) else self.dataset.load
            nothing = [None] * len(stages)
            return (_extract_many(stages, self.prepares, load, idx, nothing, False, self.catch)
                    for idx in chunks)
        from joblib import Parallel, delayed

        from .parallel import wait_workers
        wait_workers()
        local = to_files and self.backend in ("loky", "threading")
        outs = [str(self.out_paths[k]) if local and self.mms[k] is not None else None
                for k in range(len(stages))]
        return Parallel(n_jobs=self.workers, backend=None if self.backend == "dask" else self.backend,
                        batch_size=1, return_as="generator_unordered")(
            delayed(_extract_many)(stages, self.prepares, self._source(idx), idx, outs, True, self.catch)
            for idx in chunks)

    def _collect(self, results) -> None:
        for start, count, (secs, cpu), per_stage in results:
            t0 = time.perf_counter()
            self.tasks += 1
            self.task_s += secs
            self.task_cpu_s += cpu
            self.costs.append(secs / max(1, count))
            for k, res in enumerate(per_stage):
                if res is None or self.errors[k] is not None:
                    continue
                ok, value, stage_s = res
                if not ok:
                    self.errors[k] = value
                    continue
                self.secs[k] += stage_s
                if value is not None:
                    self._keep(k, start, value)
            self.parent_s += time.perf_counter() - t0
            if self.bar is not None:
                self.bar.update(count)

    def _keep(self, k: int, start: int, X) -> None:
        dense = isinstance(X, np.ndarray) and X.dtype != object and X.ndim == 2
        if self.out_paths[k] is None or not dense:
            self.parts[k][start] = X
            return
        if self.mms[k] is None:
            self.mms[k] = np.lib.format.open_memmap(self.out_paths[k], mode="w+", dtype=np.float32,
                                                    shape=(len(self.dataset), X.shape[1]))
        try:
            self.mms[k][start:start + len(X)] = X
        except ValueError as exc:
            if not self.catch:
                raise
            self.errors[k] = f"ValueError: {exc}"

    def outputs(self) -> list[tuple]:
        out = []
        for k in range(len(self.stages)):
            if self.errors[k] is not None:
                out.append((None, 0.0, self.errors[k]))
            elif self.mms[k] is not None:
                self.mms[k].flush()
                out.append((self.mms[k], self.secs[k], None))
            else:
                try:
                    out.append((_as_output([self.parts[k][s] for s in sorted(self.parts[k])]),
                                self.secs[k], None))
                except Exception as exc:  # noqa: BLE001 - e.g. no images at all
                    if not self.catch:
                        raise
                    out.append((None, 0.0, f"{type(exc).__name__}: {exc}"))
        return out


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


last_pass: dict = {}  # what the last compute_many() did (tasks, chunk size, parent seconds): perf reads it


def compute_many(stages, prepares, dataset, *, chunk_size="auto", n_jobs: int = 1, backend: str = "loky",
                 progress: Progress | None = None, desc: str = "", out_paths=None,
                 catch: bool = True) -> list[tuple]:
    """Apply several parallel-safe per-image stages to every image in one pass; returns one
    ``(X, seconds_of_work, error)`` per stage (``error``: the text of a failed stage, whose
    ``X`` is None; the other stages go on).

    Each image is read and decoded once per pass, by the worker that computes it (the parent
    ships index ranges and a light loader, never pixels), then prepared for each stage. The
    first task of each worker is a small probe; ``chunk_size: auto`` sizes each later task
    from the per-image cost of the tasks finished so far (:func:`choose_chunk_size`). A stage's dense rows
    go into a memory-mapped float32 ``.npy`` at ``out_paths[k]`` (the parent writes the first
    tasks' rows, local workers the others'). ``seconds_of_work`` sums the tasks' own times
    (a single-worker equivalent), so ms/image does not depend on ``n_jobs``.
    ``catch=False``: a stage's exception propagates (as :func:`compute_per_image` does).
    """
    workers = n_workers(n_jobs) if backend != "sequential" else 1
    bar = progress(desc, len(dataset)) if progress else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    job = _Pass(stages, prepares, dataset, out_paths, workers, backend, bar, catch)
    try:
        job.run(chunk_size)
    finally:
        if bar is not None:
            bar.close()
    out = job.outputs()
    last_pass.clear()
    last_pass.update(tasks=job.tasks, chunk_size=job.chunk_size, workers=workers, parent_s=job.parent_s,
                     wall_s=time.perf_counter() - t0, parent_cpu_s=time.process_time() - cpu0,
                     task_s=job.task_s, task_cpu_s=job.task_cpu_s)
    log.debug("extraction pass: %d stages, %d tasks of %s images on %d workers, parent %.2f s",
              len(job.stages), job.tasks, job.chunk_size, workers, job.parent_s)
    return out


def compute_per_image(stage, dataset, prepare: Prepare, *, chunk_size="auto", n_jobs: int = 1,
                      backend: str = "loky", progress: Progress | None = None, desc: str = "",
                      out_path: Path | None = None):
    """Apply a per-image stage to every image in chunks; return ``(X, seconds_of_work)``.

    A parallel-safe stage goes through :func:`compute_many` (its exceptions propagate). Any
    other (a CNN) runs in this process in large chunks: the extractor batches and
    prefetches inside. Dense results stream into a memory-mapped ``.npy`` at ``out_path``
    when given, so memory stays bounded.
    """
    if parallel_safe(stage):
        ((X, secs, _),) = compute_many([stage], [prepare], dataset, chunk_size=chunk_size, n_jobs=n_jobs,
                                       backend=backend, progress=progress, desc=desc,
                                       out_paths=[out_path], catch=False)
        return X, secs
    n = len(dataset)
    size = getattr(stage, "preferred_chunk", 256)
    if chunk_size != "auto":
        size = max(int(chunk_size), size)
    bar = progress(desc, n) if progress else None
    total_s, parts, mm = 0.0, [], None
    try:
        for idx in _ranges(0, n, size):
            t0 = time.perf_counter()
            out = stage.transform([prepare(dataset.load(i)) for i in idx])
            total_s += time.perf_counter() - t0
            if out_path is not None and isinstance(out, np.ndarray) and out.dtype != object and out.ndim == 2:
                if mm is None:
                    mm = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32,
                                                   shape=(n, out.shape[1]))
                mm[int(idx[0]):int(idx[0]) + len(out)] = out
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


def _from_cache(feature: Feature, cache, key: str, rows: int) -> FeatureMatrix | None:
    hit = cache.get(key, rows, feature.label)
    if hit is None:
        return None
    X, meta = hit
    log.info("feature %s: %d x %s from cache", feature.label, len(X),
             X.shape[1] if getattr(X, "ndim", 1) == 2 else "var")
    return FeatureMatrix(feature, X, meta.get("ms_per_image"), cached=True)


def _stream_of(feature: Feature, cache, key: str):
    return cache.stream_path(key) if cache.enabled and getattr(feature.stage, "dense_output", True) else None


def _store(feature: Feature, cache, key: str, X, work_s: float, wall: float, stream, rows: int) -> FeatureMatrix:
    """A computed matrix into the cache (a streamed one moved into place), as a FeatureMatrix."""
    ms = 1000.0 * work_s / max(1, rows)
    meta = {"ms_per_image": ms, "wall_s": wall, "label": feature.label, "extractor": feature.stage.cache_key()}
    if isinstance(X, np.memmap):
        X.flush()
        del X
        X = cache.commit_stream(key, meta)
    else:
        if stream is not None:
            cache.discard_stream(key)
        cache.put(key, X, meta)
    log.info("feature %s: %.2f ms/image (%.1f s wall)", feature.label, ms, wall)
    return FeatureMatrix(feature, X, ms, cached=False)


def load_or_extract(feature: Feature, dataset, cache, par: dict,
                    progress: Progress | None = None) -> FeatureMatrix:
    """The feature's matrix from the cache, or computed and stored there (under the
    cache's per-key lock, so two runs compute a key once)."""
    key = feature.cache_key(dataset)
    with cache.lock(key):
        hit = _from_cache(feature, cache, key, len(dataset))
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        tmp_out = _stream_of(feature, cache, key)
        try:
            X, work_s = compute_per_image(
                feature.stage, dataset, feature.prepare, chunk_size=par["chunk_size"], n_jobs=par["n_jobs"],
                backend=par["backend"], progress=progress, desc=f"extract {feature.label}", out_path=tmp_out)
        except BaseException:
            cache.discard_stream(key)
            raise
        return _store(feature, cache, key, X, work_s, time.perf_counter() - t0, tmp_out, len(dataset))


def extract_together(features: list, dataset, cache, par: dict, progress: Progress | None = None) -> dict:
    """The parallel-safe ``features`` (each cache key once): from the cache where it has them,
    the others computed in one pass (:func:`compute_many`: each image decoded once for all of
    them) and stored one matrix per feature under the same keys as one at a time. Returns
    ``{label: FeatureMatrix or error text}``; the per-key locks are held in key order."""
    group, keys = [], set()
    for f in features:
        key = f.cache_key(dataset)
        if parallel_safe(f.stage) and key not in keys:
            group.append((f, key))
            keys.add(key)
    out: dict = {}
    with contextlib.ExitStack() as locks:
        for key in sorted(keys):
            locks.enter_context(cache.lock(key))
        missing = []
        for f, key in group:
            hit = _from_cache(f, cache, key, len(dataset))
            if hit is not None:
                out[f.label] = hit
            else:
                missing.append((f, key))
        if missing:
            out.update(_compute_and_store(missing, dataset, cache, par, progress))
    return out


def _compute_and_store(missing: list, dataset, cache, par: dict, progress) -> dict:
    streams = [_stream_of(f, cache, key) for f, key in missing]
    t0 = time.perf_counter()
    try:
        results = compute_many([f.stage for f, _ in missing], [f.prepare for f, _ in missing], dataset,
                               chunk_size=par["chunk_size"], n_jobs=par["n_jobs"], backend=par["backend"],
                               progress=progress, desc="extract " + ", ".join(f.label for f, _ in missing),
                               out_paths=streams)
    except BenchError:
        for _, key in missing:
            cache.discard_stream(key)
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a worker process died: the pass's features fail
        log.debug("traceback", exc_info=True)
        for _, key in missing:
            cache.discard_stream(key)
        return {f.label: f"{type(exc).__name__}: {exc}" for f, _ in missing}
    wall = time.perf_counter() - t0
    out: dict = {}
    for (f, key), stream, (X, work_s, error) in zip(missing, streams, results):
        if error is not None:
            cache.discard_stream(key)
            out[f.label] = error
        else:
            out[f.label] = _store(f, cache, key, X, work_s, wall, stream, len(dataset))
    return out


# --------------------------------------------------------------------------- the stage
def extract_features(ctx, needed: Callable[[Feature], bool]) -> None:
    """Put the matrices of the built features (``ctx.features``) that the run needs
    (``needed(feature)``) into ``ctx.matrices``; ``features.json`` is updated after each.
    The parallel-safe ones are extracted together first (:func:`extract_together`), the
    others (CNNs) one at a time in this process. A failing extractor fails its cells
    (records), not the run."""
    meta = dict(ctx.folder.read_json(FEATURES_META, {}) or {})
    ctx.features_meta = meta
    todo = [f for f in ctx.features.values() if needed(f)]
    ctx.cache.ensure_usable({f.cache_key(ctx.dataset): (f.label, len(ctx.dataset)) for f in todo})
    together = extract_together(todo, ctx.dataset, ctx.cache, ctx.config["parallel"], ctx.progress)
    for feature in todo:
        fm = together.get(feature.label)
        if fm is None:
            try:
                fm = load_or_extract(feature, ctx.dataset, ctx.cache, ctx.config["parallel"], ctx.progress)
            except BenchError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken extractor fails its cells, not the run
                log.debug("traceback", exc_info=True)
                fm = f"{type(exc).__name__}: {exc}"
        if isinstance(fm, str):
            log.error("feature %s failed: %s", feature.label, fm)
            _record_failed_extraction(ctx, feature, f"extraction: {fm}")
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

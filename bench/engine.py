"""Runs a benchmark: dataset -> per-image features (cached, parallel) -> per-fold
pipelines -> records -> analysis -> report.

The grid of cells (feature x classifier x split) runs through joblib, so the same
code uses local processes (``loky``), threads, or a Dask cluster
(``parallel.backend: dask``; ``parallel.address`` names a scheduler, otherwise a
LocalCluster is started). Each finished cell is appended to ``records.jsonl`` at
once; running the same command again skips finished cells, so a killed run
resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from . import classifiers as _classifiers  # noqa: F401  (fills CLASSIFIERS, also in workers)
from . import records as rec
from .cache import FeatureCache, make_key
from .data.base import suggest_prepare
from .config import config_hash, dump
from .errors import BenchError, ConfigError, DataError, PluginError, ResultsError
from .imaging import Prepare
from .protocol import SplitPlan, check_dataset_for_protocol, make_splits, score
from .registry import CLASSIFIERS, DATASETS, FEATURES

log = logging.getLogger(__name__)

Progress = Callable[[str, int], object]  # (description, total) -> object with update(n), close()


# --------------------------------------------------------------------------- components
def load_components() -> None:
    """Import the built-in modules so their registries are filled."""
    from . import classifiers  # noqa: F401
    for mod in ("bench.data.datasets", "bench.features.handcrafted", "bench.features.deep",
                "bench.features.backbones", "bench.data.points", "bench.data.sealion"):
        try:
            __import__(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def load_plugins(paths: list[str], base: Path | None = None) -> list[str]:
    """Import plugin files so the components they register can be named in the config.

    Returns their absolute paths (what Dask workers load, see :func:`_parallel_backend`)."""
    loaded = []
    for p in paths:
        path = Path(p)
        if not path.is_absolute() and base is not None and not path.exists():
            path = base / path
        if not path.exists():
            raise PluginError(f"plugin file {p!r} does not exist", "check the path in 'plugins:'")
        loaded.append(str(path.resolve()))
        name = "bench_plugin_" + path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
            continue
        spec = importlib.util.spec_from_file_location(name, path.resolve())
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(name, None)
            raise PluginError(f"plugin {path}: syntax error at line {exc.lineno}: {exc.msg}",
                              "fix the plugin file") from None
        except BenchError:
            sys.modules.pop(name, None)
            raise
        except Exception as exc:  # noqa: BLE001 - any plugin failure becomes a clear message
            sys.modules.pop(name, None)
            frames = [f for f in traceback.extract_tb(exc.__traceback__)
                      if Path(f.filename).resolve() == path.resolve()]
            line = f" line {frames[-1].lineno}" if frames else ""
            raise PluginError(f"plugin {path}{line}: {type(exc).__name__}: {exc}",
                              "fix the plugin file (run it with python to see the traceback)") from None
        sys.modules[name] = module
        # worker processes cannot import a plugin by name: ship its classes by value
        with contextlib.suppress(Exception):
            import cloudpickle
            cloudpickle.register_pickle_by_value(module)
    return loaded


# --------------------------------------------------------------------------- environment
def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def environment(seed: int) -> dict:
    from importlib import metadata
    pkgs = {}
    for name in ("numpy", "scipy", "scikit-learn", "scikit-image", "opencv-python-headless",
                 "opencv-python", "tensorflow", "tensorflow-cpu", "keras", "jax", "torch",
                 "pandas", "seaborn", "matplotlib", "joblib", "dask", "distributed", "bench"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    cpu = cpu_name()
    gpus = []
    with contextlib.suppress(Exception):
        import shutil
        import subprocess
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            gpus = [l.strip() for l in out.stdout.splitlines() if l.strip()]
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": pkgs,
            "cpu": cpu, "n_cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "gpu": gpus, "device": "GPU" if gpus else "CPU", "seed": seed,
            "command": " ".join(sys.argv), "host": platform.node(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}


def n_workers(n_jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if n_jobs < 0 else max(1, min(n_jobs, 64))


# --------------------------------------------------------------------------- extraction
def parallel_safe(stage) -> bool:
    """Whether a per-image stage may run in several worker processes.

    Hand-crafted extractors are cheap to ship to workers. A CNN (or a concatenation
    holding one) is not: each worker would build its own model and TensorFlow already
    uses every core, so those run in this process, batched. An extractor can say so
    itself with a ``parallel_safe`` class attribute.
    """
    flag = getattr(stage, "parallel_safe", None)
    if flag is not None:
        return bool(flag)
    parts = getattr(stage, "parts", None)
    if parts and not isinstance(parts, (str, bytes)):
        try:
            from .features.concat import build_part
            return all(parallel_safe(p if hasattr(p, "transform") else build_part(p)) for p in parts)
        except Exception:  # noqa: BLE001 - unknown layout: be conservative
            return False
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


def compute_per_image(stage, dataset, prepare: Prepare, *, chunk_size: int = 32, n_jobs: int = 1,
                      backend: str = "loky", progress: Progress | None = None, desc: str = "",
                      out_path: Path | None = None):
    """Apply a per-image stage to every image in chunks; return ``(X, seconds_of_work)``.

    ``seconds_of_work`` sums the chunks' own times (single-worker equivalent), so
    ms/image does not depend on ``n_jobs``. Dense results stream into a
    memory-mapped ``.npy`` at ``out_path`` when given, so memory stays bounded.
    """
    from joblib import Parallel, delayed

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
        if workers > 1 and len(chunks) > 1:
            source = _LoaderView(dataset.loader) if callable(getattr(dataset, "loader", None)) else dataset
            gen = Parallel(n_jobs=workers, backend=None if backend == "dask" else backend,
                           return_as="generator")(
                delayed(_extract_chunk)(stage, source, prepare, idx, True) for idx in chunks)
        else:
            gen = (_extract_chunk(stage, dataset, prepare, idx, False) for idx in chunks)
        for out, secs in gen:
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


# --------------------------------------------------------------------------- cells
def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:  # binary decision_function: one value per sample
        z = z[:, None]
    if z.shape[1] == 1:
        z = np.hstack([-z, z]) / 2
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_scores(fitted, X) -> np.ndarray:
    """Per-class confidences: ``predict_proba`` where the model has it, else the softmax
    of its decision values (e.g. SVM, linear SVM: uncalibrated scores). Columns follow
    ``fitted.classes_``."""
    if hasattr(fitted, "predict_proba"):
        try:
            return fitted.predict_proba(X)
        except AttributeError:  # e.g. a Pipeline whose last step lacks predict_proba
            pass
    return _softmax(fitted.decision_function(X))


def _accepts(factory, name: str) -> bool:
    import inspect
    return name in inspect.signature(factory).parameters


def make_classifier(clf_spec: dict, seed: int):
    """The unfitted estimator of a ``classifiers:`` entry (``random_state`` from the seed)."""
    entry = CLASSIFIERS.entry(clf_spec["name"], where="classifiers")
    params = dict(clf_spec.get("params") or {})
    if _accepts(entry.obj, "random_state") and "random_state" not in params:
        params["random_state"] = seed
    return CLASSIFIERS.create(clf_spec["name"], where=f"classifiers ({clf_spec['label']})", **params)


def build_pipeline(fold_stage, clf_spec: dict, seed: int, estimator=None) -> Pipeline:
    """``[fold stage] -> scaler -> classifier``; ``estimator`` (cloned) instead of building it
    from the registry by name, which a worker process cannot do for a plugin classifier."""
    if estimator is None:
        est = make_classifier(clf_spec, seed)
    else:  # the split's own seed (predefined repeats differ by it) unless the config fixed it
        est = clone(estimator)
        if "random_state" in est.get_params(deep=False) \
                and "random_state" not in (clf_spec.get("params") or {}):
            est.set_params(random_state=seed)
    steps = []
    if fold_stage is not None:
        steps.append(("encode", clone(fold_stage)))
    steps += [("scale", StandardScaler()), ("clf", est)]
    return Pipeline(steps)


def run_cell(X, y, groups, train, test, fold_stage, clf_spec, seed, n_classes, val=None,
             estimator=None):
    """Fit on ``train`` rows, predict ``test`` rows. Runs in a worker process.

    ``val`` (the predefined protocol's validation rows): a nested search fits each
    candidate on ``train``, scores it on ``val`` (``PredefinedSplit``) and refits the
    best on ``train`` alone, so every row is fitted on the same images. ``estimator``:
    the classifier built in the main process (a plugin's class is unknown to a worker)."""
    with contextlib.suppress(Exception):
        import cv2
        cv2.setNumThreads(1)
    pipe = build_pipeline(fold_stage, clf_spec, seed, estimator)
    Xtr, Xte = X[train], X[test]
    if isinstance(Xtr, np.memmap):
        Xtr, Xte = np.asarray(Xtr), np.asarray(Xte)
    if Xtr.dtype != object and not np.all(np.isfinite(Xtr)):
        bad = int((~np.isfinite(Xtr)).any(axis=1).sum())
        raise DataError(f"{bad} training images have NaN or inf features",
                        "check the extractor on those images; constant or empty images can cause it")
    t0 = time.perf_counter()
    search = clf_spec.get("search")
    if search and val is not None and len(val):
        grid = {f"clf__{k}": v for k, v in search.items()}
        rows = np.concatenate([train, val])
        fold = PredefinedSplit(np.r_[np.full(len(train), -1), np.zeros(len(val), dtype=int)])
        Xtv = X[rows]
        model = GridSearchCV(pipe, grid, cv=fold, scoring="f1_macro", n_jobs=1, refit=False)
        model.fit(np.asarray(Xtv) if isinstance(Xtv, np.memmap) else Xtv, y[rows])
        best = {k[5:]: v for k, v in model.best_params_.items()}
        fitted = clone(pipe).set_params(**model.best_params_).fit(Xtr, y[train])
    elif search:
        grid = {f"clf__{k}": v for k, v in search.items()}
        if groups is not None:
            inner = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed)
            model = GridSearchCV(pipe, grid, cv=inner, scoring="f1_macro", n_jobs=1)
            model.fit(Xtr, y[train], groups=groups[train])
        else:
            inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
            model = GridSearchCV(pipe, grid, cv=inner, scoring="f1_macro", n_jobs=1)
            model.fit(Xtr, y[train])
        fitted = model.best_estimator_
        best = {k[5:]: v for k, v in model.best_params_.items()}
    else:
        fitted = pipe.fit(Xtr, y[train])
        best = None
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    y_pred = fitted.predict(Xte)
    p = class_scores(fitted, Xte)
    predict_s = time.perf_counter() - t0
    proba = np.zeros((len(test), n_classes), dtype=np.float32)
    proba[:, fitted.classes_] = p
    out = score(y[test], y_pred)
    out.update(fit_s=fit_s, predict_s=predict_s, n_features=int(fitted.named_steps["scale"].n_features_in_),
               n_train=len(train), n_test=len(test), y_pred=y_pred, proba=proba, best_params=best)
    return out


# --------------------------------------------------------------------------- context
class RunContext:
    """What analysis, counting and reports need from a finished (or resumed) run."""

    def __init__(self, cfg: dict, run_dir: Path, dataset, plan: SplitPlan, cache: FeatureCache,
                 progress: Progress | None = None):
        self.config = cfg
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.plan = plan
        self.splits = plan.splits
        self.cache = cache
        self.seed = cfg["seed"]
        self.progress = progress
        self.features: dict[str, dict] = {}   # label -> {spec, extractor, stage, fold_stage, prepare}
        self._X: dict[str, object] = {}

    @property
    def feature_labels(self) -> list[str]:
        return [label for label in self.features if label in self._X]

    @property
    def classifier_labels(self) -> list[str]:
        return [c["label"] for c in self.config["classifiers"]]

    def per_image(self, label: str):
        return self._X[label]

    def extract(self, label: str, images) -> object:
        f = self.features[label]
        return f["stage"].transform([f["prepare"](im) for im in images])

    def make_pipeline(self, feature_label: str, classifier_label: str) -> Pipeline:
        f = self.features[feature_label]
        spec = next(c for c in self.config["classifiers"] if c["label"] == classifier_label)
        return build_pipeline(f["fold_stage"], spec, self.seed)

    def records(self) -> list[dict]:
        return list(rec.latest_by_cell(rec.load(self.run_dir / "records.jsonl")).values())


def weights_of(desc: dict) -> str:
    """The provenance of a feature's weights; a concatenation is ``random-init`` when any part
    is, else its first ImageNet part's label (``imagenet`` or ``imagenet (<package> ...)``)."""
    if not desc:
        return "n/a"
    if desc.get("weights"):
        return str(desc["weights"])
    parts = [weights_of(p) for p in desc.get("parts", []) if isinstance(p, dict)]
    for word in ("random-init", "imagenet"):
        hit = next((p for p in parts if p == word or p.startswith(word + " ")), None)
        if hit is not None:
            return hit
    files = [p for p in parts if p.startswith("file:")]
    return files[0] if files else "n/a"


def _feature_label(spec: dict, extractor) -> str:
    label = spec["label"]
    weights = weights_of(extractor.describe()) if hasattr(extractor, "describe") else None
    if weights == "random-init" and "random-init" not in label:
        label = f"{label} [random-init]"
    return label


# --------------------------------------------------------------------------- the run
def _warn_cross_class_duplicates(dataset) -> list:
    """The same image content under two labels: kept (the user decides), but said loudly."""
    seen: dict = {}
    clashes = []
    for i, k in enumerate(dataset.keys):
        j = seen.setdefault(k, i)
        if j != i and dataset.labels[j] != dataset.labels[i]:
            clashes.append((dataset.ids[j], dataset.ids[i]))
    if clashes:
        shown = "; ".join(f"{a} = {b}" for a, b in clashes[:5])
        log.warning("%d images appear with identical content in two classes (%s%s); they are kept "
                    "as labelled, but check the labels: such pairs cap every score", len(clashes),
                    shown, " ..." if len(clashes) > 5 else "")
    return clashes


def resolve_run_dir(cfg: dict, new: bool = False) -> Path:
    out = cfg["output"]
    run_id = out["run_id"] or f"{cfg['name']}-{config_hash(cfg)}"
    if new and not out["run_id"]:
        run_id += datetime.now().strftime("-%Y%m%d-%H%M%S")
    return Path(out["results_dir"]) / run_id


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _dask_plugin_loader(paths: list[str]):
    """A Dask worker plugin that imports the run's plugin files in every worker.

    Dask pickles a task's arguments with plain pickle (cloudpickle only for objects of
    the top-level call's own module), so a plugin's extractor or classifier travels by
    reference to its module, which a worker has to have imported under the same name.
    """
    from distributed import WorkerPlugin

    class LoadBenchPlugins(WorkerPlugin):
        name = "bench-plugins"

        def __init__(self, plugin_paths):
            self.plugin_paths = list(plugin_paths)

        def setup(self, worker):
            load_components()
            load_plugins(self.plugin_paths)

    return LoadBenchPlugins(paths)


@contextlib.contextmanager
def _parallel_backend(par: dict, plugins: list[str] = ()):
    if par["backend"] != "dask":
        yield
        return
    try:
        from dask.distributed import Client, LocalCluster
        from joblib import parallel_config
    except ImportError:
        raise ConfigError("parallel.backend: dask needs dask.distributed",
                          "pip install -e '.[dask]'") from None
    if par["address"]:
        try:
            client = Client(par["address"], timeout="10s")
        except OSError as exc:
            raise ConfigError(f"parallel.address {par['address']!r}: cannot reach the Dask scheduler ({exc})",
                              "start one with `dask scheduler` and workers with `dask worker ADDRESS`") from None
        cluster = None
    else:
        cluster = LocalCluster(n_workers=n_workers(par["n_jobs"]), threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    log.info("Dask client: %s", client)
    try:
        if plugins:
            client.register_plugin(_dask_plugin_loader(plugins))
        with parallel_config(backend="dask"):
            yield
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run(cfg: dict, *, progress: Progress | None = None, new: bool = False,
        on_run_dir: Callable[[Path], None] | None = None, base_dir: Path | None = None) -> RunContext:
    """Run (or resume) the benchmark described by a validated config (one dataset; suites go
    through :mod:`bench.suite`).

    ``offline`` and ``cache.dir`` hold for the whole run (:func:`bench.weights.run_settings`):
    no weights download when offline, converted packaged weights beside the features.
    """
    if cfg.get("datasets"):
        raise ConfigError("this config is a suite (datasets: [...]); bench.engine.run takes one dataset",
                          "run it with `python -m bench run` or bench.suite.run")
    from . import weights
    with weights.run_settings(offline=cfg.get("offline") or None,
                              cache_dir=(cfg.get("cache") or {}).get("dir")):
        return _run(cfg, progress=progress, new=new, on_run_dir=on_run_dir, base_dir=base_dir)


def _run(cfg: dict, *, progress: Progress | None = None, new: bool = False,
         on_run_dir: Callable[[Path], None] | None = None, base_dir: Path | None = None) -> RunContext:
    t_start = time.time()
    load_components()
    plugin_paths = load_plugins(cfg["plugins"], base_dir)

    # dataset
    ds_params = {k: v for k, v in cfg["dataset"].items() if k != "kind"}
    ds_factory = DATASETS.get(cfg["dataset"]["kind"], where="dataset.kind")
    if cfg.get("on_bad_image") and "on_bad_image" not in ds_params and _accepts(ds_factory, "on_bad_image"):
        ds_params["on_bad_image"] = cfg["on_bad_image"]
    if cfg["cache"]["dir"] and "cache_dir" not in ds_params and _accepts(ds_factory, "cache_dir"):
        # generated scenes live beside the features
        ds_params["cache_dir"] = str(Path(cfg["cache"]["dir"]) / cfg["dataset"]["kind"])
    dataset = DATASETS.create(cfg["dataset"]["kind"], where="dataset", **ds_params)
    check_dataset_for_protocol(dataset.labels, dataset.class_names, cfg["protocol"], dataset.groups,
                               split=dataset.split)
    _warn_cross_class_duplicates(dataset)

    # run folder
    run_dir = resolve_run_dir(cfg, new)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"cannot write to the results folder {str(run_dir)!r}: {exc.strerror}",
                           "set output.results_dir to a writable folder with free space") from None
    if on_run_dir:
        on_run_dir(run_dir)
    resumed = (run_dir / "records.jsonl").exists()
    log.info("%s run %s (%d images, %d classes)", "resuming" if resumed else "starting",
             run_dir, len(dataset), dataset.n_classes)
    if dataset.bad:
        log.warning("%d unreadable images were skipped: %s", len(dataset.bad),
                    "; ".join(f"{p} ({r})" for p, r in dataset.bad[:10]))
    (run_dir / "config.yaml").write_text(dump(cfg))
    env = environment(cfg["seed"])
    env["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    grouped_flag = cfg["protocol"].get("group") in ("auto", True) and dataset.groups is not None
    _write_json(run_dir / "dataset.json", {
        "name": dataset.name, "kind": cfg["dataset"]["kind"], "modality": dataset.modality,
        "class_names": [str(c) for c in dataset.class_names], "labels": dataset.labels.tolist(),
        "groups": None if dataset.groups is None else [str(g) for g in dataset.groups],
        "ids": [str(i) for i in dataset.ids], "grouped": grouped_flag, "n_images": len(dataset),
        "bad_images": [[str(p), str(r)] for p, r in dataset.bad],
        "split": None if dataset.split is None else [str(v) for v in dataset.split],
        "prepare_suggestion": suggest_prepare(dataset), "meta": {
            k: v for k, v in dataset.meta.items() if isinstance(v, (str, int, float, bool, list))}})

    splits_path = run_dir / "splits.json"
    if splits_path.exists():
        plan = SplitPlan.load(splits_path)
        if any(np.concatenate([s.train, s.test]).max(initial=-1) >= len(dataset) for s in plan.splits):
            raise ResultsError(f"{splits_path} does not match the dataset ({len(dataset)} images)",
                               "the data changed since this run started: use --new for a fresh run")
    else:
        plan = make_splits(dataset.labels, cfg["protocol"], cfg["seed"], dataset.groups,
                           split=dataset.split)
        plan.save(splits_path)
    log.info("splits: %s%s", plan.splitter, " (grouped by source image)" if plan.grouped else "")

    cache = FeatureCache(cfg["cache"]["dir"], cfg["cache"]["enabled"])
    ctx = RunContext(cfg, run_dir, dataset, plan, cache, progress)
    records_path = run_dir / "records.jsonl"
    done = {cid for cid, r in rec.latest_by_cell(rec.load(records_path)).items()
            if r.get("status") == "ok"}

    par = cfg["parallel"]
    features_meta = {}
    if (run_dir / "features.json").exists():
        features_meta = json.loads((run_dir / "features.json").read_text())
    y = dataset.labels
    groups = dataset.groups if plan.grouped else None
    run_id = run_dir.name

    with _parallel_backend(par, plugin_paths):
        # ---- per-image features
        for spec in cfg["features"]:
            where = f"features ({spec['label']})"
            extractor = FEATURES.create(spec["name"], where=where, **spec["params"])
            if spec["name"] == "cnn" and "on_missing_weights" in extractor.get_params() \
                    and "on_missing_weights" not in spec["params"]:
                extractor.set_params(on_missing_weights=cfg["on_missing_weights"])
            if spec["name"] == "cnn" and "engine" in extractor.get_params() \
                    and "engine" not in spec["params"]:
                extractor.set_params(engine=cfg.get("engine", "auto"))
            prep = spec["prepare"]
            prepare = Prepare(prep["color"], tuple(prep["size"]) if prep["size"] else None,
                              tuple(prep["depth_range"]) if isinstance(prep["depth_range"], list)
                              else prep["depth_range"], prep["interpolation"],
                              tuple(prep["crop"]) if prep.get("crop") else None)
            stage, fold_stage = extractor.stages()
            label = _feature_label(spec, extractor)
            family = getattr(extractor, "family", "handcrafted")
            ctx.features[label] = {"spec": spec, "extractor": extractor, "stage": stage,
                                   "fold_stage": fold_stage, "prepare": prepare, "family": family}
            key = make_key(dataset.fingerprint(), stage.cache_key(), prepare.key())
            cells_left = any(rec.cell_id(label, c["label"], s.index) not in done
                             for c in cfg["classifiers"] for s in plan.splits)
            need = cells_left or cfg["report"]["tsne"] or cfg["report"]["learning_curves"] or cfg["count"] \
                or cfg["report"].get("explain")
            if not need:
                continue
            try:
                with cache.lock(key):
                    hit = cache.get(key)
                    if hit is not None:
                        X, meta = hit
                        ms = meta.get("ms_per_image")
                        log.info("feature %s: %d x %s from cache", label, len(X),
                                 X.shape[1] if getattr(X, "ndim", 1) == 2 else "var")
                        cached = True
                    else:
                        t0 = time.perf_counter()
                        tmp_out = None
                        if cache.enabled and getattr(stage, "dense_output", True):
                            tmp_out = cache.stream_path(key)
                        X, work_s = compute_per_image(
                            stage, dataset, prepare, chunk_size=par["chunk_size"],
                            n_jobs=par["n_jobs"], backend=par["backend"], progress=progress,
                            desc=f"extract {label}", out_path=tmp_out)
                        ms = 1000.0 * work_s / max(1, len(dataset))
                        wall = time.perf_counter() - t0
                        meta = {"ms_per_image": ms, "wall_s": wall, "label": label,
                                "extractor": stage.cache_key()}
                        if isinstance(X, np.memmap):
                            X.flush()
                            del X
                            X = cache.commit_stream(key, meta)
                        else:
                            if tmp_out is not None and tmp_out.exists():
                                tmp_out.unlink()
                            cache.put(key, X, meta)
                        cached = False
                        log.info("feature %s: %.2f ms/image (%.1f s wall)", label, ms, wall)
            except BenchError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken extractor fails its cells, not the run
                log.error("feature %s failed: %s: %s", label, type(exc).__name__, exc)
                log.debug("traceback", exc_info=True)
                for c in cfg["classifiers"]:
                    for s in plan.splits:
                        cid = rec.cell_id(label, c["label"], s.index)
                        if cid not in done:
                            rec.append(records_path, rec.make_record(
                                run_id=run_id, dataset=dataset.name, feature=label, family=family,
                                classifier=c["label"], split=s.index, repeat=s.repeat, fold=s.fold,
                                status="failed", error=f"extraction: {type(exc).__name__}: {exc}",
                                cell_id=cid, time=_now()))
                continue
            if X.dtype != object and X.ndim == 2 and not np.all(np.isfinite(X)):
                n_bad = int((~np.isfinite(np.asarray(X))).any(axis=1).sum())
                log.warning("feature %s: %d images have NaN/inf values; cells will fail", label, n_bad)
            ctx._X[label] = X
            desc = extractor.describe() if hasattr(extractor, "describe") else {}
            features_meta[label] = {"name": spec["name"], "family": family,
                                    "weights": weights_of(desc),
                                    "weights_file": desc.get("weights_file"),
                                    "engine": desc.get("engine"),
                                    "describe": desc,
                                    "n_features": int(X.shape[1]) if X.dtype != object and X.ndim == 2 else None,
                                    "extract_ms_per_image": ms, "cached": cached,
                                    "params": spec["params"], "prepare": spec["prepare"]}
            _write_json(run_dir / "features.json", features_meta)

        # ---- feature x classifier x split cells
        _run_cells(ctx, cfg, plan, y, groups, done, records_path, run_id, features_meta, progress)
        if cfg["protocol"].get("leak_check") and plan.grouped:
            leak_plan = make_splits(y, cfg["protocol"], cfg["seed"], None, force_ungrouped=True)
            leak_plan.save(run_dir / "splits_random.json")
            _run_cells(ctx, cfg, leak_plan, y, None, done, records_path, run_id, features_meta,
                       progress, variant="random-split")

    # ---- end-to-end CNN rows
    if cfg["finetune"]:
        _run_finetune(ctx, cfg, plan, done, records_path, run_id, progress)

    # ---- analysis and counting (need features; reports are rebuilt from their outputs)
    try:
        from . import analysis
        analysis.run_analysis(ctx)
    except ImportError:
        log.info("analysis module not available; skipping t-SNE, learning curves and galleries")
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.error("analysis failed (the records are safe): %s: %s", type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
    if cfg["count"]:
        from . import counting
        try:
            counting.run_counting(ctx, cfg["count"])
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.error("counting failed (the records are safe): %s: %s", type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)

    env["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env["duration_s"] = round(time.time() - t_start, 1)
    prev = run_dir / "env.json"
    if prev.exists():
        with contextlib.suppress(Exception):
            old = json.loads(prev.read_text())
            env["sessions"] = old.get("sessions", []) + [
                {k: old.get(k) for k in ("started", "finished", "duration_s", "command")}]
    _write_json(run_dir / "env.json", env)
    return ctx


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_cells(ctx, cfg, plan, y, groups, done, records_path, run_id, features_meta, progress,
               variant=None):
    from joblib import Parallel, delayed
    par = cfg["parallel"]
    todo = []
    # built here, shipped to the workers (by value for a plugin's classes); this also fails
    # early on a bad classifier name or parameter (a user mistake, not a cell failure)
    estimators = {c["label"]: make_classifier(c, cfg["seed"]) for c in cfg["classifiers"]}
    for label in ctx.feature_labels:
        f = ctx.features[label]
        for c in cfg["classifiers"]:
            for s in plan.splits:
                cid = rec.cell_id(label, c["label"], s.index, variant)
                if cid in done:
                    continue
                todo.append((label, f, c, s, cid))
    if not todo:
        return
    workers = 1 if par["backend"] == "sequential" else n_workers(par["n_jobs"])
    # dask: the backend set by _parallel_backend's parallel_config; sequential: one worker
    backend = {"dask": None, "sequential": "loky"}.get(par["backend"], par["backend"])
    n_classes = ctx.dataset.n_classes
    bar = progress(f"evaluate{' (' + variant + ')' if variant else ''}", len(todo)) if progress else None

    def job(item):
        label, f, c, s, cid = item
        return delayed(_safe_cell)(ctx._X[label], y, groups, s.train, s.test, f["fold_stage"], c,
                                   s.seed_or(cfg["seed"]), n_classes, getattr(s, "val", None),
                                   estimators[c["label"]])

    warned: dict = {}
    try:
        results = Parallel(n_jobs=workers, backend=backend, return_as="generator")(job(t) for t in todo)
        for (label, f, c, s, cid), res in zip(todo, results):
            meta = features_meta.get(label, {})
            base = dict(run_id=run_id, dataset=ctx.dataset.name, feature=label, family=f["family"],
                        classifier=c["label"], split=s.index, repeat=s.repeat, fold=s.fold,
                        cell_id=cid, variant=variant, weights=meta.get("weights", "n/a"),
                        extract_ms_per_image=meta.get("extract_ms_per_image"),
                        params=json.dumps({"feature": f["spec"]["params"], "classifier": c["params"],
                                           "search": c.get("search"),
                                           "best_params": res.get("best_params") if isinstance(res, dict) else None},
                                          default=str),
                        time=_now())
            for w in res.get("warnings", []):
                warned.setdefault((label, c["label"], w), []).append(s.index)
            if "error" in res:
                rec.append(records_path, rec.make_record(**base, status="failed", error=res["error"]))
                log.warning("cell %s failed: %s", cid, res["error"])
            else:
                rec.save_predictions(ctx.run_dir, cid, s.test, y[s.test], res["y_pred"], res["proba"])
                rec.append(records_path, rec.make_record(
                    **base, status="ok", **{k: res[k] for k in (
                        "accuracy", "balanced_accuracy", "macro_f1", "fit_s", "predict_s",
                        "n_features", "n_train", "n_test")}))
                done.add(cid)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for (label, clf, w), splits in warned.items():
            log.warning("%s + %s: %s (in %d of %d splits)", label, clf, w, len(splits),
                        len(plan.splits))


def _safe_cell(*args):
    """Run a cell in a worker: errors become a failed record, library warnings (e.g. an MLP
    that did not converge) are returned for one summary line instead of flooding stderr."""
    import warnings
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = run_cell(*args)
        out["warnings"] = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:120]}"
                                  for w in caught})
        return out
    except BenchError as exc:
        return {"error": f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")}
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the others go on
        return {"error": f"{type(exc).__name__}: {exc}"}


def _run_finetune(ctx, cfg, plan, done, records_path, run_id, progress):
    from . import finetune
    y = ctx.dataset.labels
    for spec in cfg["finetune"]:
        label = spec["label"]
        folds = spec.get("folds")
        splits = [s for s in plan.splits if folds is None or s.index in folds]
        if folds is not None and len(splits) < len(plan.splits):
            variant = "folds-subset"
        else:
            variant = None
        bar = progress(f"train {label}", len(splits)) if progress else None
        for s in splits:
            cid_base = rec.cell_id(label, "end-to-end", s.index, variant)
            if cid_base in done:
                if bar is not None:
                    bar.update(1)
                continue
            work = ctx.run_dir / "finetune" / label / f"split{s.index}"
            base = dict(run_id=run_id, dataset=ctx.dataset.name, family="cnn", split=s.index,
                        repeat=s.repeat, fold=s.fold, variant=variant, time=_now(),
                        params=json.dumps({k: v for k, v in spec.items()}, default=str))
            try:
                rows = finetune.run_cell(dict(spec), ctx.dataset, s.train, s.test, s.index, work,
                                         s.seed_or(cfg["seed"]), on_missing_weights=cfg["on_missing_weights"],
                                         val_idx=s.val)
            except BenchError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.error("finetune %s split %d failed: %s: %s", label, s.index, type(exc).__name__, exc)
                log.debug("traceback", exc_info=True)
                rec.append(records_path, rec.make_record(
                    **base, feature=label, classifier="end-to-end", status="failed",
                    error=f"{type(exc).__name__}: {exc}", cell_id=cid_base))
                continue
            for r in rows:
                weights = r.get("weights", "n/a")
                flabel = f"{label} [random-init]" if weights == "random-init" else label
                cid = rec.cell_id(label, r["classifier"], s.index, variant)
                rec.save_predictions(ctx.run_dir, cid, s.test, y[s.test], r["y_pred"], r.get("proba"))
                rec.append(records_path, rec.make_record(
                    **base, feature=flabel, classifier=r["classifier"], status="ok", cell_id=cid,
                    weights=weights, **{k: r.get(k) for k in (
                        "accuracy", "balanced_accuracy", "macro_f1", "fit_s", "predict_s",
                        "n_features", "n_train", "n_test")}))
                done.add(cid)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

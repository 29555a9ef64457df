"""``bench run`` as a short sequence of named stages over one :class:`RunContext`::

    resolve config -> load dataset -> make splits -> extract features (cache)
        -> evaluate cells -> end-to-end CNN rows -> analysis -> report

Each stage is one function here or in the module that owns its idea
(:mod:`bench.extraction`, :mod:`bench.cells`, :mod:`bench.analysis`,
:mod:`bench.report`); the run folder is :mod:`bench.runfolder`'s, which holds its
lock for the whole run and its records in memory. Each finished cell is appended to
the records at once; running the same command again skips finished cells, so a killed
run resumes where it stopped. docs/ARCHITECTURE.md draws the stages.
"""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import records as rec
from .cache import FeatureCache
from .cells import evaluate_cells, finetune_rows
from .cells import run_cell  # noqa: F401  (kept importable from here)
from .components import load_components
from .config import check_components, config_hash, dump
from .context import Progress, RunContext
from .data.base import suggest_prepare
from .errors import BenchError, ConfigError, ResultsError
from .extraction import Feature, build_feature, extract_features
from .extraction import compute_per_image  # noqa: F401  (kept importable from here)
from .parallel import parallel_backend
from .plugins import load_plugins
from .protocol import SplitPlan, check_dataset_for_protocol, make_splits
from .provenance import environment
from .registry import DATASETS, accepts
from .runfolder import ANALYSIS, CONFIG, DATASET, ENV, SPLITS, SPLITS_RANDOM, RunFolder

log = logging.getLogger(__name__)

__all__ = ["run", "RunContext", "resolve_run_dir", "load_components", "load_plugins"]


# --------------------------------------------------------------------------- stage: resolve config
def resolve_components(cfg: dict, base_dir: Path | None = None) -> list[str]:
    """Fill the registries (built-ins, then the config's plugins); returns the plugin
    paths, which Dask workers load too. The config itself was validated by
    :func:`bench.config.load_config`."""
    if cfg.get("datasets"):
        raise ConfigError("this config is a suite (datasets: [...]); bench.engine.run takes one dataset",
                          "run it with `python -m bench run` or bench.suite.run")
    load_components()
    plugins = load_plugins(cfg["plugins"], base_dir)
    check_components(cfg)  # names and parameter types, before the run folder exists
    return plugins


def resolve_run_dir(cfg: dict, new: bool = False) -> Path:
    """``<results_dir>/<run_id>``: ``output.run_id``, else ``<name>-<config hash>``
    (``new``: with the time appended, a fresh folder)."""
    out = cfg["output"]
    run_id = out["run_id"] or f"{cfg['name']}-{config_hash(cfg)}"
    if new and not out["run_id"]:
        run_id += datetime.now().strftime("-%Y%m%d-%H%M%S")
    return Path(out["results_dir"]) / run_id


# --------------------------------------------------------------------------- stage: load dataset
def load_dataset(cfg: dict):
    """The dataset of ``dataset:``, checked against the protocol (classes, groups)."""
    ds_params = {k: v for k, v in cfg["dataset"].items() if k != "kind"}
    factory = DATASETS.get(cfg["dataset"]["kind"], where="dataset.kind")
    if cfg.get("on_bad_image") and "on_bad_image" not in ds_params and accepts(factory, "on_bad_image"):
        ds_params["on_bad_image"] = cfg["on_bad_image"]
    if cfg["cache"]["dir"] and "cache_dir" not in ds_params and accepts(factory, "cache_dir"):
        # generated scenes live beside the features
        ds_params["cache_dir"] = str(Path(cfg["cache"]["dir"]) / cfg["dataset"]["kind"])
    dataset = DATASETS.create(cfg["dataset"]["kind"], where="dataset", **ds_params)
    check_dataset_for_protocol(dataset.labels, dataset.class_names, cfg["protocol"], dataset.groups,
                               split=dataset.split)
    _warn_cross_class_duplicates(dataset)
    return dataset


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


def describe_dataset(cfg: dict, dataset) -> dict:
    """``dataset.json``: what reports need of the dataset without loading it."""
    return {
        "name": dataset.name, "kind": cfg["dataset"]["kind"], "modality": dataset.modality,
        "class_names": [str(c) for c in dataset.class_names], "labels": dataset.labels.tolist(),
        "groups": None if dataset.groups is None else [str(g) for g in dataset.groups],
        "ids": [str(i) for i in dataset.ids],
        "grouped": cfg["protocol"].get("group") in ("auto", True) and dataset.groups is not None,
        "n_images": len(dataset), "bad_images": [[str(p), str(r)] for p, r in dataset.bad],
        "split": None if dataset.split is None else [str(v) for v in dataset.split],
        "prepare_suggestion": suggest_prepare(dataset),
        "meta": {k: v for k, v in dataset.meta.items() if isinstance(v, (str, int, float, bool, list))}}


# --------------------------------------------------------------------------- stage: make splits
def load_or_make_splits(folder: RunFolder, cfg: dict, dataset) -> SplitPlan:
    """The run's splits: ``splits.json`` of the folder when it has one (a resumed run
    keeps its splits), else made from the seed and saved."""
    path = folder.file(SPLITS)
    if path.exists():
        plan = SplitPlan.load(path)
        if any(np.concatenate([s.train, s.test]).max(initial=-1) >= len(dataset) for s in plan.splits):
            raise ResultsError(f"{path} does not match the dataset ({len(dataset)} images)",
                               "the data changed since this run started: use --new for a fresh run")
    else:
        plan = make_splits(dataset.labels, cfg["protocol"], cfg["seed"], dataset.groups,
                           split=dataset.split)
        plan.save(path)
    log.info("splits: %s%s", plan.splitter, " (grouped by source image)" if plan.grouped else "")
    return plan


# --------------------------------------------------------------------------- stage: extract features
def needed_features(ctx: RunContext) -> Callable[[Feature], bool]:
    """Which features' matrices this session needs: those with unfinished cells, and all
    of them for analysis parts that recompute from features (t-SNE, learning curves,
    explain, counting; retrieval when its file is missing or any cell is left)."""
    cfg, done = ctx.config, ctx.done

    def cells_left(f: Feature) -> bool:
        return any(rec.cell_id(f.label, c["label"], s.index) not in done
                   for c in cfg["classifiers"] for s in ctx.plan.splits)

    rep = cfg["report"]
    for_analysis = bool(rep["tsne"] or rep["learning_curves"] or cfg["count"] or rep.get("explain"))
    if rep.get("retrieval"):
        for_analysis |= not (ctx.folder.file(ANALYSIS) / "retrieval.json").exists() \
            or any(cells_left(f) for f in ctx.features.values())
    return lambda f: for_analysis or cells_left(f)


# --------------------------------------------------------------------------- stage: analysis
def analyse(ctx: RunContext) -> None:
    """Analysis artefacts (:mod:`bench.analysis`) and counting (``count:``) while the
    features are in memory; a failure there is logged and leaves the records alone."""
    from . import analysis
    _guarded("analysis", analysis.run_analysis, ctx)
    if ctx.config["count"]:
        from . import counting
        _guarded("counting", counting.run_counting, ctx, ctx.config["count"])


def _guarded(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.error("%s failed (the records are safe): %s: %s", what, type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)


# --------------------------------------------------------------------------- stage: report
def write_report(ctx: RunContext, formats=()) -> dict:
    """``summary.csv`` of the records in memory, then the report in ``formats`` (none:
    the summary only); returns the report's paths."""
    from . import aggregate
    aggregate.save_summary(ctx.run_dir, ctx.records())
    if not formats:
        return {}
    from . import report
    out = Path(ctx.config["output"]["reports_dir"]) / ctx.run_id
    return report.build(ctx.run_dir, out, formats=tuple(formats), records=ctx.records())


# --------------------------------------------------------------------------- the run
def run(cfg: dict, *, progress: Progress | None = None, new: bool = False,
        on_run_dir: Callable[[Path], None] | None = None, base_dir: Path | None = None,
        report: bool = False) -> RunContext:
    """Run (or resume) the benchmark described by a validated config (one dataset; suites go
    through :mod:`bench.suite`); ``report``: also build the report of ``output.formats``
    (its paths in ``ctx.report_paths``), under the run folder's lock like the rest.

    The loky worker pool (``parallel.n_jobs`` > 1) is started first, in the background, and
    serves the extraction and the cells (:func:`bench.parallel.start_workers`).
    ``offline`` and ``cache.dir`` hold for the whole run (:func:`bench.weights.run_settings`):
    no weights download when offline, converted packaged weights beside the features.
    """
    from . import parallel, weights
    parallel.start_workers(cfg["parallel"])  # the run's pool starts while this process works on
    interrupted = True
    try:
        plugin_paths = resolve_components(cfg, base_dir)
        with weights.run_settings(offline=cfg.get("offline") or None,
                                  cache_dir=(cfg.get("cache") or {}).get("dir")):
            dataset = load_dataset(cfg)
            folder = RunFolder.create(resolve_run_dir(cfg, new))
            with folder.lock():
                if on_run_dir:
                    on_run_dir(folder.path)
                ctx = _stages(cfg, folder, dataset, plugin_paths, progress, report)
        interrupted = False
        return ctx
    except Exception:
        interrupted = False  # a user mistake: let the workers finish starting (no abort noise)
        raise
    finally:
        parallel.drop_workers(wait=not interrupted)


def _stages(cfg, folder: RunFolder, dataset, plugin_paths, progress, report: bool) -> RunContext:
    t_start = time.time()
    env = _start_session(cfg, folder, dataset)
    plan = load_or_make_splits(folder, cfg, dataset)
    ctx = RunContext(cfg, folder, dataset, plan, FeatureCache(cfg["cache"]["dir"], cfg["cache"]["enabled"]),
                     progress, plugin_paths)
    ctx.features = {f.label: f for f in (build_feature(spec, cfg) for spec in cfg["features"])}
    with parallel_backend(cfg["parallel"], plugin_paths):
        extract_features(ctx, needed_features(ctx))
        evaluate_cells(ctx, plan, ctx.groups)
        if cfg["protocol"].get("leak_check") and plan.grouped:
            leak_plan = make_splits(dataset.labels, cfg["protocol"], cfg["seed"], None, force_ungrouped=True)
            leak_plan.save(folder.file(SPLITS_RANDOM))
            evaluate_cells(ctx, leak_plan, None, variant="random-split")
    if cfg["finetune"]:
        finetune_rows(ctx)
    analyse(ctx)
    _finish_session(folder, env, t_start)
    ctx.report_paths = write_report(ctx, cfg["output"]["formats"] if report else ())
    return ctx


def _start_session(cfg: dict, folder: RunFolder, dataset) -> dict:
    log.info("%s run %s (%d images, %d classes)", "resuming" if folder.is_run() else "starting",
             folder.path, len(dataset), dataset.n_classes)
    if dataset.bad:
        log.warning("%d unreadable images were skipped: %s", len(dataset.bad),
                    "; ".join(f"{p} ({r})" for p, r in dataset.bad[:10]))
    folder.write_text(CONFIG, dump(cfg))
    folder.write_json(DATASET, describe_dataset(cfg, dataset))
    env = environment(cfg["seed"])
    env["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return env


def _finish_session(folder: RunFolder, env: dict, t_start: float) -> None:
    """``env.json`` of this session, with the earlier sessions of the folder listed."""
    env["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env["duration_s"] = round(time.time() - t_start, 1)
    old = folder.read_json(ENV)
    if isinstance(old, dict):
        with contextlib.suppress(Exception):
            env["sessions"] = old.get("sessions", []) + [
                {k: old.get(k) for k in ("started", "finished", "duration_s", "command", "argv", "git")}]
    folder.write_json(ENV, env)

"""``run_counting``: the engine's one entry point to counting (the ``count:`` config section).

For every split of ``count.splits`` the scenes whose patches are all in the test fold
are counted by models fitted on the other scenes only:

* ``baseline: train mean`` - each class's mean count over the training scenes;
* ``nms`` / ``aggregate`` - a patch classifier slid over the scene (:mod:`.windows`);
* ``regression`` - tile features -> count regressor -> tile sums (:mod:`.regression`);
* ``cnn`` - an end-to-end convolutional count regressor on tiles (:mod:`.cnn`).

Outputs in ``<run_dir>/analysis/``: ``counts.csv`` (one row per held-out image, class
and counter), ``count_rmse.csv`` (:func:`~.evaluate.count_errors` per counter, with
failed cells as ``status = failed`` rows) and ``count_models.csv`` (per fitted
regression / CNN model: chosen hyperparameters, inner-CV score, training size, time).
Reports are rebuilt from these files.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .. import schema
from ..errors import ConfigError, did_you_mean
from .evaluate import count_errors, true_counts
from .windows import WINDOW_METHODS, count_windows_cell

log = logging.getLogger(__name__)

METHODS = schema.allowed("count", "method")  # the window methods, then regression and cnn
BASELINE = "baseline: train mean"
SPEC_KEYS = schema.keys("count")  # keys and defaults: the "count" sections of bench.schema
REGRESSION_KEYS = schema.keys("count.regression")
_SPEC, _REGRESSION = schema.defaults("count"), schema.defaults("count.regression")
COUNT_COLUMNS = ["image", "class", "true", "predicted", "feature", "classifier", "split", "method",
                 "threshold", "variant"]


# --------------------------------------------------------------------------- choosing cells

def _records_frame(ctx) -> pd.DataFrame | None:
    recs = getattr(ctx, "records", None)
    if callable(recs):
        recs = recs()
    if recs is None:
        return None
    df = recs if isinstance(recs, pd.DataFrame) else pd.DataFrame(list(recs))
    if df.empty or "feature" not in df.columns:
        return None
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if "variant" in df.columns:
        df = df[df["variant"].isna()]
    return df


def choose_cells(ctx, spec: Mapping) -> list[tuple[str, str]]:
    """(feature, classifier) pairs for the sliding-window counters.

    ``spec["features"]``: feature labels, or absent for the best feature of each
    family (mean balanced accuracy over the run's records); ``spec["classifier"]``:
    a classifier label, or absent for the best classifier of each feature. Without
    records, the context's first classifier (``ctx.classifier_labels``) is used.
    """
    metric = spec.get("metric", _SPEC["metric"])
    feats = spec.get("features")
    clf = spec.get("classifier")
    if isinstance(feats, str):
        feats = [feats]
    recs = _records_frame(ctx)
    if recs is not None and metric in recs.columns:
        score = recs.groupby(["feature", "classifier"], sort=False)[metric].mean().reset_index()
        if "family" in recs.columns:
            fam = recs.groupby("feature", sort=False)["family"].first()
            score["family"] = score["feature"].map(fam)
    else:
        score = None
    if not feats:
        if score is None or score.empty:
            raise ConfigError("counting: no features given and no finished records to choose from",
                              "set counting.features: [<feature label>, ...]")
        pool = score if not clf else score[score["classifier"] == clf]
        if pool.empty:
            raise ConfigError(f"counting: classifier {clf!r} has no finished records",
                              "check counting.classifier against the run's classifiers")
        fam_col = "family" if "family" in pool.columns else "feature"
        best = pool.sort_values(metric, ascending=False, kind="stable").groupby(fam_col, sort=False).head(1)
        return [(r.feature, r.classifier) for r in best.itertuples()]
    cells = []
    for f in feats:
        if clf:
            cells.append((f, clf))
            continue
        if score is not None:
            sub = score[score["feature"] == f]
            if not sub.empty:
                cells.append((f, sub.sort_values(metric, ascending=False, kind="stable")
                              ["classifier"].iloc[0]))
                continue
        labels = list(getattr(ctx, "classifier_labels", None) or [])
        if not labels:
            raise ConfigError(f"counting: no classifier for feature {f!r}",
                              "set counting.classifier: <classifier label>")
        cells.append((f, labels[0]))
    return cells


# --------------------------------------------------------------------------- options

def _check_keys(where: str, spec: Mapping, allowed) -> None:
    for key in spec:
        if key not in allowed:
            raise ConfigError(f"unknown key '{where}.{key}'",
                              did_you_mean(key, allowed) + f"allowed in {where}: {', '.join(allowed)}")


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _counting_options(spec: Mapping, patch_size: int) -> dict:
    _check_keys("count", spec, SPEC_KEYS)
    methods = _as_list(spec.get("method", _SPEC["method"]))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"count.method: unknown method {m!r}",
                              did_you_mean(m, METHODS) + f"one of {', '.join(METHODS)}")
    threshold = spec.get("threshold", _SPEC["threshold"])
    if threshold != "auto":
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ConfigError(f"count.threshold: expected a number in [0, 1] or 'auto', got "
                              f"{threshold!r}", "e.g. threshold: 0.5 or threshold: auto") from None
    splits = _as_list(spec.get("splits", _SPEC["splits"]))
    mine = spec.get("mine_negatives", _SPEC["mine_negatives"])
    if isinstance(mine, bool) or not isinstance(mine, int) or mine < 0:
        raise ConfigError(f"count.mine_negatives: expected an integer >= 0, got {mine!r}",
                          "rounds of hard-negative mining on the training scenes, e.g. 1")
    windows = [m for m in methods if m in WINDOW_METHODS]
    return {"methods": methods, "window_methods": windows, "threshold": threshold, "splits": splits,
            "stride": int(spec.get("stride") or max(1, patch_size // 4)),
            "min_distance": spec.get("min_distance"), "batch_size": int(spec.get("batch_size", _SPEC["batch_size"])),
            "mine_negatives": mine, "mine_per_scene": int(spec.get("mine_per_scene", _SPEC["mine_per_scene"])),
            "patch_size": patch_size,
            "calibrate": "aggregate" in windows or (threshold == "auto" and "nms" in windows),
            "regression": [_regression_options(b, patch_size) for b in
                           (spec.get("regression") if isinstance(spec.get("regression"), list)
                            else [spec.get("regression")])] if "regression" in methods else None,
            "cnn": _cnn_options(spec.get("cnn"), patch_size) if "cnn" in methods else None}


def _regression_options(spec, patch_size: int) -> dict:
    """One block of ``count.regression`` (a mapping; the section may be a list of blocks,
    each a product of its features x regressors x tiles x normalisations x jitters; a row
    that an earlier block already made is not made twice)."""
    from .regression import Variant, regressor_specs
    from .tiles import TARGETS, check_normalize

    spec = dict(spec or {})
    _check_keys("count.regression", spec, REGRESSION_KEYS)
    target = spec.get("target", _REGRESSION["target"])
    if target not in TARGETS:
        raise ConfigError(f"count.regression.target: unknown target {target!r}", f"one of {', '.join(TARGETS)}")
    sigma = float(spec.get("sigma", max(1.0, patch_size / 8)))
    tiles = [_positive_int(t, "count.regression.tile") for t in _as_list(spec.get("tile", 2 * patch_size))]
    norms = [check_normalize(n) for n in _as_list(spec.get("normalize", _REGRESSION["normalize"]))]
    jitters = [_fraction(j, "count.regression.jitter") for j in _as_list(spec.get("jitter", _REGRESSION["jitter"]))]
    copies = _positive_int(spec.get("copies", _REGRESSION["copies"]), "count.regression.copies")
    variants = [Variant(t, n, j, copies, target, sigma) for t in tiles for n in norms for j in jitters]
    feats = spec.get("features")
    return {"features": [feats] if isinstance(feats, str) else (list(feats) if feats else None),
            "regressors": regressor_specs(spec.get("regressors", _REGRESSION["regressors"])),
            "variants": variants,
            "inner_splits": _positive_int(spec.get("inner_splits", _REGRESSION["inner_splits"]), "count.regression.inner_splits")}


def _cnn_options(spec, patch_size: int) -> list[dict]:
    from .cnn import cnn_options

    return cnn_options(spec, patch_size)


def _positive_int(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {v!r}", "e.g. 64")
    return int(v)


def _fraction(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ConfigError(f"{where}: expected a number in [0, 1), got {v!r}", "e.g. 0.1; 0 = off")
    return float(v)


# --------------------------------------------------------------------------- scenes

class _SceneRunner:
    """Reads scenes (an LRU of decoded scenes up to ``max_bytes``) and counts the window
    slides for the progress bar (:meth:`image`; :meth:`read` does not count)."""

    def __init__(self, scenes: dict, bar, max_bytes: float = 1.5e9):
        self.scenes, self.bar, self.slides = scenes, bar, 0
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def read(self, sid: str) -> np.ndarray:
        from ..data.points import read_scene

        img = self._cache.get(sid)
        if img is None:
            img = read_scene(self.scenes[sid]["path"])
            img.setflags(write=False)
            self._cache[sid] = img
            while len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) > self.max_bytes:
                self._cache.popitem(last=False)
        self._cache.move_to_end(sid)
        return img

    def image(self, sid: str) -> np.ndarray:
        img = self.read(sid)
        self.slides += 1
        if self.bar is not None:
            self.bar.update(1)
        return img


def _plan(ctx, opts, scenes, groups) -> list[tuple]:
    """``(split_id, train_idx, train_scenes, test_scenes)`` for every counted split."""
    plan = []
    for split_id in opts["splits"]:
        try:
            split = ctx.splits[split_id]
        except (IndexError, KeyError, TypeError):
            raise ConfigError(f"count.splits: split {split_id} does not exist",
                              f"the run has {len(ctx.splits)} splits") from None
        train_idx, test_idx = np.asarray(split.train), np.asarray(split.test)
        train_set, test_set = set(groups[train_idx]), set(groups[test_idx])
        train_scenes = [s for s in scenes if s in train_set]
        # a scene counts as held out only when none of its patches is in training
        test_scenes = [s for s in scenes if s in test_set and s not in train_set]
        if not test_scenes:
            log.warning("counting: split %s has no held-out scene (are the splits grouped?)", split_id)
            continue
        plan.append((split_id, train_idx, train_scenes, test_scenes))
    return plan


def _regression_features(ctx, ropts) -> list[str]:
    feats = ropts["features"]
    known = list(getattr(ctx, "feature_labels", None) or [])
    if feats is None:
        if not known:
            raise ConfigError("count.regression: no features given and the run has none",
                              "set count.regression.features: [<feature label>, ...]")
        return known
    if known:
        unknown = [f for f in feats if f not in known]
        if unknown:
            raise ConfigError(f"count.regression.features: {unknown[0]!r} is not a feature of this run",
                              did_you_mean(unknown[0], known) + f"features: {', '.join(known)}")
    return feats


def _scene_info(meta, scenes, classes_animal) -> dict:
    pts = pd.DataFrame(meta["points"])
    index = {c: i for i, c in enumerate(classes_animal)}
    out = {}
    for sid, s in scenes.items():
        sub = pts[pts["image"] == sid]
        out[sid] = {"key": str(s.get("key") or sid), "points_xy": sub[["x", "y"]].to_numpy(np.float64),
                    "labels": sub["class"].map(index).to_numpy(np.int64)}
    return out


# --------------------------------------------------------------------------- the entry point

def run_counting(ctx, spec: Mapping | None = None):
    """Count animals in held-out scenes for the engine; returns ``(counts_df, rmse_df)``.

    ``ctx`` provides: ``dataset`` (a points dataset: ``meta`` with ``scenes``,
    ``points``, ``patch_size``), ``splits`` (objects with ``.train`` / ``.test``
    index arrays into the patches), ``per_image(feature)``, ``make_pipeline(feature,
    classifier)``, ``extract(feature, images)`` (the run's per-image stage and
    preparation applied to a list of arrays: patches or tiles), ``run_dir``; and
    optionally ``records`` / ``classifier_labels`` (see :func:`choose_cells`),
    ``feature_labels`` (the run's features), ``features`` (label -> ``stage``,
    ``prepare``, ``fold_stage``: cache identity and fold stage of tile features),
    ``cache`` (the feature cache), ``seed`` and ``progress``.

    ``spec`` keys (all optional): ``method`` (``nms`` | ``aggregate`` | ``regression``
    | ``cnn`` | a list; default ``nms``), ``splits`` (default ``[0]``); for the window
    counters ``features``, ``classifier``, ``stride``, ``threshold`` (number or
    ``auto``), ``min_distance``, ``mine_negatives``, ``mine_per_scene``, ``batch_size``,
    ``metric``; ``regression:`` (``features``, ``regressors``, ``tile``, ``target``,
    ``sigma``, ``normalize``, ``jitter``, ``copies``, ``inner_splits``; lists of tiles,
    normalisations and jitters make one row each) and ``cnn:`` (see
    :func:`bench.counting.cnn.cnn_options`). docs/SEALION.md documents them.

    A failing cell is logged and reported with ``status = "failed"`` in the RMSE
    table; the others go on.
    """
    spec = dict(spec or {})
    ds = ctx.dataset
    meta = getattr(ds, "meta", {}) or {}
    missing = [k for k in ("scenes", "points", "patch_size") if k not in meta]
    if missing:
        raise ConfigError(f"counting needs a point-annotated dataset; dataset {ds.name!r} has no "
                          f"{', '.join(missing)} in its metadata",
                          "use the `points` or `synthetic-sealion` dataset, or disable counting")
    if ds.groups is None:
        raise ConfigError("counting needs patch groups (the source scene of each patch)",
                          "use the `points` or `synthetic-sealion` dataset")
    classes = list(ds.class_names)
    bg = int(meta.get("background_index", classes.index("background") if "background" in classes
                      else len(classes) - 1))
    opts = _counting_options(spec, int(meta["patch_size"]))
    opts["border"] = meta.get("border", "reflect")
    opts["bg_distance"] = float(meta.get("min_distance", opts["patch_size"]))
    seed = int(getattr(ctx, "seed", 0) or 0)
    scenes = {s["id"]: s for s in meta["scenes"]}
    animal = [c for i, c in enumerate(classes) if i != bg]
    truth = true_counts(meta["points"], list(scenes), animal)
    cells = choose_cells(ctx, spec) if opts["window_methods"] else []
    blocks = [(b, _regression_features(ctx, b)) for b in opts["regression"] or []]
    plan = _plan(ctx, opts, scenes, np.asarray(ds.groups))
    log.info("counting on splits %s with %s", [p[0] for p in plan], ", ".join(opts["methods"]))

    job = _Job(ctx, ds, opts, truth, classes, bg, animal, cells, blocks, seed)
    total = sum(len(cells) * job.slides_of(p[2], p[3]) + job.n_model_cells for p in plan)
    make_bar = getattr(ctx, "progress", None)
    job.bar = make_bar("counting (scenes x cells)", total) if callable(make_bar) and total else None
    job.run = _SceneRunner(scenes, job.bar)
    job.info = _scene_info(meta, scenes, animal) if (opts["regression"] or opts["cnn"]) else {}
    for split in plan:
        job.count_split(*split)
    if job.bar is not None:
        job.bar.close()
    return _write_outputs(ctx, job.rows, job.status, job.models)


class _Job:
    """The counting of one run: every counter on every split, rows and failures collected."""

    def __init__(self, ctx, ds, opts, truth, classes, bg, animal, cells, blocks, seed):
        self.ctx, self.ds, self.opts, self.truth = ctx, ds, opts, truth
        self.classes, self.bg, self.animal, self.cells, self.blocks, self.seed = \
            classes, bg, animal, cells, blocks, seed
        self.rows, self.status, self.models = [], [], []
        self.bar = self.run = None
        self.info: dict = {}
        self.n_model_cells = sum(len(f) * len(b["regressors"]) * len(b["variants"]) for b, f in blocks) \
            + len(opts["cnn"] or [])

    def slides_of(self, train_scenes, test_scenes) -> int:
        o = self.opts
        return len(test_scenes) + len(train_scenes) * (o["mine_negatives"] + int(o["calibrate"]))

    def tick(self, n: int = 1) -> None:
        if self.bar is not None and n > 0:
            self.bar.update(n)

    def failed(self, method, feature, label, variant, split_id, exc, t0) -> None:
        log.error("counting failed for %s %s x %s%s on split %s: %s", method, feature, label,
                  f" ({variant})" if variant else "", split_id, exc,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        self.status.append(dict(feature=feature, classifier=label, method=method, variant=variant,
                                split=split_id, status="failed", error=f"{type(exc).__name__}: {exc}",
                                seconds=time.perf_counter() - t0))

    def count_split(self, split_id, train_idx, train_scenes, test_scenes) -> None:
        """Baseline, window cells, regression blocks and CNN specs on one split."""
        truth, animal, opts, run = self.truth, self.animal, self.opts, self.run
        base = truth.loc[train_scenes].mean(axis=0)
        for sid in test_scenes:
            for c in animal:
                self.rows.append(dict(image=sid, **{"class": c}, true=int(truth.at[sid, c]),
                                      predicted=float(base[c]), feature=BASELINE, classifier="-",
                                      split=split_id, method="baseline", threshold=None, variant=None))
        for feature, clf_label in self.cells:
            t0, before = time.perf_counter(), run.slides
            try:
                self.rows += count_windows_cell(self.ctx, self.ds, feature, clf_label, split_id, train_idx,
                                                train_scenes, test_scenes, truth, self.classes, self.bg,
                                                opts, run)
            except Exception as exc:  # one failing cell must not stop the others
                for m in opts["window_methods"]:
                    self.failed(m, feature, clf_label, None, split_id, exc, t0)
            # mining may stop early, a failed cell stops at once
            self.tick(self.slides_of(train_scenes, test_scenes) - (run.slides - before))
        done: set = set()  # (feature, regressor, setting) made by an earlier block
        for block, feats in self.blocks:
            from .regression import TileBank, count_regression_split

            t0 = time.perf_counter()
            bank = TileBank(self.ctx, self.info, run.read, len(animal), self.seed)
            r, m = count_regression_split(
                self.ctx, bank, feats, block["regressors"], block["variants"], split_id, train_scenes,
                test_scenes, truth, animal, self.seed, block["inner_splits"], done=done,
                on_fail=lambda f, lab, v, exc: self.failed("regression", f, lab, v.label(), split_id,
                                                           exc, t0),
                on_done=self.tick)
            self.rows += r
            self.models += m
        for cspec in opts["cnn"] or []:
            from .cnn import count_cnn_split

            t0 = time.perf_counter()
            try:
                r, m = count_cnn_split(cspec, self.info, run.read, split_id, train_scenes, test_scenes,
                                       truth, animal, self.seed,
                                       Path(self.ctx.run_dir) / "analysis" / "count_cnn")
                self.rows += r
                self.models.append(m)
            except Exception as exc:  # noqa: BLE001
                self.failed("cnn", cspec["label"], cspec["loss"], cspec["variant"], split_id, exc, t0)
            self.tick()


def _write_outputs(ctx, rows, status, models):
    counts_df = pd.DataFrame(rows, columns=COUNT_COLUMNS)
    counts_df["threshold"] = pd.to_numeric(counts_df["threshold"])
    by = ["feature", "classifier", "method", "variant"]
    rmse_df = count_errors(counts_df, by=tuple(by))
    if not counts_df.empty:
        thr_mean = counts_df.groupby(by, sort=False, dropna=False)["threshold"].mean().rename("threshold")
        rmse_df = rmse_df.join(thr_mean, on=by)
    rmse_df["status"] = "ok"
    rmse_df["error"] = None
    failed = [s for s in status if s["status"] == "failed"]
    if failed:
        fail_rows = pd.DataFrame([dict(feature=s["feature"], classifier=s["classifier"], method=s["method"],
                                       variant=s["variant"], **{"class": "mean"}, status="failed",
                                       error=s["error"]) for s in failed])
        rmse_df = pd.concat([rmse_df, fail_rows], ignore_index=True)
    out = Path(ctx.run_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    from ..aggregate import csv_safe
    csv_safe(counts_df).to_csv(out / "counts.csv", index=False)
    csv_safe(rmse_df).to_csv(out / "count_rmse.csv", index=False)
    if models:
        csv_safe(pd.DataFrame(models)).to_csv(out / "count_models.csv", index=False)
    return counts_df, rmse_df


__all__ = ["run_counting", "choose_cells", "SPEC_KEYS", "METHODS", "BASELINE"]

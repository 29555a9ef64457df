"""Stages "evaluate cells" and "end-to-end CNN rows": every feature x classifier x split
cell fitted on its training rows and scored on its test rows (a worker process per
cell, through joblib), and every ``finetune:`` model trained per split. Each finished
cell becomes one record and one predictions file in the run folder at once, so a killed
run resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from . import classifiers as _classifiers  # noqa: F401  (fills CLASSIFIERS, also in workers)
from . import records as rec
from .errors import BenchError, DataError
from .parallel import joblib_backend, wait_workers
from .protocol import SEARCH_SCORING, class_scores, score
from .registry import CLASSIFIERS, accepts

log = logging.getLogger(__name__)

SCORE_FIELDS = ("accuracy", "balanced_accuracy", "macro_f1", "fit_s", "predict_s",
                "n_features", "n_train", "n_test")


# --------------------------------------------------------------------------- one cell
def make_classifier(clf_spec: dict, seed: int):
    """The unfitted estimator of a ``classifiers:`` entry (``random_state`` from the seed)."""
    entry = CLASSIFIERS.entry(clf_spec["name"], where="classifiers")
    params = dict(clf_spec.get("params") or {})
    if accepts(entry.obj, "random_state") and "random_state" not in params:
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


def _dense(X):
    return np.asarray(X) if isinstance(X, np.memmap) else X


def _fit(pipe, X, Xtr, y, groups, train, val, search, seed, metric="macro_f1"):
    """``(fitted, best_params)``: a plain fit on ``Xtr = X[train]``, or a nested search over
    ``search`` (on the predefined validation rows when there are some, else an inner
    3-fold CV)."""
    if not search:
        return pipe.fit(Xtr, y[train]), None
    grid = {f"clf__{k}": v for k, v in search.items()}
    if val is not None and len(val):
        rows = np.concatenate([train, val])
        fold = PredefinedSplit(np.r_[np.full(len(train), -1), np.zeros(len(val), dtype=int)])
        model = GridSearchCV(pipe, grid, cv=fold, scoring=SEARCH_SCORING[metric], n_jobs=1, refit=False)
        model.fit(_dense(X[rows]), y[rows])
        best = {k[5:]: v for k, v in model.best_params_.items()}
        return clone(pipe).set_params(**model.best_params_).fit(Xtr, y[train]), best
    if groups is not None:
        inner = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed)
        model = GridSearchCV(pipe, grid, cv=inner, scoring=SEARCH_SCORING[metric], n_jobs=1)
        model.fit(Xtr, y[train], groups=groups[train])
    else:
        inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        model = GridSearchCV(pipe, grid, cv=inner, scoring=SEARCH_SCORING[metric], n_jobs=1)
        model.fit(Xtr, y[train])
    return model.best_estimator_, {k[5:]: v for k, v in model.best_params_.items()}


def run_cell(X, y, groups, train, test, fold_stage, clf_spec, seed, n_classes, val=None,
             estimator=None, metric="macro_f1") -> dict:
    """Fit on ``train`` rows, predict ``test`` rows. Runs in a worker process.

    ``val`` (the predefined protocol's validation rows): a nested search fits each
    candidate on ``train``, scores it on ``val`` (``PredefinedSplit``) and refits the
    best on ``train`` alone, so every row is fitted on the same images. ``estimator``:
    the classifier built in the main process (a plugin's class is unknown to a worker);
    ``metric`` (``protocol.metric``) scores the inner search's candidates."""
    with contextlib.suppress(Exception):
        import cv2
        cv2.setNumThreads(1)
    pipe = build_pipeline(fold_stage, clf_spec, seed, estimator)
    Xtr, Xte = _dense(X[train]), _dense(X[test])
    if Xtr.dtype != object and not np.all(np.isfinite(Xtr)):
        bad = int((~np.isfinite(Xtr)).any(axis=1).sum())
        raise DataError(f"{bad} training images have NaN or inf features",
                        "check the extractor on those images; constant or empty images can cause it")
    t0 = time.perf_counter()
    fitted, best = _fit(pipe, X, Xtr, y, groups, train, val, clf_spec.get("search"), seed, metric)
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


def safe_cell(*args) -> dict:
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


# --------------------------------------------------------------------------- typed result
@dataclass
class CellResult:
    """One finished cell: what its record and its predictions file say."""

    cell_id: str
    feature: str
    family: str
    classifier: str
    split: object                       # the protocol.Split it ran on
    variant: str | None = None
    weights: str = "n/a"
    scores: dict = field(default_factory=dict)   # SCORE_FIELDS
    error: str | None = None
    y_pred: np.ndarray | None = None
    proba: np.ndarray | None = None
    extract_ms_per_image: float | None = None
    params: str | None = None           # JSON text of the parameters (records' params field)

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self, run_id: str, dataset: str) -> dict:
        s = self.split
        return rec.make_record(
            run_id=run_id, dataset=dataset, feature=self.feature, family=self.family,
            classifier=self.classifier, split=s.index, repeat=s.repeat, fold=s.fold,
            cell_id=self.cell_id, variant=self.variant, weights=self.weights,
            extract_ms_per_image=self.extract_ms_per_image, params=self.params, time=rec.now(),
            status="ok" if self.ok else "failed", error=self.error,
            **{k: self.scores.get(k) for k in SCORE_FIELDS})


def save_result(ctx, result: CellResult, y_test=None) -> None:
    """A finished cell into the run folder: predictions first, then its record."""
    if result.ok:
        ctx.folder.save_predictions(result.cell_id, result.split.test, y_test, result.y_pred, result.proba)
    ctx.folder.append(result.record(ctx.run_id, ctx.dataset.name))


# --------------------------------------------------------------------------- the stages
def _todo(ctx, plan, variant):
    done = ctx.done
    out = []
    for label in ctx.feature_labels:
        for c in ctx.config["classifiers"]:
            for s in plan.splits:
                cid = rec.cell_id(label, c["label"], s.index, variant)
                if cid not in done:
                    out.append((ctx.features[label], c, s, cid))
    return out


def _result(ctx, f, c, s, cid, variant, res: dict) -> CellResult:
    meta = ctx.features_meta.get(f.label, {})
    params = json.dumps({"feature": f.spec["params"], "classifier": c["params"], "search": c.get("search"),
                         "best_params": res.get("best_params")}, default=str)
    return CellResult(cell_id=cid, feature=f.label, family=f.family, classifier=c["label"], split=s,
                      variant=variant, weights=meta.get("weights", "n/a"),
                      extract_ms_per_image=meta.get("extract_ms_per_image"), params=params,
                      error=res.get("error"), scores={k: res.get(k) for k in SCORE_FIELDS},
                      y_pred=res.get("y_pred"), proba=res.get("proba"))


def evaluate_cells(ctx, plan, groups=None, variant: str | None = None) -> list[CellResult]:
    """Every cell of ``plan`` not finished yet, over the features in ``ctx.matrices``,
    saved as it finishes; returns the results of this session."""
    from joblib import Parallel, delayed
    cfg, y = ctx.config, ctx.dataset.labels
    todo = _todo(ctx, plan, variant)
    # built here, shipped to the workers (by value for a plugin's classes); this also fails
    # early on a bad classifier name or parameter (a user mistake, not a cell failure)
    estimators = {c["label"]: make_classifier(c, cfg["seed"]) for c in cfg["classifiers"]}
    if not todo:
        return []
    workers, backend = joblib_backend(cfg["parallel"])
    wait_workers()  # the run's pool, started at the beginning of the run (bench.parallel)
    bar = ctx.progress(f"evaluate{' (' + variant + ')' if variant else ''}", len(todo)) if ctx.progress else None
    jobs = (delayed(safe_cell)(ctx.matrices[f.label].X, y, groups, s.train, s.test, f.fold_stage, c,
                               s.seed_or(cfg["seed"]), ctx.dataset.n_classes, getattr(s, "val", None),
                               estimators[c["label"]], cfg["protocol"]["metric"])
            for f, c, s, cid in todo)
    warned: dict = {}
    out = []
    try:
        for (f, c, s, cid), res in zip(todo, Parallel(n_jobs=workers, backend=backend,
                                                      return_as="generator")(jobs)):
            for w in res.get("warnings", []):
                warned.setdefault((f.label, c["label"], w), []).append(s.index)
            result = _result(ctx, f, c, s, cid, variant, res)
            save_result(ctx, result, y[s.test])
            if not result.ok:
                log.warning("cell %s failed: %s", cid, result.error)
            out.append(result)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for (label, clf, w), splits in warned.items():
            log.warning("%s + %s: %s (in %d of %d splits)", label, clf, w, len(splits), len(plan.splits))
    return out


def finetune_rows(ctx) -> list[CellResult]:
    """Train every ``finetune:`` model on each split it asks for (``folds``), once per
    unfinished split; each returns its rows (e.g. with and without TTA)."""
    out = []
    for spec in ctx.config["finetune"]:
        folds = spec.get("folds")
        splits = [s for s in ctx.plan.splits if folds is None or s.index in folds]
        variant = "folds-subset" if folds is not None and len(splits) < len(ctx.plan.splits) else None
        bar = ctx.progress(f"train {spec['label']}", len(splits)) if ctx.progress else None
        for s in splits:
            if rec.cell_id(spec["label"], "end-to-end", s.index, variant) not in ctx.done:
                out += _finetune_split(ctx, spec, s, variant)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return out


def _finetune_split(ctx, spec: dict, s, variant) -> list[CellResult]:
    from . import finetune
    label, y = spec["label"], ctx.dataset.labels
    params = json.dumps({k: v for k, v in spec.items()}, default=str)
    work = ctx.folder.finetune_dir / label / f"split{s.index}"
    try:
        rows = finetune.run_cell(dict(spec), ctx.dataset, s.train, s.test, s.index, work,
                                 s.seed_or(ctx.config["seed"]),
                                 on_missing_weights=ctx.config["on_missing_weights"], val_idx=s.val)
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.error("finetune %s split %d failed: %s: %s", label, s.index, type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        failed = CellResult(cell_id=rec.cell_id(label, "end-to-end", s.index, variant), feature=label,
                            family="cnn", classifier="end-to-end", split=s, variant=variant,
                            weights=None, error=f"{type(exc).__name__}: {exc}", params=params)
        save_result(ctx, failed)
        return [failed]
    out = []
    for r in rows:
        weights = r.get("weights", "n/a")
        result = CellResult(
            cell_id=rec.cell_id(label, r["classifier"], s.index, variant),
            feature=rec.tagged(label, weights), family="cnn",
            classifier=r["classifier"], split=s, variant=variant, weights=weights, params=params,
            scores={k: r.get(k) for k in SCORE_FIELDS}, y_pred=r["y_pred"], proba=r.get("proba"))
        save_result(ctx, result, y[s.test])
        out.append(result)
    return out

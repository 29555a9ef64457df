"""Misclassified examples of the best row: which test images to show, and their thumbnails.

The choice is deterministic and says something (it is not a random pick): the
out-of-fold mistakes of the best pretrained row of the run (first repeat, so each
image is tested once), most confident first, taken in turn from each true class so
one bad class does not fill the page. Without saved class probabilities the mistakes
are taken in image order, still in turn by class.

* :func:`pool` and :func:`select` are pure (numpy in, dicts out); the report uses them
  on the saved predictions when the run has no ``analysis/misclassified.json``.
* :func:`run_part` is the analysis stage (called by :func:`bench.analysis.run_analysis`
  while the dataset is at hand): it writes ``analysis/misclassified.json`` and a
  thumbnail per chosen image under ``analysis/gallery/`` (shared with the gallery).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from . import records as rec
from .runfolder import write_json

log = logging.getLogger(__name__)

DEFAULT_N = 12
FILE = "misclassified.json"


def best_row(best: dict):
    """The best of the family representatives (pretrained rows only), by mean macro-F1; None if none."""
    rows = [r for r in best.values() if r is not None and math.isfinite(float(r["macro_f1_mean"]))]
    if not rows:
        return None
    return max(rows, key=lambda r: (float(r["macro_f1_mean"]), -len(str(r["feature"]))))


def pool(preds_by_split: dict, keep=None) -> dict | None:
    """Concatenate per-split predictions (``test_index, y_true, y_pred[, proba]``) of the splits in
    ``keep`` (all when None): ``{"index", "y_true", "y_pred", "proba" (or None), "split"}``."""
    splits = sorted(s for s in preds_by_split if keep is None or s in keep)
    parts = [preds_by_split[s] for s in splits if preds_by_split[s] is not None]
    if not parts:
        return None
    out = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in ("test_index", "y_true", "y_pred")}
    out["split"] = np.concatenate([np.full(len(p["y_true"]), s) for s, p in zip(splits, parts)])
    out["index"] = out.pop("test_index").astype(np.int64)
    have = [p.get("proba") is not None for p in parts]
    out["proba"] = np.concatenate([np.asarray(p["proba"], dtype=float) for p in parts]) if all(have) else None
    return out


def select(pooled: dict, n: int) -> tuple[list[dict], int]:
    """``(chosen, n_mistakes)``: up to ``n`` mistakes of ``pooled`` as dicts (index, split, true, pred,
    confidence = probability of the predicted class, p_true = that of the true class; None
    without probabilities), most confident first, one true class after the other."""
    yt, yp = np.asarray(pooled["y_true"]), np.asarray(pooled["y_pred"])
    wrong = np.flatnonzero(yt != yp)
    proba = pooled.get("proba")
    items = []
    for k in wrong:
        conf = p_true = None
        if proba is not None and yp[k] < proba.shape[1] and yt[k] < proba.shape[1]:
            conf, p_true = float(proba[k, yp[k]]), float(proba[k, yt[k]])
        items.append({"index": int(pooled["index"][k]), "split": int(pooled["split"][k]), "true": int(yt[k]),
                      "pred": int(yp[k]), "confidence": conf, "p_true": p_true})
    items.sort(key=lambda it: (-(it["confidence"] if it["confidence"] is not None else 0.0), it["index"]))
    by_class: dict[int, list[dict]] = {}
    for it in items:  # classes in the order of their most confident mistake
        by_class.setdefault(it["true"], []).append(it)
    chosen: list[dict] = []
    while len(chosen) < min(max(n, 0), len(items)):
        for lst in by_class.values():
            if lst and len(chosen) < n:
                chosen.append(lst.pop(0))
    return chosen, len(items)


def _row_predictions(run_dir, records: list[dict], row) -> dict:
    out = {}
    for r in records:
        if (r.get("feature") == row["feature"] and r.get("classifier") == row["classifier"]
                and not r.get("variant") and r.get("status") == "ok"):
            p = rec.load_predictions(run_dir, r.get("cell_id") or rec.cell_id(r["feature"], r["classifier"],
                                                                            r["split"]))
            if p is not None:
                out[int(r["split"])] = p
    return out


def run_part(a) -> None:
    """The analysis stage (``a`` is :class:`bench.analysis._Analysis`); never raises on a
    missing input, it records why the part was skipped."""
    n = int(a.cfg.get("gallery", DEFAULT_N) or 0)
    if n <= 0:
        a.part("misclassified", "skipped", reason="report.gallery is 0")
        return
    row = best_row(a.best)
    if row is None:
        a.part("misclassified", "skipped", reason="no finished pretrained row")
        return
    t0 = time.perf_counter()
    pooled = pool(_row_predictions(a.run_dir, a.records, row), {int(s.index) for s in a.main_splits()})
    if pooled is None:
        a.part("misclassified", "skipped", reason="the best row has no saved predictions")
        return
    chosen, n_wrong = select(pooled, n)
    names = a.class_names
    ids = a.ds.ids
    for it in chosen:
        it.update(id=str(ids[it["index"]]) if ids is not None else str(it["index"]),
                  true_name=names[it["true"]] if it["true"] < len(names) else str(it["true"]),
                  pred_name=names[it["pred"]] if it["pred"] < len(names) else str(it["pred"]),
                  thumb=a.thumb(it["index"]))
    from .aggregate import feature_display
    data = {"row": {"dataset": row["dataset"], "family": row["family"], "feature": row["feature"],
                    "classifier": row["classifier"], "weights": row["weights"],
                    "label": feature_display(row["feature"], row["weights"]),
                    "macro_f1": float(row["macro_f1_mean"])},
            "n_tested": int(len(pooled["y_true"])), "n_mistakes": n_wrong,
            "has_proba": pooled["proba"] is not None, "items": chosen}
    write_json(a.out / FILE, data)
    a.part("misclassified", "done", n=len(chosen), n_mistakes=n_wrong,
           seconds=round(time.perf_counter() - t0, 2))


__all__ = ["best_row", "pool", "select", "run_part", "FILE"]

"""Learning curves of the end-to-end CNN: the best CNN row retrained on smaller training sets.

The frozen-feature learning curves (:meth:`bench.analysis._Analysis.learning_curves`)
refit a classifier on nested, stratified shares of each training fold. This stage
does the same for the best end-to-end CNN row of the run (pretrained, or from
scratch), so the report can put both on one axis: the number of training images.

* The same nested subsets as the frozen rows (one fixed permutation per class, seeded
  with ``[seed, split]``), on the first split of the first repeat that the CNN row
  finished; the fraction 1.0 point is that split's own record (no retraining).
* Each subset trains with :func:`bench.finetune.run_cell`, the same recipe, seed and
  validation carving (from the subset) as the row itself; the test fold is the full
  one. Work folders live under ``analysis/learning_cnn/`` and are reused when the
  analysis runs again (the trained weights are deleted, the predictions kept).
* Bounded by ``report.analysis_budget_s``, on a clock of its own (training a CNN costs
  more than the other parts together): a subset starts only when its expected time,
  the row's training time scaled by the fraction, fits in what is left.

Writes ``analysis/learning_curves_cnn.csv`` with the columns of ``learning_curves.csv``.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .records import untagged

log = logging.getLogger(__name__)

FILE = "learning_curves_cnn.csv"
MAX_SPLITS = 1
COLUMNS = ["dataset", "family", "feature", "classifier", "weights", "split", "fraction", "n_train",
           "accuracy", "balanced_accuracy", "macro_f1", "fit_s", "status", "error", "source"]


def _spec_of(config: dict, feature: str) -> dict | None:
    bare = untagged(feature)
    for spec in (config or {}).get("finetune") or []:
        if isinstance(spec, dict) and spec.get("label") in (feature, bare):
            return spec
    return None


def _row_record(records, row, split: int) -> dict | None:
    for r in records:
        if (r.get("feature") == row["feature"] and r.get("classifier") == row["classifier"]
                and not r.get("variant") and r.get("status") == "ok" and int(r["split"]) == split):
            return r
    return None


def _base(row, split: int, frac: float) -> dict:
    return {"dataset": row["dataset"], "family": "cnn", "feature": row["feature"],
            "classifier": row["classifier"], "weights": row["weights"], "split": int(split),
            "fraction": float(frac), "n_train": 0, "accuracy": np.nan, "balanced_accuracy": np.nan,
            "macro_f1": np.nan, "fit_s": np.nan, "status": "ok", "error": "", "source": "retrained"}


def _fit_subset(a, spec, row, s, sub, frac) -> dict:
    from . import finetune
    out = _base(row, s.index, frac)
    out["n_train"] = int(len(sub))
    seed_or = getattr(s, "seed_or", None)
    seed = seed_or(a.seed) if callable(seed_or) else a.seed
    work = a.out / "learning_cnn" / str(spec["label"]) / f"split{int(s.index)}-f{frac:g}"
    try:
        rows = finetune.run_cell(dict(spec), a.ds, sub, np.asarray(s.test), int(s.index), work, seed,
                                 on_missing_weights=(a.ctx.config or {}).get("on_missing_weights", "random"),
                                 val_idx=getattr(s, "val", None))
        got = next((r for r in rows if r["classifier"] == row["classifier"]), rows[0])
        out.update({k: got[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "fit_s")})
    except Exception as exc:  # noqa: BLE001 - e.g. too few images for the validation part
        out["status"], out["error"] = "failed", f"{type(exc).__name__}: {exc}"
        log.warning("CNN learning curve %s at %g failed: %s", row["feature"], frac, out["error"])
    (work / "best.weights.h5").unlink(missing_ok=True)
    return out


def run_part(a, nested_fraction) -> None:
    """The analysis stage (``a`` is :class:`bench.analysis._Analysis`; ``nested_fraction`` is
    :func:`bench.analysis.nested_fraction`, passed in so that both curves use the same subsets)."""
    if not a.cfg.get("learning_curves", True):
        a.part("learning_curves_cnn", "skipped", reason="report.learning_curves is false")
        return
    row = a.best.get("cnn")
    spec = _spec_of(a.ctx.config, row["feature"]) if row is not None else None
    if spec is None:
        a.part("learning_curves_cnn", "skipped", reason="no finished end-to-end CNN row with its recipe")
        return
    t0 = time.perf_counter()
    budget = float(a.cfg.get("analysis_budget_s", 120.0))
    fractions = sorted({float(f) for f in a.cfg.get("learning_fractions", (0.1, 0.25, 0.5, 0.75, 1.0))
                        if 0 < float(f) < 1})
    splits = [s for s in a.main_splits() if _row_record(a.records, row, int(s.index))][:MAX_SPLITS]
    out, stopped = [], []
    for s in splits:
        full = _row_record(a.records, row, int(s.index))
        r = _base(row, s.index, 1.0)
        r.update({k: full.get(k) for k in ("n_train", "accuracy", "balanced_accuracy", "macro_f1", "fit_s")},
                 source="record")
        out.append(r)
        train = np.asarray(s.train)
        ytr = a.y[train]
        rng = np.random.default_rng([a.seed, int(s.index)])  # the frozen rows' subsets
        perms = {int(c): rng.permutation(np.flatnonzero(ytr == c)) for c in np.unique(ytr)}
        for frac in fractions:
            expected = float(full.get("fit_s") or 0.0) * frac
            if time.perf_counter() - t0 + expected > budget:
                stopped.append(frac)
                continue
            out.append(_fit_subset(a, spec, row, s, train[nested_fraction(ytr, frac, perms)], frac))
    if stopped:
        msg = (f"CNN learning curve of {row['feature']}: fractions {', '.join(f'{f:g}' for f in stopped)} "
               f"skipped, their expected training time exceeds report.analysis_budget_s ({budget:.0f} s)")
        log.warning(msg)
        a.manifest["notes"].append(msg)
    import pandas as pd

    from .aggregate import csv_safe
    from .runfolder import write_text
    write_text(a.out / FILE, csv_safe(pd.DataFrame(out, columns=COLUMNS)).to_csv(index=False))
    a.part("learning_curves_cnn", "done", rows=len(out), fractions=fractions, skipped_fractions=stopped,
           splits=[int(s.index) for s in splits], seconds=round(time.perf_counter() - t0, 2))


__all__ = ["run_part", "FILE", "COLUMNS"]

"""The counting section of a report: the count table and the predicted-vs-true scatter.

Both are rebuilt from the run folder alone: ``analysis/counts.csv`` (one row per
held-out image, class and counter) gives every error through
:func:`bench.counting.evaluate.count_errors`; ``analysis/count_rmse.csv`` adds the
counters that failed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..counting.evaluate import count_errors
from .tables import Cell, Table, _num

BASELINE = "baseline: train mean"
KEYS = ["method", "feature", "classifier", "variant"]
METHOD_NAMES = {"baseline": "baseline", "nms": "sliding window + NMS",
                "aggregate": "sliding window, aggregated", "regression": "tile regression",
                "cnn": "end-to-end CNN"}


def _normalised(counts: pd.DataFrame) -> pd.DataFrame:
    df = counts.copy()
    for k in KEYS:
        if k not in df.columns:
            df[k] = None
    df["variant"] = df["variant"].where(df["variant"].notna(), "")
    base = df["feature"] == BASELINE
    df.loc[base, "method"] = "baseline"  # older runs repeat the baseline once per method
    df.loc[base, "variant"] = ""
    df = df[~base | ~df.duplicated(["image", "class", "split", "feature"] if "split" in df.columns
                                   else ["image", "class", "feature"])]
    df["method"] = df["method"].fillna("")
    return df


def count_summary(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per counter: mean column-wise RMSE, total RMSE, per-class RMSE, n images,
    and both RMSEs relative to the baseline; the baseline first, then by mean RMSE."""
    if counts is None or counts.empty or not {"image", "class", "true", "predicted"} <= set(counts.columns):
        return pd.DataFrame()
    df = _normalised(counts)
    classes = list(dict.fromkeys(df["class"]))
    err = count_errors(df, by=tuple(KEYS))
    rows = []
    for key, g in err.groupby(KEYS, sort=False, dropna=False):
        per = g.set_index("class")["rmse"]
        r = dict(zip(KEYS, key))
        r.update(mean_rmse=float(per.get("mean", np.nan)), total_rmse=float(per.get("total", np.nan)),
                 n_images=int(g["n_images"].max()))
        r.update({f"rmse {c}": float(per.get(c, np.nan)) for c in classes})
        rows.append(r)
    out = pd.DataFrame(rows)
    base = out[out["method"] == "baseline"]
    if len(base):
        out["mean_vs_baseline"] = out["mean_rmse"] / float(base["mean_rmse"].iloc[0])
        out["total_vs_baseline"] = out["total_rmse"] / float(base["total_rmse"].iloc[0])
    out["_b"] = (out["method"] != "baseline").astype(int)
    return out.sort_values(["_b", "mean_rmse"], kind="stable").drop(columns="_b").reset_index(drop=True)


def count_table(summary: pd.DataFrame, name: str = "count-table") -> Table:
    """The count table of the report (see :func:`count_summary`)."""
    class_cols = [c for c in summary.columns if c.startswith("rmse ")]
    ratios = "mean_vs_baseline" in summary.columns
    cols = ["Counter", "Feature", "Model", "Setting", "Mean column-wise RMSE", "Total RMSE"]
    cols += (["Mean / baseline", "Total / baseline"] if ratios else [])
    cols += [c[5:] for c in class_cols] + ["Images"]
    numeric = set(range(4, len(cols)))
    rows, classes = [], []
    for _, r in summary.iterrows():
        cells = [Cell(METHOD_NAMES.get(r["method"], str(r["method"]))), Cell(str(r["feature"])),
                 Cell(str(r["classifier"] if r["classifier"] not in (None, "-") else "")),
                 Cell(str(r["variant"] or "")),
                 Cell(_num(r["mean_rmse"], ".2f"), r["mean_rmse"]),
                 Cell(_num(r["total_rmse"], ".1f"), r["total_rmse"])]
        if ratios:
            cells += [Cell(_num(r["mean_vs_baseline"], ".2f"), r["mean_vs_baseline"]),
                      Cell(_num(r["total_vs_baseline"], ".2f"), r["total_vs_baseline"])]
        cells += [Cell(_num(r[c], ".2f"), r[c]) for c in class_cols]
        cells.append(Cell(str(int(r["n_images"])), int(r["n_images"])))
        rows.append(cells)
        classes.append("baseline" if r["method"] == "baseline" else "")
    cap = ("Per-image count errors of every counter on held-out images only (each image counted by a "
           "model that never saw it). Mean column-wise RMSE = mean over classes of the per-class RMSE "
           "(the NOAA score); Total RMSE = error of the total count per image. The baseline predicts "
           "each class's mean count over the training images; ratios below 1 beat it.")
    return Table(name, cols, rows, numeric, cap, classes)


def failed_counters(rmse: pd.DataFrame | None) -> Table | None:
    if rmse is None or "status" not in rmse.columns:
        return None
    bad = rmse[rmse["status"] == "failed"]
    if bad.empty:
        return None
    rows = [[Cell(str(r.get("method", ""))), Cell(str(r.get("feature", ""))), Cell(str(r.get("classifier", ""))),
             Cell(str(r.get("variant", "") if pd.notna(r.get("variant", None)) else "")),
             Cell(str(r.get("error", "")), cls="error")] for _, r in bad.iterrows()]
    return Table("count-failed", ["Counter", "Feature", "Model", "Setting", "Error"], rows, set(),
                 "Counters that failed on at least one split (the others are unaffected).")


def scatter_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows drawn in the scatter: the baseline and the best row of each counter method."""
    if summary.empty:
        return summary
    return summary.groupby("method", sort=False).head(1)


def count_scatter(counts: pd.DataFrame, summary: pd.DataFrame):
    """Predicted vs true total count per held-out image, for the rows of :func:`scatter_rows`."""
    from .plots import MARKERS, _PALETTE, _fig, _short

    df = _normalised(counts)
    show = scatter_rows(summary)
    fig = _fig(5.6, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    hi = 1.0
    keys = [k for k in ("image", "split") if k in df.columns]
    for i, (_, r) in enumerate(show.iterrows()):
        sel = np.ones(len(df), bool)
        for k in KEYS:
            sel &= (df[k].astype(str) == str(r[k])).to_numpy()
        tot = df[sel].groupby(keys)[["true", "predicted"]].sum()
        hi = max(hi, float(tot.to_numpy().max()) if len(tot) else 1.0)
        name = "baseline" if r["method"] == "baseline" else \
            f"{METHOD_NAMES.get(r['method'], r['method'])}: {_short(r['feature'], 22)}"
        ax.scatter(tot["true"], tot["predicted"], s=28, marker=MARKERS[i % len(MARKERS)],
                   color=_PALETTE[i % len(_PALETTE)], alpha=0.85,
                   label=f"{name} (total RMSE {r['total_rmse']:.1f})")
    ax.plot([0, hi * 1.05], [0, hi * 1.05], color="#888888", lw=1, ls="--", label="predicted = true")
    ax.set_xlim(0, hi * 1.05)
    ax.set_ylim(0, hi * 1.05)
    ax.set_xlabel("true animals per image")
    ax.set_ylabel("predicted animals per image")
    ax.set_title("Total count per held-out image")
    ax.legend(loc="upper left", frameon=False)
    return fig

"""Aggregate per-fold records into one row per (dataset, feature, classifier, variant).

The summary is the single source of every leaderboard: the CLI's fixed-width table
(:func:`leaderboard_text`), ``results/<run-id>/summary.csv`` (:func:`save_summary`)
and the report tables. Scores are means over the folds that finished, with the
sample std and a Student-t 95% interval (:func:`bench.stats.mean_ci`); failed folds
are counted, never averaged in.

Rows computed with randomly initialised CNN weights carry ``[random-init]`` in their
display label (:func:`feature_display`) so they can never pass for pretrained rows, and
they are never a family's representative (:func:`best_by_family`): a family whose rows
are all random-init is "not pretrained" (:func:`not_pretrained_families`) and left out
of every verdict.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from . import records as rec
from .records import is_random_init  # noqa: F401  (re-exported: the report modules use it)
from .stats import mean_ci

KEYS = ["dataset", "feature", "classifier", "variant"]
METRICS = rec.METRICS
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}
COSTS = ["extract_ms_per_image", "fit_s", "predict_s"]
FAMILY_ORDER = ["handcrafted", "deep", "hybrid", "cnn"]


def feature_display(feature, weights=None) -> str:
    """Feature label as shown everywhere: ``"mobilenetv2-gap [random-init]"`` for random weights."""
    return rec.tagged(feature, weights)


def row_label(feature, classifier, weights=None, variant=None) -> str:
    """``"<feature> + <classifier>"`` with the random-init tag and a variant suffix."""
    label = f"{feature_display(feature, weights)} + {classifier}"
    if variant:
        label += f" ({variant})"
    return label


def _first(values: Iterable):
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return v
    return None


def run_metric(run_dir) -> str:
    """``protocol.metric`` of a run folder's ``config.yaml``: what ranks its rows (macro_f1 if unset)."""
    import yaml
    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        metric = (cfg.get("protocol") or {}).get("metric") or "macro_f1"
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return "macro_f1"
    return metric if metric in METRIC_NAMES else "macro_f1"


def summarize(records: list[dict] | pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame:
    """One row per (dataset, feature, classifier, variant), sorted by mean ``metric``
    (``protocol.metric``, see :func:`sort_summary`).

    Columns: the keys (``variant`` is ``""`` for the main protocol), ``family``,
    ``weights``, ``label`` (display label), ``n_folds_ok``, ``n_folds_failed``,
    ``<metric>_{mean,std,ci_low,ci_high}`` for accuracy, balanced_accuracy and
    macro_f1 (fractions; the 95% t-interval is clipped to [0, 1]), mean
    ``extract_ms_per_image``/``fit_s``/``predict_s``/``n_train``/``n_test``, median
    ``n_features`` and ``error`` (distinct errors of failed folds).
    The last record of each cell wins (a failed cell re-run later is replaced).
    """
    frame = records if isinstance(records, pd.DataFrame) else rec.to_frame(list(records))
    cols = (KEYS + ["family", "weights", "label", "n_folds_ok", "n_folds_failed"]
            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "ci_low", "ci_high")]
            + COSTS + ["n_features", "n_train", "n_test", "error"])
    if frame.empty:
        return pd.DataFrame(columns=cols)
    frame = frame.copy()
    for k in KEYS:
        frame[k] = frame[k].where(frame[k].notna(), "").astype(str)
    rows = []
    for key, g in frame.groupby(KEYS, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        failed = g[g["status"] != "ok"]
        row = dict(zip(KEYS, key))
        row["family"] = _first(g["family"]) or "unknown"
        row["weights"] = _first(g["weights"]) or "n/a"
        row["label"] = row_label(row["feature"], row["classifier"], row["weights"], row["variant"])
        row["n_folds_ok"] = int(len(ok))
        row["n_folds_failed"] = int(len(failed))
        for m in METRICS:
            iv = mean_ci(pd.to_numeric(ok[m], errors="coerce").to_numpy(dtype=float))
            row[f"{m}_mean"], row[f"{m}_std"] = iv.mean, iv.std
            # scores live in [0, 1]: the t-interval is clipped to that range
            row[f"{m}_ci_low"] = max(0.0, iv.ci_low) if math.isfinite(iv.ci_low) else iv.ci_low
            row[f"{m}_ci_high"] = min(1.0, iv.ci_high) if math.isfinite(iv.ci_high) else iv.ci_high
        for c in COSTS + ["n_train", "n_test"]:
            v = pd.to_numeric(ok[c], errors="coerce")
            row[c] = float(v.mean()) if v.notna().any() else math.nan
        nf = pd.to_numeric(ok["n_features"], errors="coerce").dropna()
        row["n_features"] = int(nf.median()) if len(nf) else None
        errs = [str(e) for e in failed["error"].dropna().unique()]
        row["error"] = "; ".join(errs)[:2000] if errs else ""
        rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    return sort_summary(out, metric)


def sort_summary(df: pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame:
    """Main-protocol rows first, best mean first; variant rows (e.g. the leaky
    ``random-split`` score) after them; rows without a score (all folds failed) last."""
    if df.empty:
        return df.reset_index(drop=True)
    order = df.assign(_variant=(df["variant"] != "").astype(int),
                      _nan=df[f"{metric}_mean"].isna().astype(int))
    order = order.sort_values(["_nan", "_variant", f"{metric}_mean", "label"],
                              ascending=[True, True, False, True], kind="mergesort")
    return order.drop(columns=["_variant", "_nan"]).reset_index(drop=True)


def _scored_main(summary: pd.DataFrame, metric: str, dataset: str | None) -> pd.DataFrame:
    df = summary[(summary["variant"] == "") & summary[f"{metric}_mean"].notna()]
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    return df


def _families(df: pd.DataFrame) -> list[str]:
    present = set(df["family"])
    return [f for f in FAMILY_ORDER if f in present] + sorted(present - set(FAMILY_ORDER))


def best_by_family(summary: pd.DataFrame, metric: str = "macro_f1", dataset: str | None = None,
                   pretrained_only: bool = True) -> dict[str, pd.Series]:
    """The best main-protocol row (highest mean ``metric``) of each feature family.

    With ``pretrained_only`` (the default, and what every verdict uses) random-init rows
    are never chosen: a family with only random-init rows is absent from the result
    (see :func:`not_pretrained_families`).
    """
    df = _scored_main(summary, metric, dataset)
    if pretrained_only and len(df):
        df = df[~df["weights"].map(is_random_init)]
    out: dict[str, pd.Series] = {}
    for fam in _families(df):
        out[fam] = sort_summary(df[df["family"] == fam], metric).iloc[0]
    return out


def not_pretrained_families(summary: pd.DataFrame, metric: str = "macro_f1",
                            dataset: str | None = None) -> dict[str, pd.Series]:
    """Families whose every scored main-protocol row is random-init, with their best row."""
    df = _scored_main(summary, metric, dataset)
    out: dict[str, pd.Series] = {}
    for fam in _families(df):
        sub = df[df["family"] == fam]
        if sub["weights"].map(is_random_init).all():
            out[fam] = sort_summary(sub, metric).iloc[0]
    return out


def fold_scores(records: list[dict] | pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame:
    """Per-split scores: index = split, columns = (dataset, feature, classifier, variant)."""
    frame = records if isinstance(records, pd.DataFrame) else rec.to_frame(list(records))
    frame = frame[frame["status"] == "ok"].copy()
    if frame.empty:
        return pd.DataFrame()
    for k in KEYS:
        frame[k] = frame[k].where(frame[k].notna(), "").astype(str)
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    return frame.pivot_table(index="split", columns=KEYS, values=metric, aggfunc="mean")


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def fmt_pm(mean, std) -> str:
    """``"85.3 ± 2.1"``: a score fraction shown in percent with its std."""
    if mean is None or not np.isfinite(mean):
        return "-"
    if std is None or not np.isfinite(std):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def fmt_ci(lo, hi) -> str:
    """``"[82.7, 87.9]"`` in percent."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "-"
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def _pm(row, m) -> str:
    return fmt_pm(row[f"{m}_mean"], row[f"{m}_std"])


def leaderboard_text(df: pd.DataFrame, max_rows: int | None = None, metric: str = "macro_f1") -> str:
    """Fixed-width leaderboard, best mean ``metric`` first (``protocol.metric``; mean ± std and
    the macro-F1 95% interval, in %). A metric other than macro-F1 is named on a first line.

    Variant rows (e.g. the leaky random-split score) follow the main rows, unranked;
    rows whose folds all failed are listed last as ``failed``.
    """
    if df is None or df.empty:
        return "(no results)"
    df = sort_summary(df, metric)
    multi = df["dataset"].nunique() > 1
    header = (["#"] + (["dataset"] if multi else [])
              + ["feature", "classifier", "family", "macro-F1 %", "95% CI", "accuracy %",
                 "bal. acc. %", "ms/img", "fit s", "dim", "folds"])
    lines = []
    shown = df if max_rows is None else df.head(max_rows)
    rank = 0
    for row in shown.itertuples(index=False):
        r = row._asdict()
        rank += 0 if r["variant"] else 1
        i = "" if r["variant"] else rank
        feat = feature_display(r["feature"], r["weights"]) + (f" ({r['variant']})" if r["variant"] else "")
        folds = f"{r['n_folds_ok']}/{r['n_folds_ok'] + r['n_folds_failed']}"
        if r["n_folds_ok"] == 0:
            cells = [str(i)] + ([r["dataset"]] if multi else []) + [
                feat, r["classifier"], r["family"], "failed", "", "", "", "", "", "", folds]
        else:
            ci = fmt_ci(r["macro_f1_ci_low"], r["macro_f1_ci_high"])
            cells = [str(i)] + ([r["dataset"]] if multi else []) + [
                feat, r["classifier"], r["family"], _pm(r, "macro_f1"), ci,
                _pm(r, "accuracy"), _pm(r, "balanced_accuracy"),
                _fmt(r["extract_ms_per_image"], ".2f"), _fmt(r["fit_s"], ".2f"),
                "-" if r["n_features"] is None or pd.isna(r["n_features"]) else str(int(r["n_features"])),
                folds]
        lines.append(cells)
    widths = [max(len(header[j]), *(len(c[j]) for c in lines)) for j in range(len(header))]
    numeric_from = header.index("macro-F1 %")

    def fmt_line(cells):
        return "  ".join(c.rjust(w) if j >= numeric_from or j == 0 else c.ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt_line(header), fmt_line(["-" * w for w in widths])] + [fmt_line(c) for c in lines]
    if metric != "macro_f1":
        out.insert(0, f"ranked by mean {METRIC_NAMES[metric]} (protocol.metric)")
    if max_rows is not None and len(df) > max_rows:
        out.append(f"... {len(df) - max_rows} more rows in summary.csv")
    return "\n".join(out)


# CSV cells a spreadsheet would run as a formula (=HYPERLINK(...), +cmd, -2+3, @SUM): written
# with a leading "'" (and a leading "'" doubled, so csv_unescape gives back the exact text)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_PLAIN_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?%?")


def csv_cell(value):
    """``value`` made safe for a spreadsheet (text only; plain numbers such as ``-1.5`` and the
    lone ``-`` of an empty table cell stay as they are: neither is a formula)."""
    if isinstance(value, str) and value[:1] in _FORMULA_START and value != "-" \
            and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _uncell(value):
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and value[1] in _FORMULA_START:
        return value[1:]
    return value


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` for ``to_csv``: every text cell and column name through :func:`csv_cell`."""
    return _map_text(df, csv_cell)


def csv_unescape(df: pd.DataFrame) -> pd.DataFrame:
    """The inverse of :func:`csv_safe`, for a CSV that bench reads back."""
    return _map_text(df, _uncell)


def _map_text(df: pd.DataFrame, fn) -> pd.DataFrame:
    out = df.rename(columns=fn)
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            out.isetitem(i, col.map(fn))
    return out


def save_summary(run_dir: Path, records: list[dict] | None = None) -> Path:
    """Aggregate a run folder's records (``records``: already in memory, else read through
    :class:`bench.runfolder.RunFolder`) into its ``summary.csv`` (returned), ranked by the
    run's ``protocol.metric``; text cells spreadsheet-safe (:func:`csv_safe`)."""
    from .runfolder import SUMMARY, RunFolder, write_text
    folder = RunFolder(run_dir)
    df = summarize(folder.records() if records is None else records, run_metric(run_dir))
    return write_text(folder.file(SUMMARY), csv_safe(df).to_csv(index=False))

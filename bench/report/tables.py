"""The report's tables and statistical comparisons, computed once from a :class:`RunData`.

A :class:`Table` holds display text plus sort keys and style hints; the HTML and the
PDF render the same objects and ``reports/<run-id>/tables/<name>.csv`` stores their
text, so a rebuilt report can be compared table by table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score

from .. import stats
from ..aggregate import (FAMILY_ORDER, METRIC_NAMES, best_by_family, fmt_ci, fmt_pm, is_random_init,
                         not_pretrained_families)
from .labels import (FAMILY_TITLES, css_token, feature_name, name_of, row_name, variant_words,
                     weights_words)
from .rundata import RunData

ALPHA = 0.05
MAX_CONFUSION_CLASSES = 20
BALANCE_RATIO = 1.1   # classes this close in size count as balanced (balanced accuracy ~ accuracy)
feature_display = feature_name   # the report's names come from .labels (kept for older imports)
row_label = row_name


# --------------------------------------------------------------------------- table model
@dataclass
class Cell:
    """``text`` shown; ``sub`` a secondary line (e.g. the 95% interval); ``sort`` the sort key."""

    text: str
    sort: object = None
    cls: str = ""
    title: str = ""
    sub: str = ""

    @property
    def full(self) -> str:
        return f"{self.text} {self.sub}" if self.sub else self.text


@dataclass
class Table:
    """Rows of :class:`Cell`; ``numeric`` marks right-aligned, numerically sorted columns."""

    name: str
    columns: list
    rows: list
    numeric: set = field(default_factory=set)
    caption: str = ""
    row_classes: list = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([[c.full for c in r] for r in self.rows], columns=self.columns)

    def select(self, columns: list[str]) -> "Table":
        """A copy with only ``columns`` (those present), in that order."""
        idx = [self.columns.index(c) for c in columns if c in self.columns]
        return Table(self.name, [self.columns[i] for i in idx], [[r[i] for i in idx] for r in self.rows],
                     {k for k, i in enumerate(idx) if i in self.numeric}, self.caption,
                     list(self.row_classes))

    def __len__(self) -> int:
        return len(self.rows)


def key_of(row) -> tuple:
    return (row["dataset"], row["feature"], row["classifier"], row["variant"])


def label_of(row) -> str:
    """A summary row's display name (:func:`bench.report.labels.name_of`)."""
    return name_of(row)


def fmt_p(p, alpha: float = ALPHA) -> str:
    """Two decimals, three below 0.01, four near ``alpha`` (so 0.0496 never reads as 0.05)."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    if abs(p - alpha) < 0.005:
        return f"{p:.4f}"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _p_only(p) -> str:
    """``p = 0.04`` or ``p < 0.001``."""
    s = fmt_p(p)
    return f"p {s}" if s.startswith("<") else f"p = {s}"


def fmt_duration(seconds) -> str:
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "unknown"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m} min" if h else (f"{m} min {sec} s" if m else f"{seconds:.1f} s")


def _num(x, spec) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)) or pd.isna(x):
        return "-"
    return format(x, spec)


def _sortval(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) or pd.isna(x) else float(x)


# --------------------------------------------------------------------------- run header
def header_facts(rd: RunData) -> list[tuple[str, str]]:
    """(name, value) lines of the run header."""
    ds, sp, env, cfg = rd.dataset, rd.splits, rd.env, rd.config
    n_images = ds.get("n_images") or (len(ds["labels"]) if ds.get("labels") else None)
    names = rd.class_names
    facts = [("Dataset", f"{ds.get('name') or ', '.join(rd.datasets) or 'unknown'}"
              + (f" ({ds.get('kind')}, {ds.get('modality')})" if ds.get("kind") else "")),
             ("Images / classes", f"{n_images if n_images is not None else '?'} images, {len(names)} "
                                  "classes")]
    if sp and is_predefined(rd):
        facts.append(("Protocol", predefined_text(sp)))
    elif sp:
        grouped = sp.get("grouped")
        n_splits, n_rep = sp.get("n_splits"), sp.get("n_repeats", 1)
        protocol = f"{sp.get('splitter', '?')}: {n_splits} folds × {n_rep} repeat{'s' if n_rep != 1 else ''}"
        protocol += "; grouped by source image (no source image in both train and test)" if grouped \
            else "; not grouped (images treated as independent)"
        facts.append(("Protocol", protocol))
    else:
        facts.append(("Protocol", "splits.json missing"))
    facts.append(("Seed", str(env.get("seed", cfg.get("seed", "?")))))
    hw = [env.get("cpu"), f"{env['n_cores']} cores" if env.get("n_cores") else None,
          f"GPU: {env['gpu']}" if env.get("gpu") else "no GPU",
          f"device: {env['device']}" if env.get("device") else None]
    facts.append(("Hardware", ", ".join(str(h) for h in hw if h)))
    if env.get("host"):
        facts.append(("Host", str(env["host"])))
    facts.append(("Started", f"{env.get('started', '?')} (duration {fmt_duration(env.get('duration_s'))})"))
    if env.get("command"):
        facts.append(("Command", str(env["command"])))
    if env.get("python"):
        facts.append(("Python", str(env["python"])))
    n_ok = sum(1 for r in rd.records if r.get("status") == "ok")
    n_failed = sum(1 for r in rd.records if r.get("status") != "ok")
    facts.append(("Cells", f"{n_ok} finished, {n_failed} failed"))
    return facts


def is_predefined(rd: RunData) -> bool:
    """The run used the dataset's own split (``protocol: predefined``)."""
    return (rd.splits or {}).get("kind") == "predefined"


def predefined_text(sp: dict) -> str:
    """``official test split, n = 600 (fitted on train, n = 2000; val, n = 400, ...)``."""
    folds = sp.get("folds") or [{}]
    first = folds[0]
    n_test = sp.get("n_test", len(first.get("test", [])))
    n_train = sp.get("n_train", len(first.get("train", [])))
    n_val = sp.get("n_val", len(first.get("val") or []))
    seeds = sp.get("seeds") or [f.get("seed") for f in folds]
    text = f"official test split, n = {n_test} (fitted on the official train split, n = {n_train}"
    text += (f"; val split, n = {n_val}, for early stopping and nested search)" if n_val
             else "; no val split)")
    if len(seeds) > 1:
        text += (f"; {len(seeds)} refits with seeds {', '.join(str(x) for x in seeds)}: the spread is over "
                 "seeds on the same test images, not over test sets")
    else:
        text += f"; one fit (seed {seeds[0]}): no spread"
    return text


def packages_text(rd: RunData) -> str:
    pk = rd.env.get("packages") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(pk.items())) or "not recorded"


def weights_table(rd: RunData) -> Table:
    """Weights of every learned backbone: frozen-CNN features (features.json) and
    end-to-end models (their records), each under its display name."""
    rows = []
    for label, f in rd.features.items():
        fam = f.get("family", "?")
        w = f.get("weights") or "n/a"
        if fam == "handcrafted" and w in ("n/a", None):
            continue
        rows.append(_weights_row(label, fam, w, f.get("weights_file"), f.get("n_features"),
                                 f.get("extract_ms_per_image")))
    s = rd.summary
    cnn = s[(s["family"] == "cnn") & (s["variant"] == "")] if len(s) else s
    if len(cnn) == 0 and len(s):
        cnn = s[s["family"] == "cnn"]
    seen = set(rd.features)
    for _, r in cnn.iterrows():
        if r["feature"] in seen:
            continue
        seen.add(r["feature"])
        rows.append(_weights_row(r["feature"], "cnn", r["weights"] or "n/a", None, None, None,
                                 params=r["n_features"]))
    cols = ["Feature", "Family", "Weights", "Weights file", "Feature dim", "Trainable params", "ms / image"]
    return Table("weights", cols, rows, numeric={4, 5, 6},
                 caption="Weights provenance of every learned backbone: frozen-CNN features and end-to-end "
                         "models (scratch models start from random weights by design).")


def _weights_row(label, fam, w, file, dim, ms, params=None) -> list[Cell]:
    cls = "warn" if is_random_init(w) else ""
    return [Cell(feature_name(label, w), cls=f"name {cls}".strip()),
            Cell(FAMILY_TITLES.get(fam, fam), cls=f"fam-{css_token(fam)}"),
            Cell(weights_words(w), cls=cls),
            Cell(str(file or "-"), cls="name"),
            Cell(_num(dim, "d") if isinstance(dim, int) else "-"),
            Cell(_num(params, ",.0f") if params is not None and _sortval(params) is not None else "-"),
            Cell(_num(ms, ".2f"))]


def _random_backbones(desc, out: dict) -> None:
    """Collect ``backbone -> (note, hint)`` of random-init CNN parts in a describe() tree."""
    if not isinstance(desc, dict):
        return
    if is_random_init(desc.get("weights")) and desc.get("backbone"):
        out.setdefault(str(desc["backbone"]), (desc.get("weights_note"), desc.get("weights_hint")))
    for p in desc.get("parts") or []:
        _random_backbones(p, out)


def weights_banner(rd: RunData) -> list[str]:
    """Lines of the warning shown at the top of the report when rows use random weights:
    which rows, which families are therefore "not pretrained", why, and how to supply
    the weights. Empty when every learned row is pretrained."""
    s = rd.summary
    if not len(s):
        return []
    main = s[s["variant"] == ""]
    rnd = main[main["weights"].map(is_random_init)]
    if not len(rnd):
        return []
    feats = list(dict.fromkeys(feature_display(f, "random-init") for f in rnd["feature"]))
    shown = ", ".join(feats[:6]) + (f" and {len(feats) - 6} more" if len(feats) > 6 else "")
    many = len(feats) != 1
    lines = [f"Not pretrained: {len(feats)} feature{'s' if many else ''} ({shown}) "
             f"use{'' if many else 's'} randomly initialised CNN weights: flagged [random-init], never "
             "the representative of a family in a verdict."]
    unp = not_pretrained_families(s)
    if unp:
        names = ", ".join(FAMILY_TITLES.get(f, f) for f in unp)
        lines.append(f"Family {names}: not pretrained (only random-init rows), excluded from the headline.")
    backbones: dict = {}
    for f in rd.features.values():
        _random_backbones(f.get("describe") or {}, backbones)
    for name, (note, hint) in backbones.items():
        why = f"{note.rstrip('.')}." if note else "random weights were asked for (weights: random)."
        lines.append(f"{name}: {why}" + (f" To supply them: {hint}." if hint else ""))
    if not backbones or any(not hint for _, hint in backbones.values()):
        lines.append("ImageNet weights come, in this order, from a package (backbone efficientnet_lite0 "
                     "works offline), the Keras cache or Keras' download when online (not with "
                     "offline: true / BENCH_OFFLINE=1), or a file named with weights: /path/to/file.h5.")
    return lines


# --------------------------------------------------------------------------- leaderboard
def classes_balanced(counts) -> bool | None:
    """True when the largest class is at most :data:`BALANCE_RATIO` times the smallest
    (balanced accuracy then repeats accuracy); None when the counts are unknown."""
    c = [int(x) for x in (counts or []) if x is not None]
    if not c or min(c) <= 0:
        return None
    return max(c) <= BALANCE_RATIO * min(c)


def class_counts(rd: RunData) -> list[int]:
    labels = rd.dataset.get("labels")
    if not labels:
        return []
    return np.bincount(np.asarray(labels, dtype=int)).tolist()


def _score_cells(r, metrics, failed_all) -> list[Cell]:
    out = []
    for m in metrics:
        if failed_all:
            out.append(Cell("failed", -1.0, "failed", r["error"]))
        else:
            out.append(Cell(fmt_pm(r[f"{m}_mean"], r[f"{m}_std"]), _sortval(r[f"{m}_mean"]),
                            sub=fmt_ci(r[f"{m}_ci_low"], r[f"{m}_ci_high"])))
    return out


def _size_cells(r, with_params: bool) -> list[Cell]:
    """Feature dimension (classic rows) and trainable parameters (end-to-end rows)."""
    end_to_end = r["family"] == "cnn"
    dim = Cell("-", None, "muted", "end-to-end: no separate feature vector") if end_to_end else \
        Cell(_num(r["n_features"], ".0f"), _sortval(r["n_features"]))
    if not with_params:
        return [dim]
    params = Cell(_num(r["n_features"], ",.0f"), _sortval(r["n_features"])) if end_to_end else \
        Cell("-", None, "muted", "the classifier's parameters are not counted")
    return [dim, params]


def leaderboard(summary: pd.DataFrame, top: int | None = None, name: str = "leaderboard",
                balanced: bool | None = None) -> Table:
    """All rows: mean ± std and 95% interval (percent), costs, size and folds.

    ``balanced``: the classes are balanced, so the balanced-accuracy column is left out
    (and the caption says so). "Feature dim" is the vector the classifier sees;
    "Trainable params" (only when there are end-to-end rows) the CNN's trained weights.
    """
    multi = summary["dataset"].nunique() > 1 if len(summary) else False
    metrics = ["macro_f1", "accuracy"] + ([] if balanced else ["balanced_accuracy"])
    with_params = bool(len(summary)) and (summary["family"] == "cnn").any()
    cols = (["#"] + (["Dataset"] if multi else [])
            + ["Feature", "Family", "Classifier", "Macro-F1 %", "Accuracy %"]
            + ([] if balanced else ["Balanced acc. %"])
            + ["Extract ms/img", "Fit s", "Predict s", "Feature dim"]
            + (["Trainable params"] if with_params else []) + ["Folds ok"])
    numeric = {0} | set(range(cols.index("Macro-F1 %"), len(cols)))
    rows, rclasses = [], []
    rank = 0
    df = summary if top is None else summary.head(top)
    for _, r in df.iterrows():
        failed_all = r["n_folds_ok"] == 0
        rank += 0 if r["variant"] else 1
        feat = feature_name(r["feature"], r["weights"], r["variant"])
        fcls = "name warn" if is_random_init(r["weights"]) else "name"
        cells = [Cell("" if r["variant"] else str(rank), rank if not r["variant"] else 1e9)]
        if multi:
            cells.append(Cell(str(r["dataset"]), cls="name"))
        cells += [Cell(feat, feat.lower(), fcls),
                  Cell(FAMILY_TITLES.get(r["family"], r["family"]), r["family"],
                       f"fam-{css_token(r['family'])}"),
                  Cell(str(r["classifier"]), str(r["classifier"]).lower(), "name")]
        cells += _score_cells(r, metrics, failed_all)
        n_tot = int(r["n_folds_ok"] + r["n_folds_failed"])
        cells += [Cell(_num(r["extract_ms_per_image"], ".2f"), _sortval(r["extract_ms_per_image"])),
                  Cell(_num(r["fit_s"], ".2f"), _sortval(r["fit_s"])),
                  Cell(_num(r["predict_s"], ".3f"), _sortval(r["predict_s"])),
                  *_size_cells(r, with_params),
                  Cell(f"{int(r['n_folds_ok'])}/{n_tot}", r["n_folds_ok"],
                       "failed" if r["n_folds_failed"] else "", r["error"] or "")]
        rows.append(cells)
        classes = ["variant" if r["variant"] else "", "failed-row" if failed_all else "",
                   f"fam-{css_token(r['family'])}"]
        rclasses.append(" ".join(c for c in classes if c))
    return Table(name, cols, rows, numeric, leaderboard_caption(df, balanced), rclasses)


def leaderboard_caption(df: pd.DataFrame, balanced: bool | None) -> str:
    """The caption says what the table shows, and only that: the variants present, the
    columns left out and the hybrid extraction times."""
    cap = "Mean ± std over folds, with the Student-t 95% interval below (percent)."
    variants = list(dict.fromkeys(v for v in df["variant"] if v)) if len(df) else []
    if variants:
        words = "; ".join(f"{v}: {variant_words(v)}" for v in variants)
        cap += f" Variant rows, listed unranked after the main rows ({words})."
    if balanced:
        cap += (" Balanced accuracy is not shown: the classes are balanced, so it repeats "
                "accuracy.")
    if len(df) and (df["family"] == "cnn").any():
        cap += (" Feature dim: length of the vector the classifier sees; trainable params: weights "
                "an end-to-end CNN trains (its fit time is the training).")
    if len(df) and (df["family"] == "hybrid").any() and "extract_parts" in df and \
            df["extract_parts"].notna().any():
        cap += " Extract ms/img of a hybrid row is the sum of its parts' times."
    return cap


# --------------------------------------------------------------------------- families
def family_table(summary: pd.DataFrame, dataset: str | None = None, rd: RunData | None = None,
                 n_images: int | None = None) -> Table:
    """Best row of each family, its macro-F1 difference to the best hand-crafted row and,
    given the run (``rd``), the paired p-value against the best of all family bests.

    Only pretrained rows represent a family; a family with only random-init rows is
    listed as "not pretrained" (its best random row shown, no Δ, no test).
    """
    best = best_by_family(summary, dataset=dataset)
    unpretrained = not_pretrained_families(summary, dataset=dataset)
    ref = best.get("handcrafted")
    top = max(best.values(), key=lambda r: r["macro_f1_mean"]) if best else None
    rows = []
    order = [f for f in FAMILY_ORDER if f in best or f in unpretrained] + \
        [f for f in list(best) + list(unpretrained) if f not in FAMILY_ORDER]
    for fam in dict.fromkeys(order):
        if fam in best:
            r = best[fam]
            delta = "" if ref is None or fam == "handcrafted" else \
                f"{100 * (r['macro_f1_mean'] - ref['macro_f1_mean']):+.1f}"
            row_cell = Cell(label_of(r), cls="name")
        else:
            r, delta = unpretrained[fam], ""
            row_cell = Cell(f"not pretrained: {label_of(r)}", cls="name warn",
                            title="every row of this family uses random weights; excluded from the verdict")
        cells = [Cell(FAMILY_TITLES.get(fam, fam), fam, f"fam-{css_token(fam)}"), row_cell,
                 Cell(fmt_pm(r["macro_f1_mean"], r["macro_f1_std"]), _sortval(r["macro_f1_mean"]),
                      sub=fmt_ci(r["macro_f1_ci_low"], r["macro_f1_ci_high"])),
                 Cell(fmt_pm(r["accuracy_mean"], r["accuracy_std"]), _sortval(r["accuracy_mean"]),
                      sub=fmt_ci(r["accuracy_ci_low"], r["accuracy_ci_high"])),
                 Cell(delta, _sortval(float(delta)) if delta else None)]
        if rd is not None:
            cells.append(_p_vs_best(rd, r, top, fam in best))
        cost = cost_seconds_row(r, n_images)
        cells.append(Cell(_num(cost, ".1f"), _sortval(cost)))
        rows.append(cells)
    cols = ["Family", "Best row", "Macro-F1 %", "Accuracy %", "Δ macro-F1 vs hand-crafted (points)"] + \
        (["p vs best row"] if rd is not None else []) + ["Cost s"]
    cap = ("Best row of each feature family by mean macro-F1 among pretrained rows (mean ± std, "
           "95% interval below); Δ is in percentage points; ")
    if rd is not None:
        cap += ("p vs best row: paired test against the best of these rows (corrected resampled t-test "
                "over folds; McNemar when there is no t-test); ")
    cap += ("cost = feature extraction for all images + one fit, in seconds. A family with only "
            "random-init rows is \"not pretrained\" and takes no part in the verdict.")
    return Table("families" + (f"-{css_token(dataset)}" if dataset else ""), cols, rows,
                 set(range(2, len(cols))), cap)


def _p_vs_best(rd: RunData, r, top, pretrained: bool) -> Cell:
    if top is None or not pretrained:
        return Cell("-", None, "muted")
    if key_of(r) == key_of(top):
        return Cell("best", 0.0, "muted")
    c = compare_rows(rd, top, r)
    if deciding_test(c) == "ttest":
        return Cell(fmt_p(c.ttest.p), _sortval(c.ttest.p), "sig" if c.ttest.p < ALPHA else "", sub="t-test")
    if c.mcnemar is not None:
        return Cell(fmt_p(c.mcnemar.p), _sortval(c.mcnemar.p), "sig" if c.mcnemar.p < ALPHA else "",
                    sub="McNemar")
    return Cell("-", None, "muted", c.note)


def _spec_key(name, params) -> str:
    import json
    return json.dumps({"name": name, "params": params or {}}, sort_keys=True, default=str)


def part_costs(features: dict) -> dict[str, tuple[float, str]]:
    """Hybrid feature -> (extraction ms/image including every part, "lbp 1.3 + lite0-gap 11.1").

    A hybrid (concatenation) runs its parts itself, but its own timing may miss a part
    whose model was already warm; the run's standalone features with the same name and
    parameters give each part's time, and the hybrid is shown with their sum (never less
    than its own measured time). Hybrids whose parts have no standalone twin are left out.
    """
    twins = {}
    for label, f in features.items():
        if f.get("family") != "hybrid" and f.get("extract_ms_per_image") is not None:
            twins.setdefault(_spec_key(f.get("name"), f.get("params")), (label, f["extract_ms_per_image"]))
    out = {}
    for label, f in features.items():
        parts = (f.get("params") or {}).get("parts") if f.get("family") == "hybrid" else None
        if not isinstance(parts, list) or not parts:
            continue
        found = []
        for p in parts:
            spec = {"name": p, "params": {}} if isinstance(p, str) else p if isinstance(p, dict) else {}
            twin = twins.get(_spec_key(spec.get("name"), spec.get("params")))
            if twin is None:
                break
            found.append(twin)
        if len(found) == len(parts):
            total = max(sum(ms for _, ms in found), f.get("extract_ms_per_image") or 0.0)
            out[label] = (total, " + ".join(f"{lab} {ms:.1f}" for lab, ms in found))
    return out


def with_part_costs(summary: pd.DataFrame, features: dict) -> pd.DataFrame:
    """The summary with each hybrid row's extraction time including its parts
    (:func:`part_costs`) and the sum spelled out in ``extract_parts``."""
    costs = part_costs(features or {})
    out = summary.copy()
    out["extract_parts"] = None
    for i, r in out.iterrows():
        if r["feature"] in costs:
            ms, text = costs[r["feature"]]
            out.at[i, "extract_ms_per_image"] = ms
            out.at[i, "extract_parts"] = text
    return out


def cost_seconds_row(r, n_images) -> float:
    """Extraction of all images plus one fit, in seconds (the x axis of the cost plot)."""
    n = n_images if n_images else (r.get("n_train", 0) or 0) + (r.get("n_test", 0) or 0)
    ext = r.get("extract_ms_per_image")
    ext = 0.0 if ext is None or not np.isfinite(ext) else ext * n / 1000.0
    fit = r.get("fit_s")
    fit = 0.0 if fit is None or not np.isfinite(fit) else fit
    return ext + fit


def pareto_mask(cost: Iterable[float], score: Iterable[float]) -> np.ndarray:
    """True where no other point is at least as cheap and as good, and strictly better in one."""
    c = np.asarray(list(cost), dtype=float)
    s = np.asarray(list(score), dtype=float)
    mask = np.zeros(len(c), dtype=bool)
    for i in range(len(c)):
        if not (np.isfinite(c[i]) and np.isfinite(s[i])):
            continue
        dominated = (c <= c[i]) & (s >= s[i]) & ((c < c[i]) | (s > s[i]))
        mask[i] = not dominated.any()
    return mask


# --------------------------------------------------------------------------- per-class
def confusion(rd: RunData, key) -> np.ndarray | None:
    pooled = rd.pooled(key)
    if pooled is None:
        return None
    n = len(rd.class_names)
    return confusion_matrix(pooled[0], pooled[1], labels=np.arange(n))


def top_confusions(cm: np.ndarray, class_names: list[str], k: int = 15, name: str = "confusions") -> Table:
    off = cm.copy().astype(float)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = []
    support = cm.sum(axis=1)
    for flat in order:
        t, p = np.unravel_index(flat, cm.shape)
        if off[t, p] <= 0:
            break
        share = cm[t, p] / support[t] if support[t] else 0
        rows.append([Cell(class_names[t]), Cell(class_names[p]), Cell(str(int(cm[t, p])), int(cm[t, p])),
                     Cell(f"{100 * share:.1f}", share)])
    return Table(name, ["True class", "Predicted as", "Images", "% of true class"], rows, {2, 3},
                 f"The {k} most frequent confusions (out-of-fold predictions)")


def per_class_f1(rd: RunData, rows: list) -> pd.DataFrame:
    """Out-of-fold F1 per class (index) for each given summary row (columns = row labels)."""
    names = rd.class_names
    out = {}
    for r in rows:
        pooled = rd.pooled(key_of(r))
        if pooled is None:
            continue
        out[label_of(r)] = f1_score(pooled[0], pooled[1], labels=np.arange(len(names)), average=None,
                                    zero_division=0)
    return pd.DataFrame(out, index=names)


# --------------------------------------------------------------------------- statistics
@dataclass
class Comparison:
    a: pd.Series
    b: pd.Series
    ttest: stats.TTestResult | None
    mcnemar: stats.McNemarResult | None
    n_common_splits: int
    diff: float  # mean macro-F1 difference a - b on common splits (fraction)
    note: str = ""
    boot: stats.BootstrapDiff | None = None  # predefined protocol: a - b on the test images

    @property
    def significant(self) -> bool:
        if self.ttest is not None and np.isfinite(self.ttest.p):
            return self.ttest.p < ALPHA
        return self.mcnemar is not None and self.mcnemar.p < ALPHA


def compare_rows(rd: RunData, a: pd.Series, b: pd.Series, metric: str = "macro_f1") -> Comparison:
    """Corrected t-test on the splits both rows finished, McNemar on pooled first-repeat predictions.

    With the ``predefined`` protocol every split has the same test images (repeats only
    change the seed), so there is no t-test: McNemar and a paired bootstrap interval of
    the macro-F1 difference, both on the first seed's test-set predictions.
    The better row (by mean over the common splits) is returned as ``a``.
    """
    predefined = is_predefined(rd)
    ra = {int(r["split"]): r for r in rd.row_records(key_of(a)) if r.get("status") == "ok"}
    rb = {int(r["split"]): r for r in rd.row_records(key_of(b)) if r.get("status") == "ok"}
    common = sorted(set(ra) & set(rb))
    sa = np.array([ra[s][metric] for s in common], dtype=float)
    sb = np.array([rb[s][metric] for s in common], dtype=float)
    diff = float(np.nanmean(sa - sb)) if common else float("nan")
    if common and diff < 0:
        a, b, ra, rb, sa, sb, diff = b, a, rb, ra, sb, sa, -diff
    tt = None
    note = []
    if predefined:
        note.append("official test split: paired tests on the test-set predictions")
    elif len(common) >= 2:
        n_train = [ra[s].get("n_train") or np.nan for s in common]
        n_test = [ra[s].get("n_test") or np.nan for s in common]
        if np.all(np.isfinite(n_train)) and np.all(np.isfinite(n_test)):
            tt = stats.corrected_ttest(sa, sb, n_train, n_test)
        else:
            note.append("train/test sizes not recorded: no corrected t-test")
    elif common:
        note.append("a single common split allows no t-test")
    else:
        note.append("no split finished by both rows")
    mc = None
    main = rd.main_splits()
    pa = {s: p for s, p in rd.row_predictions(key_of(a)).items() if main is None or s in main}
    pb = {s: p for s, p in rd.row_predictions(key_of(b)).items() if main is None or s in main}
    y, ya, yb = stats.match_predictions(pa, pb)
    boot = None
    if y.size:
        mc = stats.mcnemar(ya == y, yb == y)
        if predefined:
            boot = stats.paired_bootstrap_diff(y, ya, yb, metric if metric == "accuracy" else "macro_f1")
    else:
        note.append("no paired predictions: no McNemar test")
    return Comparison(a, b, tt, mc, len(common), diff, "; ".join(note), boot)


def family_comparisons(rd: RunData, dataset: str | None = None) -> list[Comparison]:
    """Best hand-crafted vs best deep first, then every other pair of family bests."""
    best = best_by_family(rd.summary, dataset=dataset)
    fams = [f for f in FAMILY_ORDER if f in best] + [f for f in best if f not in FAMILY_ORDER]
    pairs = []
    if "handcrafted" in best and "deep" in best:
        pairs.append(("handcrafted", "deep"))
    for i, f in enumerate(fams):
        for g in fams[i + 1:]:
            if (f, g) not in pairs:
                pairs.append((f, g))
    return [compare_rows(rd, best[f], best[g]) for f, g in pairs]


def _no_comparison(families_present, not_pretrained) -> str:
    fams = ", ".join(FAMILY_TITLES.get(f, f) for f in (families_present or [])) or "no"
    if not_pretrained:
        unp = ", ".join(FAMILY_TITLES.get(f, f) for f in not_pretrained)
        return (f"No verdict against {unp} features: every such row uses random weights (not "
                f"pretrained), so {fams} rows are compared with nothing. Supply ImageNet weights "
                "(see the note above) for a real comparison.")
    return f"Only {fams} rows finished, so there is no cross-family comparison to make."


def deciding_test(c: Comparison) -> str:
    """``ttest`` when the corrected t-test decides the verdict, ``mcnemar`` otherwise."""
    return "ttest" if c.ttest is not None and np.isfinite(c.ttest.p) else "mcnemar"


def _mcnemar_clause(c: Comparison) -> str:
    """How McNemar on pooled predictions relates to a verdict the t-test decided."""
    m = c.mcnemar
    if m is None or not np.isfinite(m.p):
        return ""
    if (m.p < ALPHA) == c.significant:
        return f"; McNemar on pooled predictions agrees, {_p_only(m.p)}"
    why = ("it pools every test image into one count and ignores how much the score varies from fold "
           "to fold, which the t-test accounts for") if m.p < ALPHA else \
        ("it counts only the images on which exactly one row is right, while the t-test sees the gain "
         "repeat fold after fold")
    return f"; McNemar on pooled predictions disagrees ({_p_only(m.p)}): {why}"


def verdict(c: Comparison | None, families_present: list[str] | None = None,
            not_pretrained: list[str] | None = None) -> str:
    """One sentence a reader can quote; careful to say 'no significant difference' when so.

    The sentence names the test it follows: the corrected resampled t-test over folds
    whenever there is one, else McNemar (official test split, or a single split). When
    McNemar disagrees with the t-test, the same sentence says so and why.
    ``not_pretrained``: families whose rows all use random weights (never compared).
    """
    if c is None:
        return _no_comparison(families_present, not_pretrained)
    a, b = label_of(c.a), label_of(c.b)
    pts = 100 * c.diff
    if not np.isfinite(pts):
        return f"{a} and {b} share no finished split, so they cannot be compared."
    if deciding_test(c) == "ttest":
        test = (f"corrected resampled t-test over {c.n_common_splits} folds, "
                f"{_p_only(c.ttest.p)}")
        extra = _mcnemar_clause(c)
    elif c.mcnemar is not None:
        where = "the test-set predictions" if c.boot is not None else "pooled predictions"
        test = f"McNemar on {where}, {_p_only(c.mcnemar.p)}"
        extra = f"; no t-test: {c.note}" if c.note and c.boot is None else ""
        if c.boot is not None and np.isfinite(c.boot.ci_low):
            extra += ("; test-set bootstrap 95% interval of the difference "
                      f"{fmt_ci(c.boot.ci_low, c.boot.ci_high)} points")
    else:
        return (f"{a} is ahead of {b} by {pts:.1f} macro-F1 points, with no test possible: "
                f"{c.note}.")
    if c.significant:
        return f"{a} beats {b} by {pts:.1f} macro-F1 points ({test}{extra})."
    return (f"No significant difference between {a} and {b} ({test}): {a} is ahead by {pts:.1f} "
            f"macro-F1 points{extra}.")


def _ttest_cell(t) -> Cell:
    if t is None:
        return Cell("-", None)
    return Cell(fmt_p(t.p), _sortval(t.p), "sig" if np.isfinite(t.p) and t.p < ALPHA else "",
                sub=f"t = {_num(t.t, '.2f')}, {t.n_splits} folds")


def _boot_cell(bt) -> Cell:
    ok = bt is not None and np.isfinite(bt.ci_low)
    return Cell(fmt_ci(bt.ci_low, bt.ci_high) if ok else "-", _sortval(bt.ci_low) if ok else None,
                "sig" if ok and (bt.ci_low > 0 or bt.ci_high < 0) else "",
                sub=f"{bt.n} test images, {bt.n_resamples} resamples" if ok else "")


def comparisons_table(comps: list[Comparison], name: str = "statistics") -> Table:
    """One line per pair of family bests; the "Verdict" column names the deciding test."""
    rows = []
    with_boot = any(c.boot is not None for c in comps)
    for c in comps:
        m = c.mcnemar
        decided = "t-test" if deciding_test(c) == "ttest" else "McNemar"
        rows.append([Cell(label_of(c.a), cls="name warn" if is_random_init(c.a["weights"]) else "name"),
                     Cell(label_of(c.b), cls="name warn" if is_random_init(c.b["weights"]) else "name"),
                     Cell(f"{100 * c.diff:+.1f}" if np.isfinite(c.diff) else "-", _sortval(c.diff),
                          sub=f"{c.n_common_splits} splits"),
                     _ttest_cell(c.ttest),
                     Cell("-" if m is None else fmt_p(m.p), None if m is None else m.p,
                          "sig" if m is not None and m.p < ALPHA else "",
                          sub="" if m is None else f"{m.b} vs {m.c} discordant, {m.method}"),
                     *([_boot_cell(c.boot)] if with_boot else []),
                     Cell("significant" if c.significant else "not significant",
                          cls="sig" if c.significant else "muted", sub=f"by {decided}"),
                     Cell(c.note, cls="muted note")])
    cols = ["Better row (A)", "Other row (B)", "Δ macro-F1 (points)", "Corrected t-test p", "McNemar p"]
    if with_boot:
        cols.append("Test-set bootstrap 95% CI of Δ (points)")
    cols += [f"At α = {ALPHA}", "Note"]
    if with_boot:
        return Table(name, cols, rows, set(range(2, 6)),
                     "Official test split: every row is scored on the same test images, so there is no "
                     "corrected t-test (repeats differ only by seed). McNemar's test on the test-set "
                     "predictions of the first seed, matched image by image (discordant: A right and B "
                     "wrong vs A wrong and B right), decides the verdict; the interval is a paired "
                     "percentile bootstrap of the macro-F1 difference A − B over test images. p-values "
                     "are not adjusted for multiple comparisons.")
    return Table(name, cols, rows, {2, 3, 4},
                 "The Nadeau–Bengio corrected resampled t-test on per-fold macro-F1 (same folds) decides "
                 "the verdict; McNemar on pooled out-of-fold predictions of the first repeat, matched "
                 "image by image (discordant: A right and B wrong vs A wrong and B right), decides only "
                 "when there is a single split. The two can disagree: the t-test weighs fold-to-fold "
                 "variance, McNemar pooled counts. p-values are not adjusted for multiple comparisons.")


# --------------------------------------------------------------------------- failures, counts
def failed_cells(rd: RunData) -> Table:
    rows = []
    for r in sorted((r for r in rd.records if r.get("status") != "ok"),
                    key=lambda r: (str(r.get("feature")), str(r.get("classifier")), r.get("split") or 0)):
        rows.append([Cell(feature_display(r.get("feature"), r.get("weights"))),
                     Cell(str(r.get("classifier"))),
                     Cell(str(r.get("split")), r.get("split")), Cell(str(r.get("variant") or "")),
                     Cell(str(r.get("error") or "unknown error"), cls="error")])
    return Table("failed", ["Feature", "Classifier", "Split", "Variant", "Error"], rows, {2},
                 "Cells that failed; they are excluded from means and counted in the 'Folds ok' column.")


def frame_table(df: pd.DataFrame, name: str, caption: str = "", floats: str = ".3f") -> Table:
    cols = [str(c) for c in df.columns]
    numeric = {i for i, c in enumerate(df.columns) if pd.api.types.is_numeric_dtype(df[c])}
    rows = []
    for _, r in df.iterrows():
        rows.append([Cell(_num(v, floats) if isinstance(v, float) else str(v),
                          _sortval(v) if i in numeric else str(v).lower())
                     for i, v in enumerate(r.tolist())])
    return Table(name, cols, rows, numeric, caption)


def rank_table(fr: stats.FriedmanResult, name: str = "ranks") -> Table:
    order = np.argsort(fr.avg_ranks, kind="stable")
    rows = [[Cell(str(i + 1), i + 1), Cell(fr.methods[j]), Cell(f"{fr.avg_ranks[j]:.2f}", fr.avg_ranks[j])]
            for i, j in enumerate(order)]
    cap = (f"Average rank over {fr.n_datasets} datasets (1 = best). "
           f"Friedman χ² = {_num(fr.statistic, '.2f')}, p = {fmt_p(fr.p)}; "
           f"Nemenyi critical difference at α = {fr.alpha}: {_num(fr.cd, '.2f')}.")
    return Table(name, ["Rank", "Row", "Average rank"], rows, {0, 2}, cap)


__all__ = ["Cell", "Table", "leaderboard", "family_table", "header_facts", "weights_table", "weights_banner",
           "confusion",
           "top_confusions", "per_class_f1", "compare_rows", "family_comparisons", "verdict",
           "comparisons_table", "failed_cells", "frame_table", "rank_table", "pareto_mask",
           "cost_seconds_row", "METRIC_NAMES", "MAX_CONFUSION_CLASSES"]

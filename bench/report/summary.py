"""What the one-page hand-in (``summary.pdf``) says, computed from a run: format-neutral.

* :func:`methods_line`: which data, features, classifiers, end-to-end models and protocol;
* :func:`caveats`: three generated caveats (grouping, CNN weights, sample size);
* :func:`panel_rows`: the rows whose confusion matrices sit side by side (the best row
  of each of the two families the verdict compares, else the two best rows);
* :func:`contribution`: the author line and the "Contribution" text from the run's
  config (``report.author`` / ``report.contribution``), empty when not given.

:mod:`.pdf` lays them out on one A4 page; the HTML summary card shows the methods line
and the caveats too, so both formats say the same.
"""
from __future__ import annotations

import pandas as pd

from ..aggregate import is_random_init
from .labels import FAMILY_TITLES, feature_name, name_of
from .rundata import RunData
from . import tables as T


def _list(values, n: int = 8) -> str:
    values = [str(v) for v in dict.fromkeys(values) if v is not None and str(v)]
    if len(values) > n:
        return ", ".join(values[:n]) + f" and {len(values) - n} more"
    return ", ".join(values) or "none"


def _names(rows: pd.DataFrame) -> list[str]:
    """Display names of the features of ``rows`` (weights tag included)."""
    return [feature_name(f, w) for f, w in zip(rows["feature"], rows["weights"])]


def _protocol_words(rd: RunData) -> str:
    sp = rd.splits or {}
    if T.is_predefined(rd):
        return T.predefined_text(sp)
    if not sp:
        return "splits unknown (splits.json missing)"
    n_rep = sp.get("n_repeats", 1) or 1
    words = f"{sp.get('n_splits', '?')}-fold cross-validation ({sp.get('splitter', '?')})"
    if n_rep > 1:
        words += f" × {n_rep} repeats"
    return words + (", grouped by source image" if sp.get("grouped") else "")


def methods_line(rd: RunData, summary: pd.DataFrame) -> str:
    """``Data: … Features: … Classifiers: … End-to-end: … Protocol: …`` in one paragraph."""
    ds = rd.dataset
    n = ds.get("n_images") or (len(ds["labels"]) if ds.get("labels") else None)
    data = f"{ds.get('name') or ', '.join(rd.datasets) or 'unknown'}"
    what = [str(x) for x in (ds.get("kind"), ds.get("modality")) if x and str(x) != ds.get("name")]
    if what:
        data += f" ({', '.join(what)})"
    data += f", {n if n is not None else '?'} images, {len(rd.class_names)} classes"
    main = summary[summary["variant"] == ""] if len(summary) else summary
    classic = main[main["family"] != "cnn"] if len(main) else main
    e2e = main[main["family"] == "cnn"] if len(main) else main
    parts = [f"Data: {data}."]
    if len(classic):
        parts.append(f"Features: {_list(_names(classic))}.")
        parts.append(f"Classifiers: {_list(classic['classifier'])}.")
    if len(e2e):
        parts.append(f"End-to-end CNNs: {_list(_names(e2e))}.")
    seed = rd.env.get("seed", rd.config.get("seed", "?"))
    parts.append(f"Protocol: {_protocol_words(rd)}, seed {seed}; macro-F1 mean ± std over folds with a "
                 "Student-t 95% interval; rows compared by the corrected resampled t-test on the same "
                 "folds.")
    return " ".join(parts)


def _weights_caveat(rd: RunData, summary: pd.DataFrame) -> str:
    learned = summary[summary["family"].isin(["deep", "hybrid", "cnn"])] if len(summary) else summary
    if not len(learned):
        return "CNN weights: none (hand-crafted features only)"
    backbones = []
    for f in rd.features.values():
        desc = f.get("describe") or {}
        for d in [desc] + list(desc.get("parts") or []):
            if isinstance(d, dict) and d.get("backbone"):
                backbones.append(str(d["backbone"]))
    kinds = []
    rnd = sorted(set(_names(learned[learned["weights"].map(is_random_init)])))
    if any(isinstance(w, str) and w.lower().startswith("imagenet") for w in learned["weights"]):
        kinds.append("ImageNet" + (f" ({_list(backbones, 3)})" if backbones else ""))
    if rnd:
        kinds.append(f"random-init for {_list(rnd, 3)} (not pretrained)")
    scratch = learned[(learned["family"] == "cnn") & (learned["weights"].isin(["n/a", None]))]
    if len(scratch):
        kinds.append(f"trained from scratch: {_list(scratch['feature'], 3)}")
    return "CNN weights: " + ("; ".join(kinds) or _list(learned["weights"], 3))


def caveats(rd: RunData, summary: pd.DataFrame) -> list[str]:
    """Three caveats a reader should weigh: grouping, CNN weights, sample size."""
    sp = rd.splits or {}
    if T.is_predefined(rd):
        grouped = "official split: one test set, so no spread over test sets"
    elif sp.get("grouped"):
        grouped = "grouped: yes (no source image in both train and test)"
    else:
        grouped = "grouped: no (images treated as independent; near-duplicates would inflate scores)"
    ds = rd.dataset
    n = ds.get("n_images") or (len(ds["labels"]) if ds.get("labels") else None)
    size = f"n = {n if n is not None else '?'} images"
    main = summary[(summary["variant"] == "") & summary["macro_f1_mean"].notna()] if len(summary) else summary
    if len(main):
        r = main.iloc[0]
        if pd.notna(r["macro_f1_ci_low"]) and pd.notna(r["macro_f1_ci_high"]):
            half = 50 * (r["macro_f1_ci_high"] - r["macro_f1_ci_low"])
            size += f": the best row's 95% interval spans ± {half:.1f} points"
    return [grouped, _weights_caveat(rd, summary), size]


def panel_rows(comps: list, summary: pd.DataFrame) -> list:
    """Two summary rows for the side-by-side confusion matrices."""
    if comps:
        c = comps[0]
        return sorted([c.a, c.b], key=lambda r: (r["family"] != "handcrafted", -r["macro_f1_mean"]))
    main = summary[(summary["variant"] == "") & summary["macro_f1_mean"].notna()] if len(summary) else summary
    return [r for _, r in main.head(2).iterrows()]


def panel_title(r) -> str:
    return f"{FAMILY_TITLES.get(r['family'], r['family'])}: {name_of(r)}"


def contribution(rd: RunData) -> tuple[str, str]:
    """(author, contribution) from the run's config, ``""`` where not given."""
    rep = (rd.config or {}).get("report") or {}
    return str(rep.get("author") or ""), str(rep.get("contribution") or "")


__all__ = ["methods_line", "caveats", "panel_rows", "panel_title", "contribution"]

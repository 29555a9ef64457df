"""The report section "What the features see", built from ``analysis/explain/`` alone.

Reads ``explain.json`` and the PNG panels written by :mod:`bench.explain.stage`
(never the feature cache, never a model) and returns the section's blocks as
``(kind, value, caption)`` (figures as ``{"name", "png", "caption", "alt"}`` dicts;
:mod:`.document` turns them into its blocks, so this module does not import it):

* one card per explained image (block kind ``explain``: a figure shown at its own
  pixel size in HTML, on one PDF page), its caption naming every method drawn;
* one bar chart per hand-crafted feature with named dimensions: permutation importance
  (mean over folds, bars = std over folds), the dimensions named in words;
* the first-convolution filters of each network;
* what was skipped and why, and the stage's time against its bound.
"""
from __future__ import annotations

import hashlib

import json
import logging
import math
from pathlib import Path

import matplotlib as mpl
import numpy as np

from . import plots
from .rundata import RunData

log = logging.getLogger(__name__)

TOP_IMPORTANCES = 15
TITLE = "What the features see"


def load(analysis_dir: Path) -> dict | None:
    """``explain.json`` of a run (None when absent or unreadable)."""
    path = Path(analysis_dir) / "explain" / "explain.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _png(base: Path, rel: str | None) -> bytes | None:
    if not rel:
        return None
    try:
        data = (base / rel).read_bytes()
    except OSError:
        return None
    return data if data[:8] == b"\x89PNG\r\n\x1a\n" else None


def importance_figure(imp: dict, top: int = TOP_IMPORTANCES):
    """Horizontal bars: the ``top`` largest mean importances with their std over folds."""
    mean = np.asarray(imp["mean"], dtype=float)
    std = np.asarray(imp["std"], dtype=float)
    words = [str(w) for w in imp.get("words") or imp["names"]]
    names = [str(n) for n in imp["names"]]
    order = np.argsort(-mean, kind="stable")[:top]
    labels = [w if w == n else f"{w} ({n})" for w, n in zip(words, names)]
    with mpl.rc_context(plots.RC):
        fig = plots._fig(7.2, 0.8 + 0.24 * len(order))
        ax = fig.add_subplot()
        ypos = np.arange(len(order))[::-1]
        color = plots.family_color("handcrafted")
        ax.barh(ypos, mean[order], xerr=std[order], color=color, alpha=0.85, ecolor="#333333",
                capsize=2, height=0.7)
        ax.set_yticks(ypos, [plots._short(labels[i], 58) for i in order])
        ax.axvline(0, color="#555555", lw=0.8)
        ax.set_xlabel(f"drop in {imp.get('metric', 'macro_f1').replace('_', '-')} when shuffled")
        ax.set_title(plots._short(f"{imp['feature']} + {imp['classifier']}", 70), loc="left")
    return fig


def _card_caption(im: dict) -> str:
    preds = []
    for p in im.get("predictions", []):
        if p.get("pred") is None:
            continue
        mark = "right" if p.get("correct") else "WRONG"
        conf = f", {100 * p['confidence']:.0f}%" if p.get("confidence") is not None else ""
        preds.append(f"{p['family']} ({p['feature']} + {p['classifier']}): {p['pred_name']} ({mark}{conf})")
    return (f"{im['id']} (true: {im['true_name']}; {im['reason']}; test image of split {im['split']}). "
            f"Best rows: {'; '.join(preds) or 'no predictions'}.")


KIND_TITLES = {"hog": "HOG glyph", "lbp": "LBP codes", "sift": "SIFT words", "shape": "parcel_shape geometry",
               "activation": "mean activation", "cam": "exact CAM", "occlusion": "occlusion",
               "gradcam": "Grad-CAM"}


def _methods(images: list[dict]) -> str:
    """One sentence per kind of map: the method that made it (as recorded with the panels)."""
    seen: dict = {}
    for im in images:
        for pnl in im.get("panels", []):
            if pnl.get("method") and pnl["kind"] not in seen:
                seen[pnl["kind"]] = pnl["method"]
    return "Maps. " + " ".join(f"{KIND_TITLES.get(k, k)}: {m}." for k, m in seen.items())


class _Blocks(list):
    def add(self, kind: str, value, caption: str = "") -> None:
        self.append((kind, value, caption))


def _fig(name: str, png: bytes, caption: str, alt: str) -> dict:
    return {"name": name, "png": png, "caption": caption, "alt": alt}


def explain_blocks(rd: RunData) -> list[tuple]:
    """The section's blocks (a note saying why when the run has no explain artefacts)."""
    s = _Blocks()
    a_dir = Path(rd.analysis.get("dir") or rd.run_dir / "analysis")
    data = rd.analysis.get("explain")
    if not data or not data.get("images"):
        info = ((rd.analysis.get("manifest") or {}).get("parts") or {}).get("explain")
        if info:
            reason = info.get("reason") or info.get("error") or info.get("status")
            s.add("note", f"Not computed for this run: {info.get('status', 'skipped')} ({reason}).")
        elif not (rd.run_dir / "analysis").exists():
            s.add("note", "Not computed: the run has no analysis/ folder.")
        else:
            s.add("note", "Not computed for this run (report.explain: false, or an older run).")
        return s
    base = a_dir / "explain"
    split = data["images"][0].get("split")
    s.add("text", "Each card shows one test image and what each representation computes on it, drawn "
                  "with the row's own parameters and the models of that image's split (codebook and "
                  "classifiers fitted on its training fold). Every map names the method that made it: "
                  "exact CAM (GAP + linear classifier, the class score spread over the image), Grad-CAM "
                  "(end-to-end CNNs) or occlusion sensitivity (other classifiers). Red: raises the "
                  "predicted class; blue: lowers it.")
    s.add("note", _methods(data["images"]))
    missing = 0
    for im in data["images"]:
        png = _png(base, im.get("card"))
        if png is None:
            missing += 1
            continue
        s.add("explain", _fig(f"explain-{im['index']:06d}", png, _card_caption(im),
                              f"explanation panels of test image {im['id']}"))
    if missing:
        s.add("note", f"{missing} explanation cards are missing from {base} (deleted or unreadable).")
    for imp in data.get("importances") or []:
        k = len(imp.get("splits", []))
        n = len(imp["names"])
        cap = (f"Permutation importance of the named dimensions of {imp['feature']} (the row with "
               f"{imp['classifier']}): drop in test-fold macro-F1 when one dimension is shuffled "
               f"({imp.get('n_repeats')} shuffles), mean over {k} folds, bars = std over folds; "
               f"top {min(TOP_IMPORTANCES, n)} of {n}. Correlated dimensions share their importance.")
        s.add("figure", _fig(f"explain-importance-{_token(imp['feature'])}",
                             plots.to_png(importance_figure(imp)), cap, cap))
    for f in data.get("filters") or []:
        png = _png(base, f.get("png"))
        if png is not None:
            s.add("explain", _fig(f"explain-filters-{_token(f['source'])}", png,
                                  f"{f['title']}. Each filter scaled to its largest weight (grey = 0).",
                                  f"first-layer filters of {f['source']}"))
    _notes(s, data, split)
    return s


def _token(text: str) -> str:
    """A file-name token of ``text``; a long one is cut and keeps a hash of the whole, so two
    sources that share their first 60 characters still get two figure files."""
    token = "".join(c if c.isalnum() else "-" for c in str(text)).strip("-") or "x"
    if len(token) <= 60:
        return token
    return f"{token[:51]}-{hashlib.blake2b(str(text).encode(), digest_size=4).hexdigest()}"


def _notes(s: _Blocks, data: dict, split) -> None:
    for n in data.get("notes") or []:
        s.add("note", n)
    for sk in data.get("skipped") or []:
        count = sk.get("count", 1)
        s.add("note", f"Skipped {sk['part']}" + (f" ({count} units)" if count > 1 else "") + f": {sk['reason']}.")
    checks = data.get("checks") or {}
    err = checks.get("cam_identity_max_abs_error")
    if err is not None and math.isfinite(err):
        s.add("note", f"Exact CAM check: spatial mean of the CAM + folded bias equals the classifier's "
                      f"decision value within {err:.1e} on every image.")
    s.add("note", f"Computed in {data.get('seconds', 0):.0f} s (bound {data.get('budget_s', 0):.0f} s"
                  + ("; some units were skipped at the bound" if data.get("stopped_by_budget") else "")
                  + f"); images are test images of split {split}.")

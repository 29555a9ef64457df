"""Matplotlib figures of the report (Agg backend, one colour per feature family).

Every function returns a :class:`matplotlib.figure.Figure` built with the
object-oriented API (no pyplot state), so figures can be rendered in worker
threads and closed explicitly. Names and colours come from :mod:`.labels` (one
colour per family and per end-to-end model, the same in every figure); rows with
random-init weights are hatched and labelled ``[random-init]``. Row names are never
cut: long ones wrap onto a second line.
"""
from __future__ import annotations

import math
import textwrap

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..aggregate import is_random_init
from ..stats import cd_cliques
from .labels import (_PALETTE, FAMILY_COLORS,  # noqa: F401  (_PALETTE: used by .counting)
                      FAMILY_TITLES, OTHER_COLOR, Palette, feature_name, name_of,
                     present_families, row_name, variant_words)
from .tables import cost_seconds_row, pareto_mask

feature_display = feature_name
row_label = row_name
MISTAKE_COLOR = "#c0392b"
OK_COLOR = "#1e7b34"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]
MAX_BARS = 40
MAX_HEATMAP_CLASSES = 150

RC = {"font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.labelsize": 9,
      "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.color": "#dddddd", "grid.linewidth": 0.6,
      "axes.axisbelow": True, "figure.dpi": 100, "savefig.bbox": "tight", "pdf.fonttype": 42,
      "font.family": "DejaVu Sans"}


def family_color(family):
    return FAMILY_COLORS.get(family, OTHER_COLOR)


def _fig(w: float, h: float) -> Figure:
    """A pyplot-free figure on the Agg canvas (thread-safe, no global backend switch)."""
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _short(text: str, n: int = 28) -> str:
    """Shorten a label and escape ``$`` so user text never turns into mathtext (class names
    on crowded axes only; row names go through :func:`_wrap`)."""
    text = str(text)
    text = text if len(text) <= n else text[: n - 1] + "…"
    return text.replace("$", r"\$")


def _wrap(text: str, width: int = 40, max_lines: int = 4) -> str:
    """Wrap a label onto lines of ``width`` characters at spaces (never cut), ``$`` escaped."""
    lines = textwrap.wrap(str(text), width, break_long_words=False, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:  # keep every character: the rest joins the last line
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return "\n".join(lines).replace("$", r"\$")


def to_png(fig: Figure, dpi: int = 150, tight: bool = False) -> bytes:
    """PNG bytes of a figure (then closed: its memory is released); ``tight`` crops the
    white border."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white", **({"bbox_inches": "tight", "pad_inches": 0.04}
                                                                    if tight else {}))
    fig.clear()
    return buf.getvalue()


def _present_families(series) -> list[str]:
    return present_families(series)


def message_figure(text: str, w: float = 6, h: float = 1.2) -> Figure:
    with mpl.rc_context(RC):
        fig = _fig(w, h)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center", color="#555555", wrap=True)
    return fig


# --------------------------------------------------------------------------- scores
def bar_rows(summary: pd.DataFrame, metric: str = "macro_f1", max_rows: int = MAX_BARS) -> pd.DataFrame:
    """The rows :func:`bar_chart` draws (top ``max_rows`` scored rows, in table order)."""
    return summary[summary[f"{metric}_mean"].notna()].head(max_rows)


def bar_chart(summary: pd.DataFrame, metric: str = "macro_f1", metric_name: str = "Macro-F1",
              max_rows: int = MAX_BARS, title: str | None = None, width: float = 8.5,
              palette: Palette | None = None) -> Figure:
    """Horizontal bars of every scored row, mean with its 95% interval, coloured by family
    (end-to-end rows by model)."""
    pal = palette or Palette.of_summary(summary)
    n_all = int(summary[f"{metric}_mean"].notna().sum())
    df = bar_rows(summary, metric, max_rows).iloc[::-1]
    labels = [_wrap(name_of(r), 46) for r in df.itertuples()]
    n_lines = sum(t.count("\n") + 1 for t in labels)
    with mpl.rc_context(RC):
        fig = _fig(width, 0.2 * max(n_lines, 1) + 0.1 * len(df) + 1.5)
        ax = fig.add_subplot()
        if df.empty:
            ax.axis("off")
            ax.text(0.5, 0.5, "no finished rows", ha="center", va="center")
            return fig
        y = np.arange(len(df))
        mean = 100 * df[f"{metric}_mean"].to_numpy(float)
        lo = 100 * df[f"{metric}_ci_low"].to_numpy(float)
        hi = 100 * df[f"{metric}_ci_high"].to_numpy(float)
        err = np.vstack([np.where(np.isfinite(lo), mean - lo, 0), np.where(np.isfinite(hi), hi - mean, 0)])
        colors = [pal.row(f, feat) for f, feat in zip(df["family"], df["feature"])]
        hatches = ["///" if is_random_init(w) else ("..." if v else "")
                   for w, v in zip(df["weights"], df["variant"])]
        bars = ax.barh(y, mean, color=colors, edgecolor="white", height=0.72)
        for bar, h, v in zip(bars, hatches, df["variant"]):
            if h:
                bar.set_hatch(h)
                bar.set_edgecolor("#333333")
                bar.set_linewidth(0.4)
            if v:
                bar.set_alpha(0.55)
        ax.errorbar(mean, y, xerr=err, fmt="none", ecolor="#222222", elinewidth=0.9, capsize=2.5)
        for yi, m, h in zip(y, mean, np.where(np.isfinite(hi), hi, mean)):
            ax.text(min(h, 100) + 1, yi, f"{m:.1f}", va="center", fontsize=7, color="#333333")
        ax.set_yticks(y, labels, fontsize=7.5)
        ax.set_xlim(0, 108)
        ax.set_xlabel(f"{metric_name} (%), mean over folds with 95% interval")
        ax.grid(axis="y", visible=False)
        fig.legend(handles=_bar_legend(df, pal), loc="outside lower center", ncol=3, frameon=False,
                   fontsize=7.5)
        ttl = title or f"{metric_name} of every feature × classifier"
        if n_all > len(df):
            ttl += f" (top {len(df)} of {n_all})"
        ax.set_title(ttl, loc="left")
    return fig


def _bar_legend(df: pd.DataFrame, pal: Palette) -> list:
    """Families (and end-to-end models) drawn, then the hatches actually used."""
    handles = []
    for f in _present_families(df["family"]):
        if f == "cnn":
            models = list(dict.fromkeys(df.loc[df["family"] == "cnn", "feature"]))
            handles += [Patch(facecolor=pal.model(m), label=f"{FAMILY_TITLES['cnn']}: {_wrap(m, 30)}")
                        for m in models]
        else:
            handles.append(Patch(facecolor=pal.family(f), label=FAMILY_TITLES.get(f, f)))
    if any(is_random_init(w) for w in df["weights"]):
        handles.append(Patch(facecolor="white", edgecolor="#333333", hatch="///",
                             label="random-init weights"))
    for v in dict.fromkeys(v for v in df["variant"] if v):
        handles.append(Patch(facecolor="#bbbbbb", edgecolor="#333333", hatch="...", alpha=0.6,
                             label=_wrap(f"{v}: {variant_words(v)}", 48)))
    return handles


def cost_plot(summary: pd.DataFrame, n_images: int | None, metric: str = "macro_f1",
              metric_name: str = "Macro-F1", palette: Palette | None = None) -> Figure:
    """Score against cost (extraction of all images + one fit, log x) with the Pareto front."""
    pal = palette or Palette.of_summary(summary)
    df = summary[(summary["variant"] == "") & summary[f"{metric}_mean"].notna()].copy()
    with mpl.rc_context(RC):
        fig = _fig(8.5, 5.0)
        ax = fig.add_subplot()
        if df.empty:
            ax.axis("off")
            ax.text(0.5, 0.5, "no finished rows", ha="center", va="center")
            return fig
        df["cost"] = [max(cost_seconds_row(r, n_images), 1e-3) for _, r in df.iterrows()]
        df["score"] = 100 * df[f"{metric}_mean"]
        front = pareto_mask(df["cost"], df["score"])
        clfs = list(dict.fromkeys(df["classifier"]))
        marker = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(clfs)}
        for (_, r), on in zip(df.iterrows(), front):
            col = pal.row(r["family"], r["feature"])
            lo, hi = 100 * r[f"{metric}_ci_low"], 100 * r[f"{metric}_ci_high"]
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([r["cost"]] * 2, [lo, hi], color=col, alpha=0.35, lw=1.2)
            ax.scatter(r["cost"], r["score"], s=70 if on else 38, marker=marker[r["classifier"]],
                       color=col, edgecolor="black" if on else "white",
                       linewidth=1.1 if on else 0.5, hatch="////" if is_random_init(r["weights"]) else None,
                       zorder=3)
        f = df[front].sort_values("cost")
        if len(f):
            xs = np.r_[f["cost"].to_numpy(), f["cost"].max() * 1.6]
            ys = np.r_[f["score"].to_numpy(), f["score"].to_numpy()[-1]]
            ax.step(xs, ys, where="post", color="#333333", lw=1.0, ls="--", zorder=2, label="Pareto front")
            for i, (_, r) in enumerate(f.iterrows()):
                ax.annotate(_wrap(name_of(r), 34), (r["cost"], r["score"]), xytext=(6, -10 if i % 2 else 5),
                            textcoords="offset points", fontsize=7, color="#222222")
        ax.set_xscale("log")
        ax.set_xlabel("cost: feature extraction for all images + one fit (s, log scale)")
        ax.set_ylabel(f"{metric_name} (%)")
        ax.set_title(f"{metric_name} against cost; Pareto-optimal rows outlined", loc="left")
        from matplotlib.lines import Line2D
        fam_h = [Patch(facecolor=pal.family(fm), label=FAMILY_TITLES.get(fm, fm))
                 for fm in _present_families(df["family"])]
        clf_h = [Line2D([], [], marker=marker[c], ls="", color="#555555", label=_wrap(c, 24)) for c in clfs]
        front_h = [Line2D([], [], ls="--", color="#333333", label="Pareto front")]
        ax.legend(handles=fam_h + clf_h + front_h, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  frameon=False)
    return fig


# --------------------------------------------------------------------------- per class
def _confusion_axes(ax, cm: np.ndarray, class_names: list[str], title: str, ylabels: bool = True):
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ticks = [_short(c, 16) for c in class_names]
    fs = 8 if n <= 8 else 6
    tilt = n > 3 or max((len(t) for t in ticks), default=0) > 6
    ax.set_xticks(range(n), ticks, rotation=45 if tilt else 0, ha="right" if tilt else "center",
                  fontsize=fs)
    ax.set_yticks(range(n), ticks if ylabels else [""] * n, fontsize=fs)
    ax.grid(False)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7 if n <= 8 else 6,
                            color="white" if norm[i, j] > 0.55 else "#222222")
    ax.set_xlabel("predicted")
    if ylabels:
        ax.set_ylabel("true")
    width = max(18, int(ax.get_position().width * ax.figure.get_figwidth() * 72 / (8.5 * 0.62)))
    ax.set_title("\n".join(_wrap(part, width) for part in str(title).split("\n")), fontsize=8.5)
    return im


def confusion_figure(cm: np.ndarray, class_names: list[str], title: str) -> Figure:
    """Row-normalised confusion matrix of one row; counts written in the cells up to 12 classes."""
    return confusion_grid([(title, cm)], class_names)


def confusion_grid(panels: list[tuple[str, np.ndarray]], class_names: list[str],
                   colorbar: bool = True) -> Figure:
    """Confusion matrices side by side (up to 3 per line), one shared colour bar."""
    n = len(class_names)
    k = len(panels)
    ncol = min(3, k)
    nrow = math.ceil(k / ncol)
    side = min(4.2, 1.6 + 0.3 * n)
    with mpl.rc_context(RC):
        titled = any(t for t, _ in panels)
        fig = _fig(side * ncol + (1.6 if colorbar else 0.4), (side + (0.9 if titled else 0.5)) * nrow)
        axes = fig.subplots(nrow, ncol, squeeze=False)
        im = None
        for i, ax in enumerate(axes.ravel()):
            if i >= k:
                ax.axis("off")
                continue
            title, cm = panels[i]
            im = _confusion_axes(ax, cm, class_names, title, ylabels=(i % ncol == 0))
        if im is not None and colorbar:
            fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="share of true class")
    return fig


def per_class_heatmap(f1: pd.DataFrame) -> Figure:
    """Per-class F1 (rows = classes, columns = best rows); legible up to ~150 classes."""
    df = f1
    note = ""
    if len(df) > MAX_HEATMAP_CLASSES:
        df = df.loc[df.mean(axis=1).sort_values().index[:MAX_HEATMAP_CLASSES]]
        note = f" ({MAX_HEATMAP_CLASSES} hardest of {len(f1)} classes)"
    n, m = df.shape
    big = n > 40
    with mpl.rc_context(RC):
        fig = _fig(2.8 + 1.3 * m, 1.6 + (0.13 if big else 0.26) * n)
        ax = fig.add_subplot()
        annot = n <= 30 and m <= 8
        sns.heatmap(df, ax=ax, vmin=0, vmax=1, cmap="YlGnBu", annot=annot, fmt=".2f",
                    annot_kws={"fontsize": 7}, linewidths=0.3 if not big else 0, linecolor="white",
                    cbar_kws={"label": "F1", "shrink": 0.6 if not big else 0.3})
        ax.set_yticks(np.arange(n) + 0.5, [_short(c, 24) for c in df.index], rotation=0,
                      fontsize=8 if not big else 5)
        ax.set_xticks(np.arange(m) + 0.5, [_wrap(c, 22) for c in df.columns], rotation=0, fontsize=7)
        ax.set_xlabel("")
        ax.set_ylabel("class")
        ax.xaxis.tick_top()
        ax.set_title("Per-class F1 of the best row of each family" + note, loc="left", pad=12)
    return fig


# --------------------------------------------------------------------------- embeddings, curves
def _class_colors(n: int):
    if n <= 10:
        return sns.color_palette("tab10", n)
    if n <= 20:
        return sns.color_palette("tab20", n)
    return sns.color_palette("husl", n)


def tsne_figure(tsne: dict, class_names: list[str], info: list[dict] | None = None,
                palette: Palette | None = None) -> Figure:
    """One t-SNE panel per feature space, points coloured by class, frame by family."""
    pal = palette or Palette()
    feats = [str(f) for f in tsne["features"]]
    meta = {i.get("feature"): i for i in (info or [])}
    y = np.asarray(tsne["y"])
    emb = np.asarray(tsne["embedding"])
    k = len(feats)
    ncol = min(3, k)
    nrow = math.ceil(k / ncol)
    colors = _class_colors(len(class_names))
    with mpl.rc_context(RC):
        fig = _fig(3.2 * ncol + (1.8 if len(class_names) <= 20 else 0), 3.0 * nrow + 0.3)
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for a in axes.ravel()[k:]:
            a.axis("off")
        for i, feat in enumerate(feats):
            ax = axes.ravel()[i]
            m = meta.get(feat, {})
            for c in np.unique(y):
                sel = y == c
                ax.scatter(emb[i, sel, 0], emb[i, sel, 1], s=7, color=colors[int(c) % len(colors)],
                           label=_short(class_names[int(c)], 20) if int(c) < len(class_names) else str(c),
                           alpha=0.8, linewidths=0)
            title = feature_display(feat, m.get("weights"))
            if m.get("fold_stage_fit_on_plotted_images"):
                title += " *"
            ax.set_title(_wrap(title, 32), color=pal.family(m.get("family")), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for s in ax.spines.values():
                s.set_visible(True)
                s.set_color(pal.family(m.get("family")))
        if len(class_names) <= 20:
            h, lab = axes.ravel()[0].get_legend_handles_labels()
            fig.legend(h, lab, loc="outside right upper", frameon=False, markerscale=2, title="class")
        fig.suptitle("t-SNE of each feature space (panel frame = family colour)", x=0.01, ha="left",
                     fontweight="bold", fontsize=10)
    return fig


def learning_curve_figure(lc: pd.DataFrame, metric: str = "macro_f1",
                          metric_name: str = "Macro-F1", palette: Palette | None = None) -> Figure:
    """Score against training-set size for the best row of each family (mean ± std over splits)."""
    pal = palette or Palette()
    ok = lc[lc["status"] == "ok"] if "status" in lc else lc
    with mpl.rc_context(RC):
        fig = _fig(7.5, 4.2)
        ax = fig.add_subplot()
        for (fam, feat, clf, w), g in ok.groupby(["family", "feature", "classifier", "weights"], sort=False,
                                                 dropna=False):
            s = g.groupby("fraction").agg(n=("n_train", "mean"), m=(metric, "mean"), sd=(metric, "std"))
            x = 100 * s.index.to_numpy(float)
            col = pal.row(fam, feat)
            ax.plot(x, 100 * s["m"], marker="o", color=col,
                    label=_wrap(f"{FAMILY_TITLES.get(fam, fam)}: {row_name(feat, clf, w)}", 50))
            ax.fill_between(x, 100 * (s["m"] - s["sd"].fillna(0)), 100 * (s["m"] + s["sd"].fillna(0)),
                            color=col, alpha=0.15, linewidth=0)
        ax.set_xlabel("share of each training fold used (%)")
        ax.set_ylabel(f"{metric_name} on the test fold (%)")
        ax.set_xlim(0, 102)
        ax.set_title("Learning curves: best row of each family", loc="left")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
    return fig


def finetune_figure(curves: pd.DataFrame, names: dict | None = None,
                    palette: Palette | None = None) -> Figure:
    """Training and validation loss / accuracy per epoch of each end-to-end model.

    ``names``: model folder -> display name (with its weights tag); colours are the
    models' own (:class:`.labels.Palette`), as in every other figure."""
    models = list(dict.fromkeys(curves["model"]))
    pal = palette or Palette(models)
    names = names or {}
    colors = {m: pal.model(m) for m in models}
    panels = [c for c in ("loss", "accuracy") if c in curves]
    with mpl.rc_context(RC):
        fig = _fig(4.2 * max(1, len(panels)), 3.6)
        axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
        for ax, col in zip(axes, panels):
            for mdl in models:
                g = curves[curves["model"] == mdl]
                for split, gs in g.groupby("split"):
                    ax.plot(gs["epoch"], gs[col], color=colors[mdl], alpha=0.18, lw=0.8)
                    if f"val_{col}" in gs:
                        ax.plot(gs["epoch"], gs[f"val_{col}"], color=colors[mdl], alpha=0.18, lw=0.8, ls="--")
                mean = g.groupby("epoch")[[c for c in (col, f"val_{col}") if c in g]].mean()
                shown = _wrap(names.get(mdl, mdl), 34)
                ax.plot(mean.index, mean[col], color=colors[mdl], lw=2, label=f"{shown} train")
                if f"val_{col}" in mean:
                    ax.plot(mean.index, mean[f"val_{col}"], color=colors[mdl], lw=2, ls="--",
                            label=f"{shown} validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(col)
            ax.set_title(f"{col} per epoch (thin: each split)", loc="left")
            ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- critical difference
def cd_diagram(methods: list[str], avg_ranks: list[float], cd: float, title: str = "",
               families: list[str] | None = None, palette: Palette | None = None) -> Figure:
    """Demšar-style critical-difference diagram: rows joined by a bar do not differ significantly.

    ``families`` (one per method) colours the labels by feature family.
    """
    r = np.asarray(avg_ranks, dtype=float)
    order = np.argsort(r, kind="stable")
    names = [methods[i] for i in order]
    pal = palette or Palette()
    colors = ["#222222" if families is None else pal.family(families[i]) for i in order]
    rs = r[order]
    k = len(rs)
    lo, hi = 1, max(k, 2)
    half = math.ceil(k / 2)
    cliques = cd_cliques(rs, cd)
    with mpl.rc_context({**RC, "axes.grid": False}):
        fig = _fig(9, 1.6 + 0.32 * half + 0.18 * len(cliques))
        ax = fig.add_subplot()
        ax.set_xlim(-0.5, 1.5)
        top = 0.0
        height = 0.3 + 0.5 * half + 0.3 * len(cliques)
        ax.set_ylim(height, -1.0)
        ax.axis("off")

        def x(rank):  # rank -> axis position in [0, 1]
            return (rank - lo) / (hi - lo)

        ax.plot([0, 1], [top, top], color="black", lw=1)
        for t in range(lo, hi + 1):
            ax.plot([x(t)] * 2, [top, top - 0.12], color="black", lw=1)
            ax.text(x(t), top - 0.2, str(t), ha="center", va="bottom", fontsize=8)
        if np.isfinite(cd):
            ax.plot([0, x(lo + cd)], [-0.7, -0.7], color="#c0392b", lw=2)
            ax.text(x(lo + cd) + 0.01, -0.7, f"CD = {cd:.2f}", va="center", fontsize=8, color="#c0392b")
        for i, (name, rank, col) in enumerate(zip(names, rs, colors)):
            left = i < half
            yy = 0.5 + 0.5 * (i if left else k - 1 - i) + 0.3 * len(cliques)
            xe = -0.08 if left else 1.08
            ax.plot([x(rank), x(rank), xe], [top, yy, yy], color="#333333", lw=0.8)
            ax.text(xe + (-0.01 if left else 0.01), yy, f"{_wrap(name, 40, 2)} ({rank:.2f})",
                    ha="right" if left else "left", va="center", fontsize=8, color=col)
        for j, (a, b) in enumerate(cliques):
            yy = 0.25 + 0.3 * j
            ax.plot([x(rs[a]) - 0.01, x(rs[b]) + 0.01], [yy, yy], color="black", lw=3, solid_capstyle="round")
        ax.set_title(title or "Critical difference diagram (Nemenyi, α = 0.05): joined rows do not differ "
                     "significantly", loc="left", fontsize=9)
    return fig


# --------------------------------------------------------------------------- galleries (PDF)
def _read_png(path):
    import matplotlib.image as mpimg
    try:
        return mpimg.imread(str(path))
    except (OSError, ValueError, SyntaxError):
        return None


FAMILY_KEYS = {"handcrafted": "HC", "deep": "D", "hybrid": "HY", "cnn": "E2E"}


def family_key(rows: list[dict]) -> str:
    """The key of the family abbreviations a figure uses: ``HC = hand-crafted: lbp + svm; …``."""
    parts = []
    for r in rows:
        fam = r.get("family")
        what = f"{r.get('label', '')} + {r.get('classifier', '')}" if r.get("label") else ""
        key = f"{FAMILY_KEYS.get(fam, fam)} = {FAMILY_TITLES.get(fam, fam)}"
        parts.append(key + (f": {what}" if what else ""))
    return "; ".join(parts)


def gallery_figure(items: list[dict], thumbs_dir, ncol: int = 6, rows: list[dict] | None = None) -> Figure:
    """Thumbnails with the true label and each family's prediction (family abbreviations
    explained by a key above the thumbnails); mistakes in red."""
    n = len(items)
    nrow = max(1, math.ceil(n / ncol))
    n_pred = max((len(it.get("predictions", [])) for it in items), default=1)
    with mpl.rc_context({**RC, "axes.grid": False}):
        fams = list(dict.fromkeys(p["family"] for it in items for p in it.get("predictions", [])))
        key = family_key(rows or [{"family": f} for f in fams])
        fig = _fig(11, nrow * (1.7 + 0.22 * n_pred) + 0.3)
        fig.suptitle(_wrap("Key: " + key, 150), x=0.01, ha="left", fontsize=7, fontweight="normal")
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, it in zip(axes.ravel(), items):
            img = _read_png(thumbs_dir / it["thumb"]) if it.get("thumb") else None
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            lines = [f"true: {_short(it['true_name'], 22)}"]
            colors = ["#000000"]
            for p in it.get("predictions", []):
                if p.get("pred") is None:
                    lines.append(f"{FAMILY_KEYS.get(p['family'], p['family'])}: n/a")
                    colors.append("#777777")
                    continue
                conf = f" {100 * p['confidence']:.0f}%" if p.get("confidence") is not None else ""
                key = FAMILY_KEYS.get(p["family"], p["family"])
                lines.append(f"{key}: {_short(p['pred_name'], 16)}{conf}")
                colors.append(OK_COLOR if p.get("correct") else MISTAKE_COLOR)
            for j, (ln, c) in enumerate(zip(lines, colors)):
                ax.text(0.5, -0.05 - 0.13 * j, ln, transform=ax.transAxes, ha="center", va="top",
                        fontsize=6.5,
                        color=c, fontweight="bold" if j == 0 else "normal")
            if any(p.get("correct") is False for p in it.get("predictions", [])):
                for s in ("top", "bottom", "left", "right"):
                    ax.spines[s].set_visible(True)
                    ax.spines[s].set_color(MISTAKE_COLOR)
                    ax.spines[s].set_linewidth(2)
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
    return fig


def _paste(canvas: np.ndarray, img, x: int, y: int, box: int, border=None, bw: int = 3) -> None:
    """Place ``img`` (float or uint8, gray/RGB/RGBA) centred in a ``box`` px square at (x, y)."""
    if border is not None:
        rgb = (np.asarray(mpl.colors.to_rgb(border)) * 255).astype(np.uint8)
        canvas[y - bw:y + box + bw, x - bw:x + box + bw] = rgb
        canvas[y:y + box, x:x + box] = 255
    if img is None:
        canvas[y:y + box, x:x + box] = 235
        return
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = np.ascontiguousarray(a[..., :3])
    h, w = a.shape[:2]
    if max(h, w) != box:  # fill the box (small images upscaled without blur)
        from PIL import Image
        scale = box / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        a = np.asarray(Image.fromarray(a).resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR))
    h, w = a.shape[:2]
    oy, ox = y + (box - h) // 2, x + (box - w) // 2
    canvas[oy:oy + h, ox:ox + w] = a


def retrieval_figure(queries: list[dict], thumbs_dir) -> Figure:
    """Each query with its nearest training images per feature space; other-class neighbours in red.

    Drawn as one mosaic image with text on top (one axes: fast for dozens of thumbnails).
    """
    rows = [(q, s) for q in queries for s in q.get("spaces", [])]
    k = max((len(s.get("neighbours", [])) for _, s in rows), default=5)
    box, pad, head, label_w = 96, 14, 18, 190
    cell = box + pad
    width = label_w + cell * (k + 1) + 24
    height = max(1, len(rows)) * (box + head + pad) + 6
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    texts = []
    for r, (q, sp) in enumerate(rows):
        y = r * (box + head + pad) + head
        _paste(canvas, _read_png(thumbs_dir / q["thumb"]) if q.get("thumb") else None, label_w, y, box)
        texts.append((label_w + box / 2, y - 4, f"query: {_short(q['true_name'], 16)}", "#000000", "bold"))
        label = feature_name(sp["feature"], sp.get("weights"))
        texts.append((label_w - 10, y + box / 2, _wrap(label, 24, 5),
                      FAMILY_COLORS.get(sp.get("family"), OTHER_COLOR), "bold"))
        for j, nb in enumerate(sp.get("neighbours", [])[:k]):
            x = label_w + cell * (j + 1) + 24
            col = OK_COLOR if nb.get("same_class") else MISTAKE_COLOR
            _paste(canvas, _read_png(thumbs_dir / nb["thumb"]) if nb.get("thumb") else None, x, y, box, col)
            dist = f" ({nb['distance']:.2f})" if nb.get("distance") is not None else ""
            texts.append((x + box / 2, y - 4, _short(nb["true_name"], 12) + dist, col, "normal"))
    with mpl.rc_context({**RC, "axes.grid": False}):
        fig = Figure(figsize=(width / 110, height / 110))
        FigureCanvasAgg(fig)
        ax = fig.add_axes([0, 0, 1, 1])
        ax.imshow(canvas, interpolation="nearest")
        ax.axis("off")
        for x, y, t, c, w in texts:
            right = x < label_w
            ax.text(x, y, t, color=c, fontweight=w, fontsize=6.5, ha="right" if right else "center",
                    va="center" if right else "bottom")
    return fig

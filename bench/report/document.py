"""Assemble a report as a format-neutral :class:`Document` of sections and blocks.

The HTML (:mod:`.html`) and PDF (:mod:`.pdf`) writers render the same document, so
both formats show the same tables, figures and sentences. Figures are rendered to
PNG once here (and saved under ``figures/`` by the builder).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
import pandas as pd

from .. import stats
from ..aggregate import METRIC_NAMES, best_by_family, fmt_ci, fmt_pm, not_pretrained_families, sort_summary
from . import plots
from . import tables as T
from .rundata import RunData
from .sections import add_sections

log = logging.getLogger(__name__)

KEY_COLUMNS = ["#", "Dataset", "Feature", "Family", "Classifier", "Macro-F1 %", "Accuracy %",
               "Extract ms/img", "Fit s", "Folds ok"]
KEY_FACTS = ("Dataset", "Images / classes", "Protocol", "Seed", "Hardware", "Started", "Cells")


@dataclass
class FigureBlock:
    name: str
    png: bytes
    caption: str = ""
    alt: str = ""


@dataclass
class Block:
    """kind: text | note | table | figure | gallery | retrieval | facts | links | explain.

    ``links``: a list of ``(label, href)``; href relative to the report's folder.
    ``explain`` holds a :class:`FigureBlock` shown at its own pixel size and never
    split across PDF pages (the panels of "What the features see")."""

    kind: str
    value: object
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)

    def add(self, kind: str, value, caption: str = "") -> "Section":
        self.blocks.append(Block(kind, value, caption))
        return self


@dataclass
class Document:
    title: str
    subtitle: str
    run_id: str
    facts: list
    verdicts: list
    key_table: T.Table | None
    key_figure: FigureBlock | None
    sections: list
    packages: str = ""
    kind: str = "report"
    banner: list = field(default_factory=list)   # warning lines shown above everything (weights)

    def tables(self) -> list[T.Table]:
        out = [self.key_table] if self.key_table is not None else []
        for s in self.sections:
            out += [b.value for b in s.blocks if b.kind == "table"]
            out += [b.value["table"] for b in s.blocks if b.kind == "details" and b.value.get("table")]
        return out

    def table(self, prefix: str) -> T.Table | None:
        """The first table whose name starts with ``prefix``."""
        return next((t for t in self.tables() if t.name.startswith(prefix)), None)

    def figures(self) -> list[FigureBlock]:
        out = []
        for s in self.sections:
            for b in s.blocks:
                if b.kind in ("figure", "explain"):
                    out.append(b.value)
                elif b.kind in ("gallery", "retrieval", "mistakes") and b.value.get("png"):
                    out.append(FigureBlock(b.kind, b.value["png"], b.caption))
        if self.key_figure is not None and all(f.name != self.key_figure.name for f in out):
            out.insert(0, self.key_figure)
        return out


def _figure(name: str, fig, caption: str = "", alt: str = "") -> FigureBlock:
    return FigureBlock(name, plots.to_png(fig), caption, alt or caption or name)


def _analysis_reason(rd: RunData, part: str, what: str) -> str:
    man = rd.analysis.get("manifest") or {}
    info = (man.get("parts") or {}).get(part)
    if not (rd.run_dir / "analysis").exists():
        return f"No {what}: the run has no analysis/ folder (interrupted before analysis, or an older run)."
    if not info:
        return f"No {what}: not computed for this run."
    reason = info.get("reason") or info.get("error") or info.get("status")
    return f"No {what}: {info.get('status', 'skipped')} ({reason})."


def _n_images(rd: RunData) -> int | None:
    ds = rd.dataset
    return ds.get("n_images") or (len(ds["labels"]) if ds.get("labels") else None)


def _counting_section(counts, rmse) -> Section:
    """Count table (baseline first), failed counters, scatter of totals, per-image rows."""
    from . import counting as C

    s = Section("counting", "Counting")
    summary = C.count_summary(counts) if counts is not None else pd.DataFrame()
    if len(summary):
        s.add("table", C.count_table(summary))
        s.add("figure", _figure("count-scatter", C.count_scatter(counts, summary),
                                "Predicted vs true total count of every held-out image: the baseline "
                                "and the best row of each counter (dashed: perfect counts)."))
    elif rmse is not None:
        s.add("table", T.frame_table(rmse, "count-rmse", "Root-mean-square error of the per-image counts."))
    bad = C.failed_counters(rmse)
    if bad is not None:
        s.add("table", bad)
    if counts is not None:
        s.add("table", T.frame_table(counts.head(200), "counts",
                                     "Per-image true and predicted counts" +
                                     (" (first 200 rows)" if len(counts) > 200 else "") + "."))
    return s


# --------------------------------------------------------------------------- a run
def build_document(rd: RunData) -> Document:
    summary = rd.summary
    names = rd.class_names
    datasets = rd.datasets or [rd.dataset.get("name", "")]
    multi = len(datasets) > 1
    sections: list[Section] = []

    # verdicts (one per dataset)
    verdicts, comps_all = [], []
    for ds in datasets:
        comps = T.family_comparisons(rd, ds if len(summary) else None)
        fams = list(best_by_family(summary, dataset=ds).keys()) if len(summary) else []
        unp = list(not_pretrained_families(summary, dataset=ds)) if len(summary) else []
        v = T.verdict(comps[0] if comps else None, fams, unp)
        verdicts.append(f"{ds}: {v}" if multi else v)
        comps_all += comps

    key_table = None
    if len(summary):
        key_table = T.leaderboard(sort_summary(summary[summary["variant"] == ""], rd.metric), top=8,
                                  name="top-rows")
        key_table = key_table.select(KEY_COLUMNS)
        ranked = METRIC_NAMES[rd.metric]  # protocol.metric
        key_table.caption = (f"Top rows by mean {ranked} (main protocol): mean ± std over folds, "
                             "95% interval "
                             "below. The full leaderboard follows.")
        if T.is_predefined(rd):
            key_table.caption = (f"Top rows by {ranked} on the " + _spread_words(rd)
                                 + " The full leaderboard follows.")

    # leaderboard
    s = Section("leaderboard", "Leaderboard")
    if len(summary):
        board = T.leaderboard(summary)  # summary: ranked by protocol.metric (RunData)
        board.caption = f"Ranked by mean {METRIC_NAMES[rd.metric]} (protocol.metric). " + board.caption
        if T.is_predefined(rd):
            board.caption = f"Ranked by {METRIC_NAMES[rd.metric]}. Scores on the " + _spread_words(rd)
        s.add("table", board)
        bar = _figure("scores", plots.bar_chart(summary),
                      "Macro-F1 of every feature × classifier row: mean over folds, bars = 95% interval. "
                      "Hatched bars use random-init weights.")
        s.add("figure", bar)
    else:
        s.add("note", "No records yet: the run has not finished any cell.")
        bar = None
    sections.append(s)

    # families
    if len(summary):
        s = Section("families", "Hand-crafted vs deep")
        for ds in datasets:
            t = T.family_table(summary, ds)
            if multi:
                t.caption = f"{ds}: " + t.caption
            s.add("table", t)
        sections.append(s)

        s = Section("cost", "Accuracy against cost")
        cost = _figure("cost", plots.cost_plot(summary, _n_images(rd)),
                       "Mean macro-F1 against cost (feature extraction for all images + one fit, seconds, "
                       "log "
                       "scale); vertical lines are 95% intervals; outlined points form the Pareto front: no "
                       "other row is both cheaper and better.")
        s.add("figure", cost)
        sections.append(s)

    # statistics
    s = Section("statistics", "Statistics")
    for v in verdicts:
        s.add("text", v)
    if comps_all:
        s.add("table", T.comparisons_table(comps_all))
    else:
        s.add("note", "Fewer than two feature families finished: no paired test to run.")
    if multi:
        _ranks_block(s, summary, "within-run")
    sections.append(s)

    # per class
    s = Section("classes", "Per-class results")
    best_rows = [r for ds in datasets for r in best_by_family(summary, dataset=ds).values()] \
        if len(summary) else []
    own = rd.dataset.get("name")
    best_rows = [r for r in best_rows if not multi or r["dataset"] == own]
    if best_rows:
        panels = []
        for r in best_rows:
            cm = T.confusion(rd, T.key_of(r))
            fam = T.FAMILY_TITLES.get(r["family"], r["family"])
            if cm is None:
                s.add("note", f"{T.label_of(r)}: no saved predictions, no confusion matrix.")
            elif len(names) <= T.MAX_CONFUSION_CLASSES:
                panels.append((f"{fam}\n{T.label_of(r)}", cm))
            else:
                t = T.top_confusions(cm, names, name=f"confusions-{T.css_token(r['family'])}")
                t.caption = f"{fam}: {T.label_of(r)}. " + t.caption
                s.add("table", t)
        if panels:
            s.add("figure", _figure("confusion", plots.confusion_grid(panels, names),
                                    "Confusion matrices of the best row of each family (out-of-fold "
                                    "predictions "
                                    "of the first repeat; colour = share of the true class, numbers = "
                                    "images)."))
        f1 = T.per_class_f1(rd, best_rows)
        if not f1.empty:
            s.add("figure", _figure("per-class-f1", plots.per_class_heatmap(f1),
                                    "Per-class F1 (out-of-fold) of the best row of each family."))
    else:
        s.add("note", "No finished row.")
    sections.append(s)

    # t-SNE
    s = Section("tsne", "Feature spaces (t-SNE)")
    tsne = rd.analysis.get("tsne")
    if tsne is not None and len(tsne.get("features", [])):
        info = ((rd.analysis.get("manifest") or {}).get("parts", {}).get("tsne") or {}).get("features") or []
        s.add("figure", _figure("tsne", plots.tsne_figure(tsne, names, info),
                                f"t-SNE of {len(tsne['index'])} images (standardised, PCA to 50 dimensions) "
                                "in each feature space; colours are classes."))
        if any(i.get("fold_stage_fit_on_plotted_images") for i in info):
            s.add("note", "* Features with a fold stage (e.g. a SIFT codebook) were encoded with that "
                          "stage fitted "
                          "on the plotted images themselves, for this picture only; every score fits it on "
                          "training folds only.")
    else:
        s.add("note", _analysis_reason(rd, "tsne", "t-SNE"))
    sections.append(s)

    # learning curves
    s = Section("learning", "Learning curves")
    lc = rd.analysis.get("learning_curves")
    if lc is not None and len(lc) and (lc.get("status", pd.Series(["ok"])) == "ok").any():
        s.add("figure", _figure("learning-curves", plots.learning_curve_figure(lc),
                                "Macro-F1 on the test fold against the share of each training fold used "
                                f"(stratified, nested subsets; first {lc['split'].nunique()} splits; mean "
                                "± std). "
                                "Refitted with each classifier's configured parameters (no inner search)."))
    else:
        s.add("note", _analysis_reason(rd, "learning_curves", "learning curves"))
    sections.append(s)

    # galleries
    s = Section("gallery", "Inference gallery")
    gal = rd.analysis.get("gallery")
    if gal and gal.get("items"):
        png = plots.to_png(plots.gallery_figure(gal["items"], rd.analysis["dir"]))
        s.add("gallery", {"items": gal["items"], "rows": gal.get("rows", []), "dir": rd.analysis["dir"],
                          "png": png},
              "Test images chosen per class (fixed seed) with the out-of-fold prediction and confidence of "
              "the "
              "best row of each family; mistakes in red.")
    else:
        s.add("note", _analysis_reason(rd, "gallery", "gallery"))
    sections.append(s)

    s = Section("retrieval", "Nearest neighbours")
    ret = rd.analysis.get("retrieval")
    if ret and ret.get("queries"):
        png = plots.to_png(plots.retrieval_figure(ret["queries"], rd.analysis["dir"]))
        s.add("retrieval", {"queries": ret["queries"], "dir": rd.analysis["dir"], "k": ret.get("k", 5),
                            "png": png},
              f"For each query (a test image), its {ret.get('k', 5)} nearest training images of the same "
              "split, "
              f"by {ret.get('metric', 'cosine distance')}; neighbours of another class in red.")
    else:
        s.add("note", _analysis_reason(rd, "retrieval", "retrieval gallery"))
    sections.append(s)

    sections.append(_explain_section(rd))

    # fine-tuning
    if rd.finetune is not None and len(rd.finetune):
        s = Section("finetune", "Fine-tuning curves")
        s.add("figure", _figure("finetune", plots.finetune_figure(rd.finetune),
                                "Loss and accuracy per epoch of the end-to-end CNN models (bold: mean over "
                                "splits; dashed: validation)."))
        sections.append(s)

    # counting (sealion)
    counts, rmse = rd.analysis.get("counts"), rd.analysis.get("count_rmse")
    if counts is not None or rmse is not None:
        sections.append(_counting_section(counts, rmse))

    # failures
    failed = T.failed_cells(rd)
    s = Section("failed", "Failed cells")
    if len(failed):
        s.add("table", failed)
    else:
        s.add("note", "No cell failed.")
    sections.append(s)

    # analysis notes and environment
    s = Section("environment", "Run environment")
    s.add("facts", T.header_facts(rd))
    w = T.weights_table(rd)
    if len(w):
        s.add("table", w)
    notes = (rd.analysis.get("manifest") or {}).get("notes") or []
    for n in notes:
        s.add("note", n)
    sections.append(s)

    # per-fold, per-class, inference cost, learning curves with CNN, mistakes, reproduce
    add_sections(rd, sections, section_type=Section, figure_type=FigureBlock)

    key_fig = None
    if len(summary):
        main = summary[summary["variant"] == ""]
        key_fig = _figure("scores-top", plots.bar_chart(main, max_rows=10, title="Top rows by macro-F1",
                                                         width=6.0),
                          "Top rows by mean macro-F1 with 95% intervals.")
    ds_name = rd.dataset.get("name") or ", ".join(datasets)
    return Document(title=f"{ds_name}: hand-crafted vs deep features", subtitle=f"run {rd.run_id}",
                    run_id=rd.run_id, facts=[f for f in T.header_facts(rd) if f[0] in KEY_FACTS],
                    verdicts=verdicts, key_table=key_table,
                    key_figure=key_fig, sections=sections, packages=T.packages_text(rd),
                    banner=T.weights_banner(rd))


def _spread_words(rd: RunData) -> str:
    """Caption words for the predefined protocol: what the ± and the interval are over."""
    sp = rd.splits or {}
    n_test = sp.get("n_test", len((sp.get("folds") or [{}])[0].get("test", [])))
    n_seeds = len(sp.get("folds") or [])
    if n_seeds > 1:
        return (f"official test split (n = {n_test}), percent: mean ± std over {n_seeds} refits with "
                "different seeds on the same test images, with the Student-t 95% interval over seeds below. "
                "The spread is over seeds, not over test sets: it says how much the training seed moves a "
                "score, not how a new test set would.")
    return (f"official test split (n = {n_test}), percent: one fit, so no spread; the paired tests in "
            "Statistics use the test-set predictions.")


def _explain_section(rd: RunData) -> Section:
    """"What the features see", from analysis/explain/ (see :mod:`.explain`)."""
    from .explain import TITLE, explain_blocks
    s = Section("explain", TITLE)
    for kind, value, caption in explain_blocks(rd):
        s.add(kind, FigureBlock(**value) if kind in ("figure", "explain") else value, caption)
    return s


def _ranks_block(s: Section, summary: pd.DataFrame, name: str) -> None:
    """Average ranks over datasets + Friedman/Nemenyi CD diagram (rows present in every dataset)."""
    main = summary[(summary["variant"] == "") & summary["macro_f1_mean"].notna()].copy()
    main["row"] = [T.label_of(r) for _, r in main.iterrows()]
    piv = main.pivot_table(index="dataset", columns="row", values="macro_f1_mean", aggfunc="first")
    n_all = piv.shape[1]
    piv = piv.dropna(axis=1)
    if piv.shape[0] < 2 or piv.shape[1] < 2:
        s.add("note", "Average ranks need at least two datasets sharing at least two rows.")
        return
    fr = stats.friedman_nemenyi(piv)
    s.add("table", T.rank_table(fr, f"ranks-{name}"))
    if piv.shape[1] < n_all:
        s.add("note", f"{n_all - piv.shape[1]} rows missing from some dataset were left out of the ranking.")
    fam = dict(zip(main["row"], main["family"]))
    s.add("figure", _figure(f"cd-{name}", plots.cd_diagram(fr.methods, fr.avg_ranks, fr.cd,
                                                           families=[fam.get(m) for m in fr.methods]),
                            f"Critical-difference diagram over {fr.n_datasets} datasets: average rank of "
                            "each "
                            f"row (1 = best); rows joined by a bar are not significantly different (Nemenyi, "
                            f"CD = {fr.cd:.2f}; Friedman p = {T.fmt_p(fr.p)})."))


# --------------------------------------------------------------------------- several runs
def _protocol_of(rd: RunData) -> str:
    sp = rd.splits
    if T.is_predefined(rd):
        return T.predefined_text(sp)
    return (f"{sp.get('splitter', '?')}" + ("; grouped by source image" if sp.get("grouped") else ""))


def score_matrix(summary: pd.DataFrame, datasets: list[str]) -> T.Table:
    """Every main-protocol row (feature + classifier) against every dataset: mean macro-F1."""
    main = summary[(summary["variant"] == "") & summary["macro_f1_mean"].notna()].copy()
    main["row"] = [T.label_of(r) for _, r in main.iterrows()]
    order = (main.groupby("row")["macro_f1_mean"].mean().sort_values(ascending=False).index.tolist()
             if len(main) else [])
    fam = dict(zip(main["row"], main["family"]))
    rows = []
    for label in order:
        cells = [T.Cell(label, label.lower()), T.Cell(T.FAMILY_TITLES.get(fam[label], fam[label]), fam[label],
                                                      f"fam-{T.css_token(fam[label])}")]
        vals = []
        for ds in datasets:
            r = main[(main["row"] == label) & (main["dataset"] == ds)]
            if len(r):
                r = r.iloc[0]
                vals.append(r["macro_f1_mean"])
                cells.append(T.Cell(fmt_pm(r["macro_f1_mean"], r["macro_f1_std"]), float(r["macro_f1_mean"]),
                                    sub=fmt_ci(r["macro_f1_ci_low"], r["macro_f1_ci_high"])))
            else:
                cells.append(T.Cell("-", None, "muted", "not run or failed on this dataset"))
        mean = sum(vals) / len(vals) if len(vals) == len(datasets) else None
        cells.append(T.Cell(fmt_pm(mean, None) if mean is not None else "-", mean))
        rows.append(cells)
    cols = ["Row", "Family"] + [str(d) for d in datasets] + ["Mean over datasets"]
    return T.Table("scores-per-dataset", cols, rows, set(range(2, len(cols))),
                   "Macro-F1 (percent) of every representation + classifier on every dataset: mean ± std "
                   "over that dataset's splits (or seeds, for an official split), 95% interval below. The "
                   "mean over datasets is shown only for rows finished on all of them.")


def build_compare_document(runs: list[RunData], *, kind: str = "compare", title: str | None = None,
                           links: list[tuple[str, str]] | None = None) -> Document:
    """One document over several runs: per-dataset family deltas, every row's score per dataset,
    average ranks with the Friedman test and the critical-difference diagram.

    ``kind="compare"`` (``bench compare``) ends with the joined leaderboard; ``kind="suite"``
    (``bench.suite``) shows each dataset's own leaderboard instead and ``links``
    (label, relative href) to the per-dataset reports.
    """
    frames = []
    names = [(rd.dataset.get("name") or (rd.datasets[0] if rd.datasets else rd.run_id)) for rd in runs]
    if kind == "suite":  # the suite's labels (folder names) are unique by construction
        names = [rd.run_id for rd in runs]
    dup = {n for n in names if names.count(n) > 1}
    for rd, n in zip(runs, names):
        df = rd.summary.copy()
        df["dataset"] = f"{n} [{rd.run_id}]" if n in dup else n
        df["run"] = rd.run_id
        frames.append(df)
    labels = [df["dataset"].iloc[0] if len(df) else rd.run_id for rd, df in zip(runs, frames)]
    summary = sort_summary(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
    sections = []
    verdicts = []
    s = Section("per-run", "Per dataset: hand-crafted vs deep")
    for rd, df, ds in zip(runs, frames, labels):
        comps = T.family_comparisons(rd, None)
        fams = list(best_by_family(rd.summary).keys())
        unp = list(not_pretrained_families(rd.summary))
        v = f"{ds}: {T.verdict(comps[0] if comps else None, fams, unp)}"
        verdicts.append(v)
        s.add("text", v)
        t = T.family_table(df, ds)
        t.caption = f"{ds}: " + t.caption
        s.add("table", t)
    sections.append(s)
    s = Section("scores", "Scores per dataset")
    if len(summary):
        s.add("table", score_matrix(summary, labels))
    else:
        s.add("note", "No finished rows.")
    sections.append(s)
    s = Section("ranks", "Average ranks and critical difference")
    _ranks_block(s, summary, "compare")
    ranks_section = s
    sections.append(s)
    if kind == "suite":
        s = Section("leaderboards", "Leaderboard of each dataset")
        for rd, ds in zip(runs, labels):
            if len(rd.summary):
                t = T.leaderboard(rd.summary, name=f"leaderboard-{T.css_token(ds)}")
                t.caption = f"{ds} ({_protocol_of(rd)}; ranked by {METRIC_NAMES[rd.metric]}). " + t.caption
                s.add("table", t)
            else:
                s.add("note", f"{ds}: no finished cell.")
        sections.append(s)
    else:
        s = Section("leaderboard", "Joined leaderboard")
        s.add("table", T.leaderboard(summary, name="joined-leaderboard"))
        sections.append(s)
    if links:
        s = Section("reports", "Per-dataset reports")
        s.add("links", list(links), "Each dataset's full report (confusion matrices, t-SNE, galleries).")
        sections.append(s)
    facts = [("Runs", ", ".join(rd.run_id for rd in runs)),
             ("Datasets", ", ".join(dict.fromkeys(summary["dataset"])) if len(summary) else "-")]
    for rd, ds in zip(runs, labels):
        facts.append((str(ds), f"{_protocol_of(rd)}; seed {rd.env.get('seed', '?')}; "
                               f"{len(rd.records)} cells"))
    key = next((b.value for b in ranks_section.blocks if b.kind == "figure"), None)
    top = T.leaderboard(summary[summary["variant"] == ""], top=10, name="top-rows") if len(summary) else None
    default_title = "Suite of datasets" if kind == "suite" else "Comparison of runs"
    subtitle = f"{len(runs)} {'datasets' if kind == 'suite' else 'runs'}"
    return Document(title=title or default_title, subtitle=subtitle,
                    run_id=kind, facts=facts, verdicts=verdicts, key_table=top, key_figure=key,
                    sections=sections, kind="compare")

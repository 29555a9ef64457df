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
from ..aggregate import METRIC_NAMES, best_by_family, fmt_ci, fmt_pm, is_random_init, not_pretrained_families, sort_summary
from . import plots
from . import summary as SUM
from . import tables as T
from .labels import Palette, feature_name, model_of
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
    # the one-page hand-in (summary.pdf; methods and caveats also in the HTML summary)
    methods: str = ""
    caveats: list = field(default_factory=list)
    author: str = ""
    contribution: str = ""
    summary_table: T.Table | None = None
    summary_panels: list = field(default_factory=list)

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
@dataclass
class _Run:
    """What every section builder of one run needs, computed once."""

    rd: RunData
    summary: pd.DataFrame        # with hybrid extraction times including their parts
    names: list
    datasets: list
    multi: bool
    palette: Palette
    balanced: bool | None

    @classmethod
    def of(cls, rd: RunData) -> "_Run":
        summary = T.with_part_costs(rd.summary, rd.features) if len(rd.summary) else rd.summary
        models = list(rd.finetune["model"].unique()) if rd.finetune is not None and len(rd.finetune) else []
        datasets = rd.datasets or [rd.dataset.get("name", "")]
        return cls(rd, summary, rd.class_names, datasets, len(datasets) > 1,
                   Palette.of_summary(summary, models), T.classes_balanced(T.class_counts(rd)))


def build_document(rd: RunData) -> Document:
    """The document of one run: summary (verdicts, key facts, top rows, the hand-in's parts)
    and one section per question, each built by its own function below."""
    run = _Run.of(rd)
    verdicts, comps = _verdicts(run)
    sections = [_leaderboard_section(run), *_family_sections(run), _statistics_section(run, comps),
                _classes_section(run), _tsne_section(run), _learning_section(run), _gallery_section(run),
                _retrieval_section(run), _explain_section(rd), _finetune_section(run),
                _counting_of(run), _failed_section(run), _environment_section(run)]
    sections = [s for s in sections if s is not None]
    # per-fold, per-class, inference cost, learning curves with CNN, mistakes, reproduce
    add_sections(rd, sections, section_type=Section, figure_type=FigureBlock)
    ds_name = rd.dataset.get("name") or ", ".join(run.datasets)
    author, contribution = SUM.contribution(rd)
    return Document(title=f"{ds_name}: hand-crafted vs deep features", subtitle=f"run {rd.run_id}",
                    run_id=rd.run_id, facts=[f for f in T.header_facts(rd) if f[0] in KEY_FACTS],
                    verdicts=verdicts, key_table=_key_table(run), key_figure=None, sections=sections,
                    packages=T.packages_text(rd), banner=T.weights_banner(rd),
                    methods=SUM.methods_line(rd, run.summary), caveats=SUM.caveats(rd, run.summary),
                    author=author, contribution=contribution, summary_table=_summary_table(run),
                    summary_panels=_summary_panels(run, comps))


def _verdicts(run: _Run) -> tuple[list[str], list]:
    """One verdict per dataset (shown once, in the summary) and every family comparison."""
    verdicts, comps_all = [], []
    summary = run.summary
    for ds in run.datasets:
        comps = T.family_comparisons(run.rd, ds if len(summary) else None)
        fams = list(best_by_family(summary, dataset=ds).keys()) if len(summary) else []
        unp = list(not_pretrained_families(summary, dataset=ds)) if len(summary) else []
        v = T.verdict(comps[0] if comps else None, fams, unp)
        verdicts.append(f"{ds}: {v}" if run.multi else v)
        comps_all += comps
    return verdicts, comps_all


def _key_table(run: _Run) -> T.Table | None:
    if not len(run.summary):
        return None
    main = run.summary[run.summary["variant"] == ""]
    ranked = METRIC_NAMES[run.rd.metric]  # protocol.metric
    key = T.leaderboard(sort_summary(main, run.rd.metric), top=8, name="top-rows",
                        balanced=run.balanced).select(KEY_COLUMNS)
    key.caption = (f"Top rows by mean {ranked} (main protocol): mean ± std over folds, 95% interval below. "
                   "The full leaderboard follows.")
    if T.is_predefined(run.rd):
        key.caption = f"Top rows by {ranked} on the " + _spread_words(run.rd) + " The full leaderboard follows."
    return key


def _leaderboard_section(run: _Run) -> Section:
    s = Section("leaderboard", "Leaderboard")
    summary = run.summary
    if not len(summary):
        return s.add("note", "No records yet: the run has not finished any cell.")
    board = T.leaderboard(summary, balanced=run.balanced)  # summary: ranked by protocol.metric (RunData)
    ranked = METRIC_NAMES[run.rd.metric]
    board.caption = f"Ranked by mean {ranked} (protocol.metric). " + board.caption
    if T.is_predefined(run.rd):
        board.caption = f"Ranked by {ranked}. Scores on the " + _spread_words(run.rd) + " " + board.caption
    s.add("table", board)
    rows = plots.bar_rows(summary)
    bars = plots.bar_chart(summary, palette=run.palette)
    return s.add("figure", _figure("scores", bars, _bar_caption(rows)))


def _bar_caption(rows: pd.DataFrame) -> str:
    """Says what the bar chart shows: how many rows, the interval, the hatches present."""
    n = len(rows)
    cap = (f"Macro-F1 of {'the ' + str(n) + ' rows' if n > 1 else 'the row'} of the leaderboard: mean "
           "over folds, whiskers = 95% interval; colour = family")
    cap += ", end-to-end models each in their own shade." if (rows["family"] == "cnn").any() else "."
    if rows["weights"].map(is_random_init).any():
        cap += " Hatched (///): random-init weights."
    variants = list(dict.fromkeys(v for v in rows["variant"] if v))
    if variants:
        cap += " Dotted, faded: variant rows (" + ", ".join(variants) + ")."
    return cap


def _family_sections(run: _Run) -> list[Section]:
    if not len(run.summary):
        return []
    s = Section("families", "Hand-crafted vs deep")
    for ds in run.datasets:
        t = T.family_table(run.summary, ds, run.rd, _n_images(run.rd))
        if run.multi:
            t.caption = f"{ds}: " + t.caption
        s.add("table", t)
    c = Section("cost", "Accuracy against cost")
    main = run.summary[run.summary["variant"] == ""]
    cap = (f"Mean macro-F1 of {len(main)} rows against cost (feature extraction for all images + one fit, "
           "seconds, log scale); vertical lines are 95% intervals; outlined points form the Pareto front: no "
           "other row is both cheaper and better; marker = classifier.")
    fig = plots.cost_plot(run.summary, _n_images(run.rd), palette=run.palette)
    c.add("figure", _figure("cost", fig, cap))
    return [s, c]


def _statistics_section(run: _Run, comps: list) -> Section:
    """The paired tests behind the verdict (the verdict itself is in the summary, once)."""
    s = Section("statistics", "Statistics")
    if comps:
        s.add("table", T.comparisons_table(comps))
    else:
        s.add("note", "Fewer than two feature families finished: no paired test to run.")
    if run.multi:
        _ranks_block(s, run.summary, "within-run", run.palette)
    return s


def _best_rows(run: _Run) -> list:
    if not len(run.summary):
        return []
    rows = [r for ds in run.datasets for r in best_by_family(run.summary, dataset=ds).values()]
    own = run.rd.dataset.get("name")
    return [r for r in rows if not run.multi or r["dataset"] == own]


def _classes_section(run: _Run) -> Section:
    s = Section("classes", "Per-class results")
    best_rows = _best_rows(run)
    if not best_rows:
        return s.add("note", "No finished row.")
    panels = []
    for r in best_rows:
        cm = T.confusion(run.rd, T.key_of(r))
        fam = T.FAMILY_TITLES.get(r["family"], r["family"])
        if cm is None:
            s.add("note", f"{T.label_of(r)}: no saved predictions, no confusion matrix.")
        elif len(run.names) <= T.MAX_CONFUSION_CLASSES:
            panels.append((f"{fam}\n{T.label_of(r)}", cm))
        else:
            t = T.top_confusions(cm, run.names, name=f"confusions-{T.css_token(r['family'])}")
            t.caption = f"{fam}: {T.label_of(r)}. " + t.caption
            s.add("table", t)
    first = "of the first repeat; " if (run.rd.splits or {}).get("n_repeats", 1) > 1 else ""
    if panels:
        fams = ", ".join(p[0].split("\n")[0] for p in panels)
        s.add("figure", _figure("confusion", plots.confusion_grid(panels, run.names),
                                f"Confusion matrices of the best row of each family ({fams}): out-of-fold "
                                f"predictions {first}colour = share of the true class, numbers = images."))
    f1 = T.per_class_f1(run.rd, best_rows)
    if not f1.empty:
        s.add("figure", _figure("per-class-f1", plots.per_class_heatmap(f1),
                                f"Per-class F1 (out-of-fold) of {f1.shape[1]} rows, the best of each family, "
                                f"over {f1.shape[0]} classes" + (" (the hardest 150 shown)"
                                                                  if f1.shape[0] > plots.MAX_HEATMAP_CLASSES
                                                                  else "") + "."))
    return s


def _manifest_notes(rd: RunData) -> list[str]:
    return list((rd.analysis.get("manifest") or {}).get("notes") or [])


def _tsne_section(run: _Run) -> Section:
    s = Section("tsne", "Feature spaces (t-SNE)")
    rd = run.rd
    tsne = rd.analysis.get("tsne")
    if tsne is None or not len(tsne.get("features", [])):
        return s.add("note", _analysis_reason(rd, "tsne", "t-SNE"))
    info = ((rd.analysis.get("manifest") or {}).get("parts", {}).get("tsne") or {}).get("features") or []
    s.add("figure", _figure("tsne", plots.tsne_figure(tsne, run.names, info, palette=run.palette),
                            f"t-SNE of {len(tsne['index'])} images (standardised, PCA to 50 dimensions) in "
                            f"each of {len(tsne['features'])} feature spaces; colours are classes, panel "
                            "frames the family."))
    if any(i.get("fold_stage_fit_on_plotted_images") for i in info):
        s.add("note", TSNE_NOTE)
    return s


TSNE_NOTE = ("* Features with a fold stage (e.g. a SIFT codebook) were encoded with that stage fitted on the "
             "plotted images themselves, for this picture only; every score fits it on training folds only.")


def _learning_section(run: _Run) -> Section:
    s = Section("learning", "Learning curves")
    rd = run.rd
    lc = rd.analysis.get("learning_curves")
    if lc is None or not len(lc) or not (lc.get("status", pd.Series(["ok"])) == "ok").any():
        return s.add("note", _analysis_reason(rd, "learning_curves", "learning curves"))
    n_rows = lc.groupby(["feature", "classifier"]).ngroups if {"feature", "classifier"} <= set(lc) else "the"
    return s.add("figure", _figure("learning-curves", plots.learning_curve_figure(lc, palette=run.palette),
                                   f"Macro-F1 of {n_rows} rows (the best of each family) on the test fold "
                                   "against the share of each training fold used (stratified, nested "
                                   f"subsets; first {lc['split'].nunique()} splits; mean ± std). Refitted "
                                   "with each classifier's configured parameters (no inner search)."))


def _gallery_section(run: _Run) -> Section:
    s = Section("gallery", "Inference gallery")
    rd = run.rd
    gal = rd.analysis.get("gallery")
    if not (gal and gal.get("items")):
        return s.add("note", _analysis_reason(rd, "gallery", "gallery"))
    png = plots.to_png(plots.gallery_figure(gal["items"], rd.analysis["dir"], rows=gal.get("rows")))
    n_fam = len({p["family"] for it in gal["items"] for p in it.get("predictions", [])})
    return s.add("gallery", {"items": gal["items"], "rows": gal.get("rows", []), "dir": rd.analysis["dir"],
                             "png": png},
                 f"{len(gal['items'])} test images chosen per class (fixed seed) with the out-of-fold "
                 f"prediction and confidence of the best row of each of {n_fam} families; mistakes in red.")


def _retrieval_section(run: _Run) -> Section:
    s = Section("retrieval", "Nearest neighbours")
    rd = run.rd
    ret = rd.analysis.get("retrieval")
    if not (ret and ret.get("queries")):
        return s.add("note", _analysis_reason(rd, "retrieval", "retrieval gallery"))
    png = plots.to_png(plots.retrieval_figure(ret["queries"], rd.analysis["dir"]))
    n_sp = len({sp.get("feature") for q in ret["queries"] for sp in q.get("spaces", [])})
    return s.add("retrieval", {"queries": ret["queries"], "dir": rd.analysis["dir"], "k": ret.get("k", 5),
                               "png": png},
                 f"For each of {len(ret['queries'])} queries (test images), its {ret.get('k', 5)} nearest "
                 f"training images of the same split in each of {n_sp} feature spaces, by "
                 f"{ret.get('metric', 'cosine distance')}; neighbours of another class in red.")


def _finetune_section(run: _Run) -> Section | None:
    ft = run.rd.finetune
    if ft is None or not len(ft):
        return None
    names = {}
    for _, r in run.summary[run.summary["family"] == "cnn"].iterrows():
        names.setdefault(model_of(r["feature"]), feature_name(r["feature"], r["weights"]))
    models = list(dict.fromkeys(ft["model"]))
    shown = ", ".join(names.get(m, m) for m in models)
    val = " dashed: validation;" if any(c.startswith("val_") for c in ft.columns) else ""
    s = Section("finetune", "Fine-tuning curves")
    return s.add("figure", _figure("finetune", plots.finetune_figure(ft, names, run.palette),
                                   f"Loss and accuracy per epoch of {len(models)} end-to-end CNN models "
                                   f"({shown}); bold: mean over splits;{val} thin: each split."))


def _counting_of(run: _Run) -> Section | None:
    counts, rmse = run.rd.analysis.get("counts"), run.rd.analysis.get("count_rmse")
    if counts is None and rmse is None:
        return None
    return _counting_section(counts, rmse)


def _failed_section(run: _Run) -> Section:
    failed = T.failed_cells(run.rd)
    s = Section("failed", "Failed cells")
    return s.add("table", failed) if len(failed) else s.add("note", "No cell failed.")


def _environment_section(run: _Run) -> Section:
    """Run facts, weights provenance and the analysis notes not already shown in their section."""
    s = Section("environment", "Run environment")
    rd = run.rd
    s.add("facts", T.header_facts(rd))
    w = T.weights_table(rd)
    if len(w):
        s.add("table", w)
    for n in _manifest_notes(rd):
        if n.startswith("t-SNE") and rd.analysis.get("tsne") is not None:
            continue  # the t-SNE section carries it
        s.add("note", n)
    return s


def _summary_table(run: _Run) -> T.Table | None:
    if not len(run.summary):
        return None
    ds = run.datasets[0] if run.multi else None
    return T.family_table(run.summary, ds, run.rd, _n_images(run.rd))


def _summary_panels(run: _Run, comps: list) -> list[FigureBlock]:
    """The two confusion matrices of summary.pdf (one figure each, titled by PDF text)."""
    if len(run.names) > T.MAX_CONFUSION_CLASSES:
        return []
    out = []
    for i, r in enumerate(SUM.panel_rows(comps, run.summary)):
        cm = T.confusion(run.rd, T.key_of(r))
        if cm is not None:
            png = plots.to_png(plots.confusion_grid([("", cm)], run.names, colorbar=False), tight=True)
            out.append(FigureBlock(f"summary-confusion-{i + 1}", png, SUM.panel_title(r), SUM.panel_title(r)))
    return out


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


def _ranks_block(s: Section, summary: pd.DataFrame, name: str, palette: Palette | None = None) -> None:
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
                                                           families=[fam.get(m) for m in fr.methods],
                                                           palette=palette),
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
        verdicts.append(f"{ds}: {T.verdict(comps[0] if comps else None, fams, unp)}")  # shown once, on top
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

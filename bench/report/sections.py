"""Report sections a reader expects besides the leaderboard (issue 12), from the run folder only.

:func:`add_sections` extends the sections :func:`bench.report.document.build_document`
assembled, by section id, so the two modules can change independently:

* ``leaderboard``: every row's score on every split (collapsible table);
* ``cost``: inference cost per image of every row, end-to-end CNN rows apart from
  their training time;
* ``classes``: per-class precision / recall / F1 / support of the best row of each
  family (out-of-fold predictions of the first repeat: support sums to the images);
* ``learning``: learning curves with the end-to-end CNN, x = number of training images
  (``analysis/learning_curves.csv`` and ``analysis/learning_curves_cnn.csv``);
* a new ``misclassified`` section: the best row's most confident mistakes with their
  thumbnails (``analysis/misclassified.json``, see :mod:`bench.mistakes`);
* a new ``reproduce`` section: bench version, git commit, the command that launched
  the run, a command that reruns it anywhere from the resolved config (shown), and
  the command that rebuilds this report.

New block kinds (:data:`KINDS`) are rendered by ``templates/_sections.html`` in HTML and
by :func:`pdf_block` in the PDF: ``details`` (a collapsible table or text), ``code``
(a command to copy), ``kv`` (name/value lines) and ``mistakes`` (thumbnail tiles).
"""
from __future__ import annotations

import logging
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from .. import __version__, mistakes
from ..aggregate import best_by_family, feature_display, fmt_pm
from ..provenance import command_text
from ..records import untagged
from . import plots
from . import tables as T
from .rundata import RunData

log = logging.getLogger(__name__)

KINDS = ("details", "code", "kv", "mistakes")
MAX_MISTAKES = 12


def _pct(x, spec: str = ".1f") -> T.Cell:
    if x is None or not np.isfinite(x):
        return T.Cell("-", None)
    return T.Cell(format(100 * float(x), spec), float(x))


def _ms(x, spec: str = ".2f") -> T.Cell:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return T.Cell("-", None)
    return T.Cell(format(float(x), spec), float(x))


def _own_dataset(rd: RunData) -> str | None:
    return rd.dataset.get("name") or (rd.datasets[0] if rd.datasets else None)


def _main_rows(rd: RunData, variants: bool = False) -> pd.DataFrame:
    s = rd.summary
    if not len(s):
        return s
    own = _own_dataset(rd)
    if own is not None and s["dataset"].nunique() > 1:
        s = s[s["dataset"] == own]
    return s if variants else s[s["variant"] == ""]


def _row_cells(r) -> list[T.Cell]:
    fam = r["family"]
    return [T.Cell(T.label_of(r), T.label_of(r).lower(), "warn" if T.is_random_init(r["weights"]) else ""),
            T.Cell(T.FAMILY_TITLES.get(fam, fam), fam, f"fam-{T.css_token(fam)}")]


# --------------------------------------------------------------------------- per fold
def _split_names(rd: RunData, splits: list[int]) -> dict[int, str]:
    folds = {int(f["split"]): f for f in (rd.splits.get("folds") or [])}
    repeats = {folds[s].get("repeat", 0) for s in splits if s in folds}
    out = {}
    for s in splits:
        f = folds.get(s, {})
        if T.is_predefined(rd):
            out[s] = f"Seed {f.get('seed', s)}"
        elif len(repeats) > 1:
            out[s] = f"R{f.get('repeat', 0)} F{f.get('fold', s)}"
        else:
            out[s] = f"Fold {f.get('fold', s)}"
    return out


def per_fold_table(rd: RunData, metric: str = "macro_f1") -> T.Table:
    """Every row (main and variants) against every split: the metric in percent; failed cells say so."""
    rows_df = _main_rows(rd, variants=True)
    splits = sorted({int(r["split"]) for r in rd.records if r.get("split") is not None})
    names = _split_names(rd, splits)
    rows, classes = [], []
    for _, r in rows_df.iterrows():
        cells = {int(c["split"]): c for c in rd.row_records(T.key_of(r))}
        out = _row_cells(r)
        for s in splits:
            c = cells.get(s)
            if c is None:
                out.append(T.Cell("-", None, "muted", "not run on this split"))
            elif c.get("status") != "ok":
                out.append(T.Cell("failed", -1.0, "failed", str(c.get("error") or "")))
            else:
                out.append(_pct(c.get(metric)))
        out.append(T.Cell(fmt_pm(r[f"{metric}_mean"], r[f"{metric}_std"]), T._sortval(r[f"{metric}_mean"])))
        rows.append(out)
        classes.append("variant" if r["variant"] else "")
    cols = ["Row", "Family"] + [names[s] for s in splits] + ["Mean ± std"]
    what = T.METRIC_NAMES.get(metric, metric)
    return T.Table("per-fold", cols, rows, set(range(2, len(cols))),
                   f"{what[0].upper() + what[1:]} (percent) of every row on every split, the numbers the "
                   "means, intervals and paired tests are computed from; '-' = not run on that split "
                   "(e.g. an end-to-end CNN trained on some folds only), failed = the cell failed.", classes)


# --------------------------------------------------------------------------- per class
def per_class_table(rd: RunData, row) -> T.Table | None:
    """Precision, recall, F1 and support per class of one row (pooled out-of-fold predictions of the
    first repeat); None without saved predictions."""
    pooled = rd.pooled(T.key_of(row))
    if pooled is None:
        return None
    yt, yp = pooled
    names = rd.class_names
    labels = np.arange(len(names))
    p, r, f, sup = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    rows = [[T.Cell(str(names[k]), str(names[k]).lower()), _pct(p[k]), _pct(r[k]), _pct(f[k]),
             T.Cell(str(int(sup[k])), int(sup[k]))] for k in labels]
    mp, mr, mf, _ = precision_recall_fscore_support(yt, yp, labels=labels, average="macro", zero_division=0)
    fam = T.FAMILY_TITLES.get(row["family"], row["family"])
    cap = (f"{fam}: {T.label_of(row)}. Out-of-fold predictions of the first repeat, each of the "
           f"{int(sup.sum())} images once. Macro average: precision {100 * mp:.1f}, recall {100 * mr:.1f}, "
           f"F1 {100 * mf:.1f}; support = images of the class.")
    return T.Table(f"per-class-{T.css_token(row['family'])}", ["Class", "Precision %", "Recall %", "F1 %",
                                                                "Support"], rows, {1, 2, 3, 4}, cap)


def per_class_blocks(rd: RunData) -> list:
    best = best_by_family(rd.summary, dataset=_own_dataset(rd)) if len(rd.summary) else {}
    out = []
    for i, row in enumerate(best.values()):
        t = per_class_table(rd, row)
        if t is None:
            continue
        fam = T.FAMILY_TITLES.get(row["family"], row["family"])
        summary = f"Precision, recall, F1 and support per class: {fam} ({T.label_of(row)})"
        out.append(("details", {"id": t.name, "summary": summary, "table": t,
                                "open": i < 2 and len(rd.class_names) <= 20}, ""))
    return out


# --------------------------------------------------------------------------- inference cost
def inference_table(rd: RunData) -> T.Table:
    """Per main row, means over its finished folds: extraction ms/image, prediction ms/image (the test
    fold's predict time / its images), their sum, and training seconds per fold."""
    rows = []
    for _, r in _main_rows(rd).iterrows():
        ok = [c for c in rd.row_records(T.key_of(r)) if c.get("status") == "ok"]
        pred = [1000.0 * c["predict_s"] / c["n_test"] for c in ok
                if c.get("predict_s") is not None and c.get("n_test")]
        ext = [c["extract_ms_per_image"] for c in ok if c.get("extract_ms_per_image") is not None]
        fit = [c["fit_s"] for c in ok if c.get("fit_s") is not None]
        end_to_end = r["family"] == "cnn"
        p = float(np.mean(pred)) if pred else None
        e = None if end_to_end or not ext else float(np.mean(ext))
        total = None if p is None or (e is None and not end_to_end) else p + (e or 0.0)
        rows.append(_row_cells(r) + [
            T.Cell("end-to-end", None, "muted", "no separate feature extraction") if end_to_end else _ms(e),
            _ms(p, ".3f"), _ms(total, ".2f"), _ms(float(np.mean(fit)) if fit else None, ".2f")])
    rows.sort(key=lambda c: (c[4].sort is None, c[4].sort if c[4].sort is not None else 0.0))
    return T.Table("inference", ["Row", "Family", "Features ms/img", "Predict ms/img", "Inference ms/img",
                                 "Training s/fold"], rows, {2, 3, 4, 5},
                   "Inference cost per test image, mean over folds, cheapest first: feature extraction "
                   "(measured when first computed) + prediction (the classifier's predict and class scores "
                   "on the test fold, fold-stage encoding included, divided by its images). End-to-end CNN "
                   "rows have no separate extraction: their cost is the trained network's batched forward "
                   "pass (after a warm-up; a TTA row pays every augmented copy). Training time is listed "
                   "apart and never counted in inference.")


# --------------------------------------------------------------------------- learning curves
def learning_frame(rd: RunData) -> pd.DataFrame | None:
    """Frozen-row and CNN learning-curve points (``status == ok``) in one frame, or None."""
    frames = []
    lc = rd.analysis.get("learning_curves")
    if lc is not None and len(lc):
        frames.append(lc.assign(source=lc["source"] if "source" in lc else "refit"))
    path = Path(rd.analysis.get("dir") or rd.run_dir / "analysis") / "learning_curves_cnn.csv"
    if path.exists():
        try:
            frames.append(pd.read_csv(path))
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", path, exc)
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    if "status" in df:
        df = df[df["status"] == "ok"]
    w = df["weights"].astype(object)  # pandas reads "n/a" as missing
    df = df.assign(weights=w.where(w.notna(), "n/a"), classifier=df["classifier"].astype(str))
    return df if len(df) else None


def _curve_points(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    g = df.groupby(["family", "feature", "classifier", "weights", "fraction"], sort=False)
    pts = g.agg(n_train=("n_train", "mean"), mean=(metric, "mean"), std=(metric, "std"),
                splits=("split", "nunique")).reset_index()
    return pts.sort_values(["family", "feature", "classifier", "n_train"], kind="mergesort")


def learning_figure(df: pd.DataFrame, metric: str = "macro_f1", metric_name: str = "Macro-F1"):
    """Score against the number of training images; CNN rows dashed."""
    import matplotlib as mpl
    pts = _curve_points(df, metric)
    with mpl.rc_context(plots.RC):
        fig = plots._fig(7.5, 4.2)
        ax = fig.add_subplot()
        for (fam, feat, clf, w), g in pts.groupby(["family", "feature", "classifier", "weights"], sort=False):
            x, m, sd = g["n_train"].to_numpy(float), 100 * g["mean"], 100 * g["std"].fillna(0)
            ax.plot(x, m, marker="o", ls="--" if fam == "cnn" else "-", color=plots.family_color(fam),
                    label=f"{T.FAMILY_TITLES.get(fam, fam)}: {plots._short(T.row_label(feat, clf, w), 44)}")
            ax.fill_between(x, m - sd, m + sd, color=plots.family_color(fam), alpha=0.15, linewidth=0)
        ax.set_xlabel("training images")
        ax.set_ylabel(f"{metric_name} on the test fold (%)")
        ax.set_xlim(left=0)
        ax.set_title("Learning curves: best row of each family", loc="left")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
    return fig


def _learning_caption(df: pd.DataFrame) -> str:
    frozen = df[df["family"] != "cnn"]
    cnn = df[df["family"] == "cnn"]
    parts = ["Macro-F1 on the full test fold against the number of training images."]
    if len(frozen):
        parts.append("Frozen-feature rows (solid): the best row of each family refitted on nested, "
                     f"stratified subsets of the training folds of {frozen['split'].nunique()} split(s), "
                     "mean ± std, with each classifier's configured parameters (no inner search).")
    if len(cnn):
        label = T.row_label(cnn["feature"].iloc[0], cnn["classifier"].iloc[0], cnn["weights"].iloc[0])
        n_re = int((cnn.get("source", pd.Series(dtype=str)) == "retrained").sum())
        parts.append(f"End-to-end CNN (dashed): {label}, retrained with its own recipe on {n_re} of the same "
                     f"subsets of split {', '.join(str(int(s)) for s in sorted(cnn['split'].unique()))}; the "
                     "rightmost point is its own record. Its training images include the part held out for "
                     "early stopping.")
    else:
        parts.append("No end-to-end CNN curve: the run has no finished CNN row, or its analysis predates "
                     "them.")
    return " ".join(parts)


def learning_blocks(rd: RunData, figure_type) -> list | None:
    """``(kind, value, caption)`` blocks of the learning-curve section; None when there is no curve."""
    df = learning_frame(rd)
    if df is None:
        return None
    fig = plots.to_png(learning_figure(df))
    pts = _curve_points(df, "macro_f1")
    rows = [[T.Cell(T.row_label(p.feature, p.classifier, p.weights)),
             T.Cell(T.FAMILY_TITLES.get(p.family, p.family), p.family, f"fam-{T.css_token(p.family)}"),
             T.Cell(f"{p.fraction:g}", float(p.fraction)), T.Cell(f"{p.n_train:.0f}", float(p.n_train)),
             T.Cell(fmt_pm(p.mean, p.std if p.splits > 1 else None), float(p.mean)),
             T.Cell(str(int(p.splits)), int(p.splits))] for p in pts.itertuples()]
    table = T.Table("learning-curves", ["Row", "Family", "Share of fold", "Training images", "Macro-F1 %",
                                        "Splits"], rows, {2, 3, 4, 5}, "The points of the learning curves.")
    return [("figure", figure_type("learning-curves", fig, _learning_caption(df),
                                     "Learning curves: macro-F1 against training images"), ""),
            ("details", {"id": "learning-curves", "summary": "Learning-curve points", "table": table,
                         "open": False}, "")]


# --------------------------------------------------------------------------- misclassified
def _mistake_items(rd: RunData) -> tuple[dict | None, str]:
    """(data, source): ``analysis/misclassified.json`` when present, else computed from predictions."""
    saved = rd.analysis.get("misclassified")
    if saved is None:
        path = Path(rd.analysis.get("dir") or rd.run_dir / "analysis") / mistakes.FILE
        if path.exists():
            import json
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", path, exc)
    if saved and saved.get("items") is not None:
        d = Path(rd.analysis.get("dir") or rd.run_dir / "analysis")
        for it in saved["items"]:
            p = d / it["thumb"] if it.get("thumb") else None
            it["png"] = p.read_bytes() if p is not None and p.is_file() else None
        return saved, "analysis"
    best = best_by_family(rd.summary, dataset=_own_dataset(rd)) if len(rd.summary) else {}
    row = mistakes.best_row(best)
    if row is None:
        return None, ""
    pooled = mistakes.pool(rd.row_predictions(T.key_of(row)), rd.main_splits())
    if pooled is None:
        return None, ""
    chosen, n_wrong = mistakes.select(pooled, MAX_MISTAKES)
    names, ids = rd.class_names, rd.dataset.get("ids") or []
    for it in chosen:
        it.update(id=str(ids[it["index"]]) if it["index"] < len(ids) else str(it["index"]),
                  true_name=names[it["true"]], pred_name=names[it["pred"]], png=None)
    data = {"row": {k: row[k] for k in ("dataset", "family", "feature", "classifier", "weights")},
            "n_tested": int(len(pooled["y_true"])), "n_mistakes": n_wrong,
            "has_proba": pooled["proba"] is not None, "items": chosen}
    data["row"]["label"] = feature_display(row["feature"], row["weights"])
    return data, "predictions"


def misclassified_section(rd: RunData, section_type):
    s = section_type("misclassified", "Misclassified examples")
    data, source = _mistake_items(rd)
    if data is None:
        return s.add("note", "No misclassified examples: no finished pretrained row with saved predictions.")
    row = data["row"]
    label = T.row_label(row["feature"], row["classifier"], row.get("weights"))
    fam = T.FAMILY_TITLES.get(row["family"], row["family"])
    if not data["items"]:
        return s.add("note", f"The best row, {label} ({fam}), misclassified none of its "
                             f"{data['n_tested']} test images.")
    how = ("most confident first (probability of the predicted class), taken in turn from each true class"
           if data.get("has_proba") else "in image order, taken in turn from each true class (no class "
                                         "probabilities were saved)")
    cap = (f"{len(data['items'])} of the {data['n_mistakes']} mistakes of the best row, {label} ({fam}), on "
           f"{data['n_tested']} out-of-fold test images (first repeat): {how}. Each tile shows the true "
           "class, the predicted class with its confidence and the probability given to the true class.")
    items = data["items"]
    if source == "analysis":
        fig_items = [{**it, "predictions": [{"family": row["family"], "pred": it["pred"],
                                             "pred_name": it["pred_name"], "confidence": it.get("confidence"),
                                             "correct": False}]} for it in items]
        png = plots.to_png(plots.gallery_figure(fig_items, Path(rd.analysis.get("dir") or ".")))
        return s.add("mistakes", {"items": items, "row": row, "png": png}, cap)
    s.add("note", "This run has no thumbnails of its mistakes (made at run time by the analysis); "
                  "the table lists them from the saved predictions.")
    rows = [[T.Cell(str(it["id"])), T.Cell(str(it["true_name"])), T.Cell(str(it["pred_name"])),
             _pct(it.get("confidence"), ".0f"), _pct(it.get("p_true"), ".0f"),
             T.Cell(str(it["split"]), it["split"])]
            for it in items]
    return s.add("table", T.Table("misclassified", ["Image", "True class", "Predicted", "Confidence %",
                                                    "P(true) %", "Split"], rows, {3, 4, 5}, cap))


# --------------------------------------------------------------------------- reproduce
def launched_command(env: dict) -> str | None:
    """The ``python -m bench ...`` command that started the run: from ``argv`` (recorded since issue 12)
    or, for older runs, the ``command`` string when it was bench's own command line."""
    argv = env.get("argv")
    if isinstance(argv, list) and argv:
        return command_text(argv)
    cmd = str(env.get("command") or "")
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    if len(words) >= 2 and words[0] == "python" and words[1:3] == ["-m", "bench"]:
        return cmd
    if words and (words[0].endswith("bench/__main__.py") or Path(words[0]).name == "bench"):
        return "python -m bench " + " ".join(words[1:])
    return None


def _git_text(git) -> str:
    if not isinstance(git, dict) or not git.get("commit"):
        return "not recorded (not run from a git checkout of bench, or run before bench recorded it)"
    text = str(git["commit"])
    if git.get("branch"):
        text += f" (branch {git['branch']})"
    if git.get("dirty"):
        text += "; the checkout had uncommitted changes: the commit alone does not reproduce the code"
    return text


def annotate_config(text: str, random_labels) -> str:
    """The config text with a YAML comment on each line naming a feature that ran with random-init
    weights (the file asked for ImageNet ones, or for none): the parsed config is unchanged."""
    labels = sorted({str(x) for x in random_labels}, key=len, reverse=True)
    if not labels:
        return text
    pat = re.compile(r"^(\s*(?:-\s+|label:\s*|-\s+label:\s*))['\"]?(" + "|".join(map(re.escape, labels))
                     + r")['\"]?\s*$")
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if pat.match(body):
            line = body + "  # ran with random-init weights: not pretrained" + line[len(body):]
        out.append(line)
    return "".join(out)


def reproduce_commands(rd: RunData) -> dict[str, str]:
    """``{"config": ..., "launched": ... (when known), "report": ...}``: commands to paste."""
    out_cfg = (rd.config or {}).get("output") or {}
    over = []
    if str(out_cfg.get("results_dir", "results")) != "results":
        over.append("output.results_dir=results")
    if str(out_cfg.get("reports_dir", "reports")) != "reports":
        over.append("output.reports_dir=reports")
    cmds = {"config": command_text(["run", "--config", "config.yaml", *over])}
    launched = launched_command(rd.env)
    if launched:
        cmds["launched"] = launched
    run_dir = Path(str(out_cfg.get("results_dir") or "results")) / rd.run_id
    cmds["report"] = command_text(["report", run_dir.as_posix()])
    return cmds


def reproduce_section(rd: RunData, section_type):
    s = section_type("reproduce", "Reproduce")
    env = rd.env
    pk = env.get("packages") or {}
    facts = [("bench", f"{pk.get('bench', 'version not recorded')} (this report: bench {__version__})"),
             ("Git commit", _git_text(env.get("git")))]
    commits = {str((x.get("git") or {}).get("commit")) for x in env.get("sessions") or [] if x.get("git")}
    if env.get("git") and commits - {str(env["git"].get("commit"))}:
        facts.append(("Sessions", f"the run was resumed {len(env['sessions'])} time(s) with other commits "
                                  f"({', '.join(sorted(c[:12] for c in commits))}): cells may come from "
                                  "different code"))
    facts.append(("Seed", str(env.get("seed", (rd.config or {}).get("seed", "?")))))
    s.add("kv", facts)
    cmds = reproduce_commands(rd)
    s.add("code", {"id": "rerun-config", "text": cmds["config"],
                   "label": "Rerun anywhere: save the configuration below as config.yaml in an empty "
                            "folder, then"},
          f"Results go to results/{rd.run_id} there (the run id follows from the configuration). Paths in "
          "the configuration (data, plugins) are read relative to that folder; the splits, seeds and "
          "every parameter are in it, so the per-fold scores come out the same.")
    if "launched" in cmds:
        s.add("code", {"id": "rerun-launched", "label": "The command that launched this run (from the folder "
                                                        "it was started in)", "text": cmds["launched"]})
    s.add("code", {"id": "report", "label": "Rebuild this report from the run folder",
                   "text": cmds["report"]})
    cfg_path = rd.run_dir / "config.yaml"
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except OSError:
        text = ""
    if text:
        rnd = [k for k, f in rd.features.items() if T.is_random_init(f.get("weights"))]
        rnd += [f for f, w in zip(rd.summary.get("feature", []), rd.summary.get("weights", []))
                if T.is_random_init(w)]
        shown = annotate_config(text, [untagged(x) for x in rnd])
        s.add("details", {"id": "config-yaml", "summary": f"Resolved configuration (config.yaml of "
                                                          f"{rd.run_id}, {len(text.splitlines())} lines)",
                          "code": shown, "open": False},
              "" if shown == text else "Verbatim, except for comments on the features that ran with "
                                       "random-init weights.")
    else:
        s.add("note", "config.yaml is missing from the run folder: no resolved configuration to show.")
    return s


# --------------------------------------------------------------------------- the hook
def add_sections(rd: RunData, sections: list, *, section_type, figure_type) -> None:
    """Extend ``sections`` (a run's report, by id) in place; see the module docstring.
    ``section_type`` / ``figure_type``: :class:`~bench.report.document.Section` and
    :class:`~bench.report.document.FigureBlock`."""
    by_id = {s.id: s for s in sections}
    has_rows = len(rd.summary) > 0
    if has_rows and "leaderboard" in by_id:
        t = per_fold_table(rd)
        by_id["leaderboard"].add("details", {
            "id": "per-fold", "summary": f"Per-fold scores ({len(t)} rows × {len(t.columns) - 3} splits)",
            "table": t, "open": False})
    if has_rows and "cost" in by_id:
        by_id["cost"].add("table", inference_table(rd))
    if has_rows and "classes" in by_id:
        for kind, value, caption in per_class_blocks(rd):
            by_id["classes"].add(kind, value, caption)
    blocks = learning_blocks(rd, figure_type) if "learning" in by_id else None
    if blocks is not None:  # otherwise the section keeps the document's note (why there is none)
        by_id["learning"].blocks = []
        for kind, value, caption in blocks:
            by_id["learning"].add(kind, value, caption)
    if has_rows:
        at = next((i + 1 for i, s in enumerate(sections) if s.id == "gallery"), len(sections))
        sections.insert(at, misclassified_section(rd, section_type))
    sections.append(reproduce_section(rd, section_type))


# --------------------------------------------------------------------------- PDF
def pdf_block(wr, b) -> None:
    """Draw one block of :data:`KINDS` with the PDF writer ``wr`` (:class:`bench.report.pdf._Writer`)."""
    v = b.value
    if b.kind == "details":
        if v.get("table") is not None:
            wr.table(v["table"])
        elif v.get("code"):
            wr.paragraph(v["summary"], size=9, weight="bold")
            wr.paragraph(f"In the run folder: {v['id'].replace('-yaml', '.yaml')}; shown in report.html.",
                         size=8.5, style="italic")
    elif b.kind == "code":
        wr.paragraph(v["label"] + ":", size=9)
        wr.paragraph(v["text"], size=9, weight="bold", indent=0.3)
        if b.caption:
            wr.paragraph(b.caption, size=8.5, style="italic")
    elif b.kind == "kv":
        wr.facts(v)
    elif b.kind == "mistakes":
        wr.image(v["png"], b.caption, name=b.kind)


__all__ = ["KINDS", "add_sections", "pdf_block", "per_fold_table", "per_class_table", "inference_table",
           "learning_frame", "learning_figure", "misclassified_section", "reproduce_section",
           "reproduce_commands", "launched_command"]

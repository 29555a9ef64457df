"""``summary.pdf``: ONE A4 portrait page a student can hand in.

From top to bottom: title and dataset (and the author, ``report.author``); the weights
warning when some rows are random-init; the verdict, naming its test; the methods line;
the best row of each family (mean ± std, 95% interval, paired p against the best row,
cost); the confusion matrices of the two rows the verdict compares, side by side, titled
in PDF text; three caveats; a "Contribution" box (empty for the student's own words, or
``report.contribution``); the run's protocol and hardware in the footer.

The page is laid out top-down for the text and bottom-up for the caveats and the box;
the confusion matrices take the height left between them, so the page never overflows
onto a second one. A compare/suite document (no family table, no panels) shows its top
rows and its key figure instead.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from matplotlib.backends.backend_pdf import PdfPages

from .document import Document, FigureBlock
from .pdf import ACCENT, BOTTOM, INK, LINE, MARGIN, MUTED, FIG_DPI, _pdf_meta, _png_array, _Writer, \
    draw_table, wrap
from .tables import Table

A4_PORTRAIT = (8.27, 11.69)
SUMMARY_COLUMNS = ["Family", "Best row", "Macro-F1 %", "p vs best row", "Cost s"]
TOP_COLUMNS = ["#", "Dataset", "Feature", "Classifier", "Macro-F1 %", "Accuracy %", "Extract ms/img"]
FOOT_FACTS = ("Protocol", "Hardware", "Started", "Seed", "Runs", "Datasets")
BOX_H = 1.35          # the empty Contribution box, inches
CONTRIBUTION_HINT = ("Your own words: what you did, chose and found. (Or fill it from the config: "
                     "report.author, report.contribution.)")


def _plain(t: Table) -> Table:
    """The table without secondary lines (intervals), for a compact top-rows table."""
    return Table(t.name, t.columns, [[replace(c, sub="") for c in r] for r in t.rows], t.numeric, "",
                 t.row_classes)


def _head(wr: _Writer, doc: Document) -> None:
    for ln in wrap(doc.title, wr.content_w, 15, True):
        wr.text(MARGIN, wr.y, ln, fontsize=15, fontweight="bold", color=ACCENT, va="top")
        wr.y -= 15 * 1.25 / 72
    sub = doc.subtitle + (f"  ·  {doc.author}" if doc.author else "")
    wr.y -= 0.04
    wr.text(MARGIN, wr.y, sub, fontsize=8.5, color=MUTED, va="top")
    wr.y -= 0.26
    if doc.banner:
        wr.banner(doc.banner, size=6.8)  # in full: which rows, why, how to supply the weights
    for v in doc.verdicts[:3]:
        wr.verdict(v, size=9.0)
    if len(doc.verdicts) > 3:
        wr.paragraph(f"... and {len(doc.verdicts) - 3} more verdicts in the full report.", size=7.5,
                     color=MUTED, style="italic")
    if doc.methods:
        wr.paragraph("Methods. " + doc.methods, size=7.5)


def _tables(wr: _Writer, doc: Document) -> None:
    t = doc.summary_table
    if t is not None and t.rows:
        title = "Best row of each family"
        t = t.select(SUMMARY_COLUMNS)
        note = ("Macro-F1: mean ± std over folds, 95% interval below; p vs best row: paired test against "
                "the best of these rows (corrected resampled t-test over folds); cost: extraction of all "
                "images + one fit, seconds.")
    elif doc.key_table is not None and doc.key_table.rows:
        title, t, note = "Top rows (mean ± std over folds, %)", _plain(doc.key_table.select(TOP_COLUMNS)), ""
    else:
        return
    wr.text(MARGIN, wr.y, title, fontsize=9.5, fontweight="bold", color=ACCENT, va="top")
    wr.y -= 0.22
    draw_table(wr, replace(t, caption=note), size=7.5, max_rows=10)


def _bottom_height(wr: _Writer, doc: Document, foot: list[str]) -> float:
    cav = sum(len(wrap(f"•  {c}", wr.content_w - 0.1, 8)) for c in doc.caveats) * 8 * LINE / 72
    box = BOX_H if not doc.contribution else \
        len(wrap(doc.contribution, wr.content_w - 0.3, 8.5)) * 8.5 * LINE / 72 + 0.5
    return 0.25 + cav + 0.15 + box + 0.15 + len(foot) * 7 * LINE / 72


def _bottom(wr: _Writer, doc: Document, foot: list[str], y: float) -> None:
    """Caveats, the Contribution box and the footer facts, from ``y`` down."""
    if doc.caveats:
        wr.text(MARGIN, y, "Caveats", fontsize=9.5, fontweight="bold", color=ACCENT, va="top")
        y -= 0.22
        for c in doc.caveats:
            for ln in wrap(f"•  {c}", wr.content_w - 0.1, 8):
                wr.text(MARGIN + 0.1, y, ln, fontsize=8, color=INK, va="top")
                y -= 8 * LINE / 72
        y -= 0.12
    lines = wrap(doc.contribution, wr.content_w - 0.3, 8.5) if doc.contribution else []
    h = BOX_H if not lines else len(lines) * 8.5 * LINE / 72 + 0.5
    wr.box(MARGIN, y - h, wr.content_w, h, facecolor="white", edgecolor="#7a8797", linewidth=0.8)
    wr.text(MARGIN + 0.12, y - 0.1, "Contribution" + (f" — {doc.author}" if doc.author else ""),
            fontsize=9.5, fontweight="bold", color=ACCENT, va="top")
    yy = y - 0.36
    for ln in lines or wrap(CONTRIBUTION_HINT, wr.content_w - 0.3, 7):
        wr.text(MARGIN + 0.15, yy, ln, fontsize=8.5 if lines else 7, color=INK if lines else "#9aa5b4",
                va="top", style="normal" if lines else "italic")
        yy -= (8.5 if lines else 7) * LINE / 72
    y -= h + 0.12
    for ln in foot:
        wr.text(MARGIN, y, ln, fontsize=7, color=MUTED, va="top")
        y -= 7 * LINE / 72


def _panels(wr: _Writer, panels: list[FigureBlock], y_top: float, y_bottom: float) -> None:
    """Figures side by side in the band [y_bottom, y_top], titles as text above each."""
    n = len(panels)
    if not n or y_top - y_bottom < 0.6:
        return
    gap = 0.3
    box_w = (wr.content_w - gap * (n - 1)) / n
    titles = [wrap(p.caption, box_w, 8, True) for p in panels]
    title_h = max(len(t) for t in titles) * 8 * LINE / 72 + 0.06
    box_h = y_top - y_bottom - title_h
    for k, (p, title) in enumerate(zip(panels, titles)):
        x = MARGIN + k * (box_w + gap)
        yy = y_top
        for ln in title:
            wr.text(x, yy, ln, fontsize=8, fontweight="bold", color=INK, va="top")
            yy -= 8 * LINE / 72
        arr = _png_array(p.png)
        h_px, w_px = arr.shape[:2]
        scale = min(box_w / (w_px / FIG_DPI), box_h / (h_px / FIG_DPI))
        w, h = w_px / FIG_DPI * scale, h_px / FIG_DPI * scale
        ax = wr.fig.add_axes([(x + (box_w - w) / 2) / wr.w, (y_top - title_h - h) / wr.h, w / wr.w, h / wr.h])
        ax.imshow(arr, interpolation="none", aspect="auto")
        ax.axis("off")
        wr.log.append((wr.page, "figure", p.name))


def write_summary(doc: Document, path: Path, key_figure: FigureBlock | None = None,
                  log: list | None = None) -> Path:
    """Exactly one A4 portrait page (see the module docstring)."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    with PdfPages(tmp, metadata=_pdf_meta(doc)) as pdf:
        wr = _Writer(pdf, doc, size=A4_PORTRAIT)
        wr.section = "One-page summary"
        wr.new_page()
        wr.single_page = True
        _head(wr, doc)
        _tables(wr, doc)
        foot = [ln for k, v in doc.facts if k in FOOT_FACTS for ln in wrap(f"{k}: {v}", wr.content_w, 7)]
        bottom_h = _bottom_height(wr, doc, foot)
        panels = list(doc.summary_panels)
        if not panels and (key_figure or doc.key_figure) is not None:
            panels = [key_figure or doc.key_figure]
        if panels:
            wr.text(MARGIN, wr.y, "Confusion matrices" if doc.summary_panels else "Key figure", fontsize=9.5,
                    fontweight="bold", color=ACCENT, va="top")
            _panels(wr, panels, wr.y - 0.24, BOTTOM + bottom_h + 0.1)
        _bottom(wr, doc, foot, BOTTOM + bottom_h)
        wr.flush()
        if log is not None:
            log.extend(wr.log)
    tmp.replace(path)
    return path


__all__ = ["write_summary", "SUMMARY_COLUMNS"]

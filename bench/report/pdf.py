"""PDF output with matplotlib only (no LaTeX, browser or system library needed).

* ``report.pdf``: the whole :class:`~bench.report.document.Document`, paginated on
  A4 landscape pages with a running header and page numbers. Text and tables are
  vector text; figures are the same PNGs as the HTML (150 dpi, embedded unresampled),
  sliced across pages when taller than a page so they stay legible.
* ``summary.pdf``: exactly one page - the verdict, the top rows and the key plot.

Both start with the weights banner (:func:`bench.report.tables.weights_banner`) when some
rows use random CNN weights.
"""
from __future__ import annotations

import io
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

from .. import __version__
from . import sections
from .document import Document, FigureBlock
from .tables import Table

W, H = 11.69, 8.27          # A4 landscape, inches
MARGIN = 0.55
TOP = H - 0.75              # first content line (below the running header)
BOTTOM = 0.6
CONTENT_W = W - 2 * MARGIN
ACCENT = "#1f4e79"
MUTED = "#5f6b7a"
CELL_COLORS = {"failed": "#c0392b", "error": "#c0392b", "warn": "#a04b00", "sig": "#1e7b34", "muted": MUTED}
FIG_DPI = 150
CHAR_W = 0.56               # average glyph width / font size (DejaVu Sans)
HEADING_H = 0.54


def _chars(width_in: float, size: float) -> int:
    return max(8, int(width_in * 72 / (size * CHAR_W)))


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"


def _png_array(png: bytes) -> np.ndarray:
    """uint8 RGB(A) pixels of a PNG (uint8 keeps imshow and the PDF encoder fast)."""
    from PIL import Image
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"))


class _Writer:
    """A cursor over A4 pages: headings, paragraphs, tables and images flow down the page."""

    def __init__(self, pdf: PdfPages, doc: Document):
        self.pdf, self.doc = pdf, doc
        self.fig: Figure | None = None
        self.page = 0
        self.y = TOP
        self.section = ""
        self.single_page = False  # summary.pdf: never start a second page (overflow is clipped)
        self.pending: str | None = None  # a heading kept with the first line of what follows it

    # -- pages
    def new_page(self) -> None:
        if self.single_page and self.fig is not None:
            return
        self.flush()
        self.page += 1
        fig = Figure(figsize=(W, H))
        FigureCanvasAgg(fig)
        fig.text(MARGIN / W, (H - 0.38) / H, _cut(self.doc.title, 110), fontsize=8, color=MUTED,
                 parse_math=False)
        fig.text(1 - MARGIN / W, (H - 0.38) / H, self.section, fontsize=8, color=MUTED, ha="right",
                 parse_math=False)
        fig.add_artist(Rectangle((MARGIN / W, (H - 0.48) / H), CONTENT_W / W, 0.6 / 72 / H,
                                 transform=fig.transFigure, color="#c9d1dc"))
        fig.text(0.5, 0.3 / H, f"{self.doc.subtitle}  ·  page {self.page}", fontsize=7.5, color=MUTED,
                 ha="center", parse_math=False)
        self.fig, self.y = fig, TOP

    def flush(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig.clear()
            self.fig = None

    def need(self, h: float) -> None:
        """Start a new page unless ``h`` inches fit (plus a pending heading, kept with its content)."""
        head = HEADING_H if self.pending else 0.0
        if self.fig is None or self.y - h - head < BOTTOM:
            self.new_page()
        if self.pending:
            title, self.pending = self.pending, None
            self.y -= 0.12
            self.text(MARGIN, self.y, title, fontsize=14, fontweight="bold", color=ACCENT, va="top")
            self.y -= HEADING_H - 0.12

    def text(self, x: float, y: float, s: str, **kw):
        kw.setdefault("parse_math", False)
        return self.fig.text(x / W, y / H, s, **kw)

    # -- flow elements
    def heading(self, title: str) -> None:
        """Queue a section heading; it is drawn with the first element that follows."""
        self.section = title
        self.pending = title

    def paragraph(self, s: str, size: float = 9.0, color: str = "#1d2330", weight: str = "normal",
                  style: str = "normal", indent: float = 0.0) -> None:
        lines = textwrap.wrap(str(s), _chars(CONTENT_W - indent, size)) or [""]
        lh = size * 1.45 / 72
        if len(lines) * lh < (TOP - BOTTOM) / 3:  # keep short paragraphs on one page
            self.need(len(lines) * lh)
        for ln in lines:
            self.need(lh)
            self.text(MARGIN + indent, self.y, ln, fontsize=size, color=color, fontweight=weight, style=style,
                      va="top")
            self.y -= lh
        self.y -= 0.06

    def verdict(self, s: str) -> None:
        size = 11.0
        lines = textwrap.wrap(s, _chars(CONTENT_W - 0.5, size))
        lh = size * 1.45 / 72
        h = len(lines) * lh + 0.22
        self.need(h + 0.1)
        self.fig.add_artist(FancyBboxPatch(((MARGIN) / W, (self.y - h) / H), CONTENT_W / W, h / H,
                                           boxstyle="square,pad=0", transform=self.fig.transFigure,
                                           facecolor="#eef4fb", edgecolor="none"))
        self.fig.add_artist(Rectangle((MARGIN / W, (self.y - h) / H), 0.06 / W, h / H,
                                      transform=self.fig.transFigure, color=ACCENT))
        yy = self.y - 0.11
        for ln in lines:
            self.text(MARGIN + 0.22, yy, ln, fontsize=size, fontweight="bold", color="#1d2330", va="top")
            yy -= lh
        self.y -= h + 0.15

    def banner(self, lines, size: float = 8.5, max_lines: int | None = None) -> None:
        """The weights warning: amber box, one paragraph per line (``max_lines`` wrapped
        lines at most, the rest cut with an ellipsis)."""
        wrapped = []
        for i, s in enumerate(lines):
            wrapped += [(ln, i == 0) for ln in textwrap.wrap(str(s), _chars(CONTENT_W - 0.5, size))]
        if max_lines is not None and len(wrapped) > max_lines:
            wrapped = wrapped[:max_lines]
            wrapped[-1] = (_cut(wrapped[-1][0], len(wrapped[-1][0]) - 2) + " …", wrapped[-1][1])
        lh = size * 1.4 / 72
        h = len(wrapped) * lh + 0.18
        self.need(h + 0.1)
        self.fig.add_artist(FancyBboxPatch((MARGIN / W, (self.y - h) / H), CONTENT_W / W, h / H,
                                           boxstyle="square,pad=0", transform=self.fig.transFigure,
                                           facecolor="#fff6e8", edgecolor="#e8c48f", linewidth=0.6))
        self.fig.add_artist(Rectangle((MARGIN / W, (self.y - h) / H), 0.07 / W, h / H,
                                      transform=self.fig.transFigure, color=CELL_COLORS["warn"]))
        yy = self.y - 0.09
        for ln, first in wrapped:
            self.text(MARGIN + 0.22, yy, ln, fontsize=size, color="#5a2d00",
                      fontweight="bold" if first else "normal", va="top")
            yy -= lh
        self.y -= h + 0.12

    def facts(self, facts) -> None:
        size = 8.5
        lh = size * 1.45 / 72
        for k, v in facts:
            lines = textwrap.wrap(str(v), _chars(CONTENT_W - 1.7, size)) or [""]
            self.need(lh * len(lines))
            self.text(MARGIN, self.y, str(k), fontsize=size, color=MUTED, fontweight="bold", va="top")
            for ln in lines:
                self.text(MARGIN + 1.7, self.y, ln, fontsize=size, va="top")
                self.y -= lh
        self.y -= 0.08

    def table(self, t: Table, size: float = 7.0) -> None:
        if not t.rows:
            return
        draw_table(self, t, size)

    def image(self, png: bytes, caption: str = "", split: bool = True) -> None:
        """Place a figure; a very tall one is sliced across pages unless ``split`` is False
        (then it is scaled down to fit one page)."""
        arr = _png_array(png)
        h_px, w_px = arr.shape[:2]
        w_in, h_in = w_px / FIG_DPI, h_px / FIG_DPI
        cap_lines = textwrap.wrap(caption, _chars(CONTENT_W, 7.5)) if caption else []
        cap_h = len(cap_lines) * 7.5 * 1.4 / 72 + (0.08 if cap_lines else 0)
        max_h = TOP - BOTTOM - cap_h - 0.1 - (HEADING_H if self.pending else 0.0)
        scale = min(1.0, CONTENT_W / w_in)
        if split and h_in * scale > max_h * 1.35 and h_in * scale > max_h:  # very tall: slice across pages
            rows_per_page = int(max_h / scale * FIG_DPI)
            start = 0
            while start < h_px:
                part = arr[start:start + rows_per_page]
                self._place(part, w_in * scale, part.shape[0] / FIG_DPI * scale,
                            cap_lines if start + rows_per_page >= h_px else [], cap_h)
                start += rows_per_page
            return
        if h_in * scale > max_h:
            scale = max_h / h_in
        self._place(arr, w_in * scale, h_in * scale, cap_lines, cap_h)

    def _place(self, arr, w: float, h: float, cap_lines, cap_h: float) -> None:
        self.need(h + cap_h + 0.05)
        x0 = MARGIN + (CONTENT_W - w) / 2
        ax = self.fig.add_axes([x0 / W, (self.y - h) / H, w / W, h / H])
        ax.imshow(arr, interpolation="none", aspect="auto")
        ax.axis("off")
        self.y -= h + 0.08
        for ln in cap_lines:
            self.text(MARGIN, self.y, ln, fontsize=7.5, color=MUTED, va="top", style="italic")
            self.y -= 7.5 * 1.4 / 72
        self.y -= 0.12


def _column_widths(t: Table, total: float, size: float) -> list[float]:
    cw = size * CHAR_W / 72
    natural = []
    for j, c in enumerate(t.columns):
        longest = max([len(str(c))] + [len(r[j].full) for r in t.rows])
        dot = 0.12 if any("fam-" in r[j].cls for r in t.rows) else 0.0
        natural.append((min(longest, 70) + 1) * cw + 0.16 + dot)
    s = sum(natural)
    if s <= total:
        return natural
    # shrink the widest columns first, never below their header or 6 characters
    floor = [max(min(len(str(c)), 14), 6) * cw + 0.16 for c in t.columns]
    widths = natural[:]
    while sum(widths) > total:
        j = int(np.argmax([w - f for w, f in zip(widths, floor)]))
        if widths[j] <= floor[j] + 1e-6:
            scale = total / sum(widths)
            return [w * scale for w in widths]
        widths[j] = max(floor[j], widths[j] - (sum(widths) - total))
    return widths


def draw_table(wr: _Writer, t: Table, size: float = 7.0, width: float = CONTENT_W,
               max_rows: int | None = None) -> None:
    """Draw a :class:`Table` at the writer's cursor, continued on new pages with its header."""
    from .plots import FAMILY_COLORS, OTHER_COLOR
    rh = size * 1.75 / 72
    widths = _column_widths(t, width, size)
    xs = np.cumsum([MARGIN] + widths)
    cw = size * CHAR_W / 72
    rows = t.rows if max_rows is None else t.rows[:max_rows]

    def header():
        wr.fig.add_artist(Rectangle((MARGIN / W, (wr.y - rh) / H), sum(widths) / W, rh / H,
                                    transform=wr.fig.transFigure, color="#e6eaf0"))
        for j, c in enumerate(t.columns):
            right = j in t.numeric
            x = xs[j + 1] - 0.08 if right else xs[j] + 0.08
            wr.text(x, wr.y - rh / 2, _cut(str(c), int(round((widths[j] - 0.16) / cw))), fontsize=size,
                    fontweight="bold", va="center", ha="right" if right else "left")
        wr.y -= rh

    wr.need(rh * min(len(rows) + 1, 4))
    header()
    for i, row in enumerate(rows):
        if wr.y - rh < BOTTOM:
            wr.new_page()
            header()
        rc = t.row_classes[i] if i < len(t.row_classes) else ""
        if i % 2 or "variant" in rc or "failed-row" in rc:
            color = "#fff4e5" if "variant" in rc else ("#fdf0ef" if "failed-row" in rc else "#f6f8fa")
            wr.fig.add_artist(Rectangle((MARGIN / W, (wr.y - rh) / H), sum(widths) / W, rh / H,
                                        transform=wr.fig.transFigure, color=color))
        for j, cell in enumerate(row):
            right = j in t.numeric
            color = "#1d2330"
            for k, v in CELL_COLORS.items():
                if k in cell.cls.split():
                    color = v
            fam = next((c[4:] for c in cell.cls.split() if c.startswith("fam-")), None)
            x = xs[j + 1] - 0.08 if right else xs[j] + 0.08
            avail = widths[j] - 0.16
            if fam is not None:
                wr.fig.add_artist(Circle(((x + 0.04) / W, (wr.y - rh / 2) / H), 0.035 / W,
                                         transform=wr.fig.transFigure,
                                         color=FAMILY_COLORS.get(fam, OTHER_COLOR)))
                x += 0.12
                avail -= 0.12
            wr.text(x, wr.y - rh / 2, _cut(cell.full, int(round(avail / cw))), fontsize=size, color=color,
                    va="center", ha="right" if right else "left",
                    fontweight="bold" if "sig" in cell.cls.split() else "normal")
        wr.y -= rh
    wr.fig.add_artist(Rectangle((MARGIN / W, wr.y / H), sum(widths) / W, 0.5 / 72 / H,
                                transform=wr.fig.transFigure, color="#9aa5b4"))
    wr.y -= 0.08
    if t.caption:
        for ln in textwrap.wrap(t.caption, _chars(width, 7)):
            wr.need(0.15)
            wr.text(MARGIN, wr.y, ln, fontsize=7, color=MUTED, va="top", style="italic")
            wr.y -= 7 * 1.4 / 72
    wr.y -= 0.18


def _pdf_meta(doc: Document) -> dict:
    return {"Title": doc.title, "Subject": doc.subtitle, "Creator": f"bench {__version__}",
            "CreationDate": datetime.now(timezone.utc)}


def write_report(doc: Document, path: Path) -> Path:
    """The full paginated report."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    with PdfPages(tmp, metadata=_pdf_meta(doc)) as pdf:
        wr = _Writer(pdf, doc)
        wr.section = "Summary"
        wr.new_page()
        wr.text(MARGIN, wr.y, doc.title, fontsize=20, fontweight="bold", color=ACCENT, va="top")
        wr.y -= 0.45
        wr.text(MARGIN, wr.y, doc.subtitle, fontsize=10, color=MUTED, va="top")
        wr.y -= 0.35
        if doc.banner:
            wr.banner(doc.banner)
        for v in doc.verdicts:
            wr.verdict(v)
        wr.facts(doc.facts)
        if doc.key_table is not None:
            wr.table(doc.key_table)
        for s in doc.sections:
            wr.heading(s.title)
            for b in s.blocks:
                if b.kind == "table":
                    wr.table(b.value)
                elif b.kind == "figure":
                    wr.image(b.value.png, b.value.caption)
                elif b.kind == "explain":
                    wr.image(b.value.png, b.value.caption, split=False)
                elif b.kind == "text":
                    wr.paragraph(b.value, size=9.5, weight="bold")
                elif b.kind == "note":
                    wr.paragraph(b.value, size=8.5, color=MUTED, style="italic")
                elif b.kind == "facts":
                    wr.facts(b.value)
                    if doc.packages:
                        wr.paragraph("Packages: " + doc.packages, size=7.5, color=MUTED)
                elif b.kind in ("gallery", "retrieval"):
                    wr.image(b.value["png"], b.caption)
                elif b.kind in sections.KINDS:
                    sections.pdf_block(wr, b)
                elif b.kind == "links":
                    for label, href in b.value:
                        wr.paragraph(f"{label}: {href}", size=9)
                    if b.caption:
                        wr.paragraph(b.caption, size=8.5, color=MUTED, style="italic")
        wr.flush()
    tmp.replace(path)
    return path


SUMMARY_COLUMNS = ["#", "Dataset", "Feature", "Classifier", "Macro-F1 %", "Accuracy %", "Extract ms/img"]
SUMMARY_FACTS = ("Protocol", "Images / classes", "Hardware", "Started", "Seed", "Runs", "Datasets")


def _plain(t: Table) -> Table:
    """The table without secondary lines (intervals), for the compact summary page."""
    from dataclasses import replace
    return Table(t.name, t.columns, [[replace(c, sub="") for c in r] for r in t.rows], t.numeric, "",
                 t.row_classes)


def write_summary(doc: Document, path: Path, key_figure: FigureBlock | None = None) -> Path:
    """Exactly one page: title, verdict, top rows, best of each family, the key plot, run facts."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    key_figure = key_figure or doc.key_figure
    with PdfPages(tmp, metadata=_pdf_meta(doc)) as pdf:
        wr = _Writer(pdf, doc)
        wr.section = "One-page summary"
        wr.new_page()
        wr.single_page = True
        wr.text(MARGIN, wr.y, doc.title, fontsize=17, fontweight="bold", color=ACCENT, va="top")
        wr.y -= 0.38
        wr.text(MARGIN, wr.y, doc.subtitle, fontsize=9, color=MUTED, va="top")
        wr.y -= 0.28
        if doc.banner:
            wr.banner(doc.banner, size=7.5, max_lines=7)
        for v in doc.verdicts[:3]:
            wr.verdict(v)
        if len(doc.verdicts) > 3:
            wr.text(MARGIN, wr.y + 0.05, f"... and {len(doc.verdicts) - 3} more verdicts in the full report.",
                    fontsize=8, color=MUTED, va="top", style="italic")
            wr.y -= 0.2
        y_top = wr.y
        facts = [f"{k}: {v}" for k, v in doc.facts if k in SUMMARY_FACTS]
        facts_h = 0.16 * len(facts) + 0.1
        left_w = CONTENT_W * 0.52
        if doc.key_table is not None and doc.key_table.rows:
            wr.text(MARGIN, wr.y, "Top rows (mean ± std over folds, %)", fontsize=9.5, fontweight="bold",
                    color=ACCENT, va="top")
            wr.y -= 0.25
            draw_table(wr, _plain(doc.key_table.select(SUMMARY_COLUMNS)), size=7.5, width=left_w, max_rows=10)
        fam = doc.table("families") if doc.kind == "report" else None
        if fam is not None and fam.rows and wr.y - 0.25 - 0.2 * (len(fam.rows) + 1) > BOTTOM + facts_h:
            wr.text(MARGIN, wr.y, "Best of each family", fontsize=9.5, fontweight="bold", color=ACCENT,
                    va="top")
            wr.y -= 0.25
            draw_table(wr, _plain(fam.select(["Family", "Best row", "Macro-F1 %", "Δ macro-F1 vs "
                                                                                  "hand-crafted (points)"])),
                       size=7.5, width=left_w, max_rows=6)
        if key_figure is not None:
            arr = _png_array(key_figure.png)
            h_px, w_px = arr.shape[:2]
            box_w, box_h = CONTENT_W - left_w - 0.3, y_top - BOTTOM - facts_h - 0.1
            scale = min(box_w / (w_px / FIG_DPI), box_h / (h_px / FIG_DPI))
            w, h = w_px / FIG_DPI * scale, h_px / FIG_DPI * scale
            x0 = MARGIN + left_w + 0.3 + (box_w - w) / 2
            ax = wr.fig.add_axes([x0 / W, (y_top - h) / H, w / W, h / H])
            ax.imshow(arr, interpolation="none", aspect="auto")
            ax.axis("off")
        yy = BOTTOM + facts_h
        for ln in facts:
            wr.text(MARGIN, yy, _cut(ln, _chars(CONTENT_W, 7.5)), fontsize=7.5, color=MUTED, va="top")
            yy -= 0.16
        wr.flush()
    tmp.replace(path)
    return path

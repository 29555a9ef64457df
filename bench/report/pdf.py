"""PDF output with matplotlib only (no LaTeX, browser or system library needed).

* ``report.pdf``: the whole :class:`~bench.report.document.Document`, paginated on
  A4 landscape pages with a running header and page numbers. Text and tables are
  vector text; figures are the same PNGs as the HTML (150 dpi, embedded unresampled).
* ``summary.pdf``: exactly one A4 portrait page to hand in (:mod:`.summary_pdf`, with this
  module's writer).

Layout rules, both files:

* no text is cut: every string is measured with the font it is drawn in and wrapped
  (table cells too; a row grows as tall as its tallest cell);
* a figure is never split: it goes whole onto one page with its caption, scaled down
  when taller than a page;
* a heading is drawn together with the start of what follows it (a table's header and
  first rows, a figure, a short paragraph), so it never ends a page alone; a table's
  caption stays with its last row.

Both start with the weights banner (:func:`bench.report.tables.weights_banner`) when some
rows use random CNN weights.
"""
from __future__ import annotations

import io
import re
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

from .. import __version__
from . import sections
from .document import Document
from .tables import Table

W, H = 11.69, 8.27          # A4 landscape, inches
MARGIN = 0.55
TOP = H - 0.75              # first content line (below the running header)
BOTTOM = 0.6
CONTENT_W = W - 2 * MARGIN
ACCENT = "#1f4e79"
MUTED = "#5f6b7a"
INK = "#1d2330"
CELL_COLORS = {"failed": "#c0392b", "error": "#c0392b", "warn": "#a04b00", "sig": "#1e7b34", "muted": MUTED}
FIG_DPI = 150
HEADING_H = 0.54
PAD = 0.07                  # cell padding, inches
LINE = 1.32                 # line height / font size
_RENDERER = RendererAgg(8, 8, 72)


# --------------------------------------------------------------------------- text measure
@lru_cache(maxsize=50_000)
def text_width(s: str, size: float, bold: bool = False) -> float:
    """Width in inches of ``s`` drawn in DejaVu Sans at ``size`` points."""
    if not s:
        return 0.0
    fp = FontProperties(family="DejaVu Sans", size=size, weight="bold" if bold else "normal")
    w, _, _ = _RENDERER.get_text_width_height_descent(s, fp, ismath=False)
    return w / 72.0


def _split_word(word: str, width: float, size: float, bold: bool) -> list[str]:
    """A word wider than ``width``: broken after - + _ / , . = : when possible, else between
    characters (last resort); the pieces joined give the word back."""
    atoms = []
    for p in (p for p in re.split(r"(?<=[-+_/,.=:])", word) if p):
        while len(p) > 1 and text_width(p, size, bold) > width:
            k = len(p) - 1
            while k > 1 and text_width(p[:k], size, bold) > width:
                k -= 1
            atoms.append(p[:k])
            p = p[k:]
        atoms.append(p)
    out, cur = [], ""
    for a in atoms:
        if cur and text_width(cur + a, size, bold) > width:
            out.append(cur)
            cur = a
        else:
            cur += a
    return out + ([cur] if cur else [])


def wrap(text, width: float, size: float, bold: bool = False) -> list[str]:
    """Lines of ``text`` no wider than ``width`` inches; every character is kept."""
    lines = []
    for para in str(text).split("\n"):
        cur = ""
        for word in para.split(" "):
            cand = f"{cur} {word}" if cur else word
            if text_width(cand, size, bold) <= width:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            if text_width(word, size, bold) <= width:
                cur = word
            else:
                parts = _split_word(word, width, size, bold)
                lines += parts[:-1]
                cur = parts[-1] if parts else ""
        lines.append(cur)
    return lines or [""]


def _fit_size(text: str, width: float, size: float, bold: bool = False, floor: float = 5.0) -> float:
    """The largest font size <= ``size`` at which ``text`` fits on one line of ``width``."""
    while size > floor and text_width(text, size, bold) > width:
        size -= 0.25
    return size


def _png_array(png: bytes) -> np.ndarray:
    """uint8 RGB(A) pixels of a PNG (uint8 keeps imshow and the PDF encoder fast)."""
    from PIL import Image
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"))


# --------------------------------------------------------------------------- the page cursor
class _Writer:
    """A cursor over pages: headings, paragraphs, tables and images flow down the page."""

    def __init__(self, pdf: PdfPages, doc: Document, size=(W, H)):
        self.pdf, self.doc = pdf, doc
        self.w, self.h = size
        self.top, self.content_w = self.h - 0.75, self.w - 2 * MARGIN
        self.fig: Figure | None = None
        self.page = 0
        self.y = self.top
        self.section = ""
        self.single_page = False  # summary.pdf: never start a second page
        self.pending: str | None = None  # a heading kept with the first lines of what follows it
        self.log: list[tuple[int, str, str]] = []  # (page, kind, what): headings and figures placed

    # -- pages
    def new_page(self) -> None:
        if self.single_page and self.fig is not None:
            return
        self.flush()
        self.page += 1
        fig = Figure(figsize=(self.w, self.h))
        FigureCanvasAgg(fig)
        self.fig, self.y = fig, self.top
        head_w = self.content_w * 0.62
        self.text(MARGIN, self.h - 0.38, self.doc.title, fontsize=_fit_size(self.doc.title, head_w, 8),
                  color=MUTED)
        self.text(self.w - MARGIN, self.h - 0.38, self.section, color=MUTED, ha="right",
                  fontsize=_fit_size(self.section, self.content_w - head_w - 0.2, 8))
        fig.add_artist(Rectangle((MARGIN / self.w, (self.h - 0.48) / self.h), self.content_w / self.w,
                                 0.6 / 72 / self.h, transform=fig.transFigure, color="#c9d1dc"))
        fig.text(0.5, 0.3 / self.h, f"{self.doc.subtitle}  ·  page {self.page}", fontsize=7.5, color=MUTED,
                 ha="center", parse_math=False)

    def flush(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig.clear()
            self.fig = None

    @property
    def page_h(self) -> float:
        """Usable height of a fresh page."""
        return self.top - BOTTOM

    def need(self, h: float) -> None:
        """Start a new page unless ``h`` inches fit (plus a pending heading, kept with its content)."""
        head = HEADING_H if self.pending else 0.0
        if self.fig is None or self.y - h - head < BOTTOM:
            self.new_page()
        if self.pending:
            title, self.pending = self.pending, None
            self.y -= 0.12
            self.text(MARGIN, self.y, title, fontsize=14, fontweight="bold", color=ACCENT, va="top")
            self.log.append((self.page, "heading", title))
            self.y -= HEADING_H - 0.12

    def text(self, x: float, y: float, s: str, **kw):
        kw.setdefault("parse_math", False)
        return self.fig.text(x / self.w, y / self.h, s, **kw)

    def box(self, x, y, w, h, **kw):
        self.fig.add_artist(FancyBboxPatch((x / self.w, y / self.h), w / self.w, h / self.h,
                                           boxstyle="square,pad=0", transform=self.fig.transFigure, **kw))

    def bar(self, x, y, w, h, color):
        self.fig.add_artist(Rectangle((x / self.w, y / self.h), w / self.w, h / self.h,
                                      transform=self.fig.transFigure, color=color))

    # -- flow elements
    def heading(self, title: str) -> None:
        """Queue a section heading; it is drawn with the first element that follows."""
        self.section = title
        self.pending = title

    def paragraph(self, s: str, size: float = 9.0, color: str = INK, weight: str = "normal",
                  style: str = "normal", indent: float = 0.0) -> None:
        lines = wrap(s, self.content_w - indent, size, weight == "bold")
        lh = size * LINE / 72
        if len(lines) * lh < self.page_h / 3:  # keep short paragraphs on one page
            self.need(len(lines) * lh)
        elif self.pending:
            self.need(3 * lh)
        for k, ln in enumerate(lines):
            self.need(lh)
            if k == 0:
                self.log.append((self.page, "text", ln[:40]))
            self.text(MARGIN + indent, self.y, ln, fontsize=size, color=color, fontweight=weight, style=style,
                      va="top")
            self.y -= lh
        self.y -= 0.06

    def verdict(self, s: str, size: float = 11.0) -> None:
        lines = wrap(s, self.content_w - 0.4, size, True)
        lh = size * LINE / 72
        h = len(lines) * lh + 0.22
        self.need(h + 0.1)
        self.box(MARGIN, self.y - h, self.content_w, h, facecolor="#eef4fb", edgecolor="none")
        self.bar(MARGIN, self.y - h, 0.06, h, ACCENT)
        yy = self.y - 0.11
        for ln in lines:
            self.text(MARGIN + 0.22, yy, ln, fontsize=size, fontweight="bold", color=INK, va="top")
            yy -= lh
        self.y -= h + 0.15

    def banner(self, lines, size: float = 8.5) -> None:
        """The weights warning: amber box, one paragraph per line."""
        wrapped = []
        for i, s in enumerate(lines):
            wrapped += [(ln, i == 0) for ln in wrap(s, self.content_w - 0.4, size, i == 0)]
        lh = size * 1.4 / 72
        h = len(wrapped) * lh + 0.18
        self.need(h + 0.1)
        self.box(MARGIN, self.y - h, self.content_w, h, facecolor="#fff6e8", edgecolor="#e8c48f",
                 linewidth=0.6)
        self.bar(MARGIN, self.y - h, 0.07, h, CELL_COLORS["warn"])
        yy = self.y - 0.09
        for ln, first in wrapped:
            self.text(MARGIN + 0.22, yy, ln, fontsize=size, color="#5a2d00",
                      fontweight="bold" if first else "normal", va="top")
            yy -= lh
        self.y -= h + 0.12

    def facts(self, facts, size: float = 8.5, key_w: float = 1.7) -> None:
        lh = size * 1.45 / 72
        for i, (k, v) in enumerate(facts):
            lines = wrap(v, self.content_w - key_w, size)
            self.need(lh * len(lines))
            if i == 0:
                self.log.append((self.page, "facts", str(k)))
            self.text(MARGIN, self.y, str(k), fontsize=_fit_size(str(k), key_w - 0.1, size, True),
                      color=MUTED, fontweight="bold", va="top")
            for ln in lines:
                self.text(MARGIN + key_w, self.y, ln, fontsize=size, va="top")
                self.y -= lh
        self.y -= 0.08

    def table(self, t: Table, size: float = 7.0) -> None:
        if t.rows:
            draw_table(self, t, size)

    def image(self, png: bytes, caption: str = "", split: bool = False, name: str = "") -> None:
        """Place a figure whole on one page with its caption, scaled down when taller than a
        page (``split`` is accepted for older callers and ignored: figures are never split)."""
        arr = _png_array(png)
        h_px, w_px = arr.shape[:2]
        w_in, h_in = w_px / FIG_DPI, h_px / FIG_DPI
        size = 7.5
        cap_lines = wrap(caption, self.content_w, size) if caption else []
        cap_h = len(cap_lines) * size * LINE / 72 + (0.08 if cap_lines else 0)
        max_h = self.page_h - cap_h - 0.1 - (HEADING_H if self.pending else 0.0)
        scale = min(1.0, self.content_w / w_in, max_h / h_in)
        w, h = w_in * scale, h_in * scale
        self.need(h + cap_h + 0.05)
        x0 = MARGIN + (self.content_w - w) / 2
        ax = self.fig.add_axes([x0 / self.w, (self.y - h) / self.h, w / self.w, h / self.h])
        ax.imshow(arr, interpolation="none", aspect="auto")
        ax.axis("off")
        self.log.append((self.page, "figure", name or caption[:40]))
        self.y -= h + 0.08
        for ln in cap_lines:
            self.text(MARGIN, self.y, ln, fontsize=size, color=MUTED, va="top", style="italic")
            self.y -= size * LINE / 72
        self.y -= 0.12


# --------------------------------------------------------------------------- tables
def _cell_lines(cell, width: float, size: float) -> list[tuple[str, bool]]:
    """(line, is_sub) of a cell wrapped to ``width``: its text, then its secondary line."""
    bold = "sig" in cell.cls.split()
    out = [(ln, False) for ln in wrap(cell.text, width, size, bold)]
    if cell.sub:
        out += [(ln, True) for ln in wrap(cell.sub, width, size - 1)]
    return out


def _longest_word(text: str, size: float, bold: bool = False) -> float:
    words = [p for w in str(text).split() for p in re.split(r"(?<=[-+_/])", w) if p]
    return max((text_width(w, size, bold) for w in words), default=0.0)


def column_widths(t: Table, total: float, size: float) -> list[float] | None:
    """Widths that fit ``total``: each column gets at least its longest word (numbers: the
    whole value), the rest goes to the columns whose text is longer, in proportion. None
    when even the longest words do not fit (the caller then uses a smaller font)."""
    lo, hi = [], []
    for j, c in enumerate(t.columns):
        dot = 0.12 if any("fam-" in r[j].cls for r in t.rows) else 0.0
        cells = [r[j] for r in t.rows]
        full = max([text_width(x.text, size) for x in cells] + [text_width(x.sub, size - 1) for x in cells])
        words = full if j in t.numeric else max(
            [_longest_word(x.text, size) for x in cells] + [_longest_word(x.sub, size - 1) for x in cells])
        head_full, head_word = text_width(str(c), size, True), _longest_word(str(c), size, True)
        lo.append(max(words, head_word, 0.25) + 2 * PAD + dot)
        hi.append(max(full, head_full, 0.25) + 2 * PAD + dot)
    if sum(hi) <= total:
        return hi
    if sum(lo) > total:
        return None
    spare = total - sum(lo)
    give = [h - l for h, l in zip(hi, lo)]
    return [l + spare * g / sum(give) for l, g in zip(lo, give)]


def _fitted(t: Table, width: float, size: float) -> tuple[list[float], float]:
    s = size
    while s > 4.5:
        widths = column_widths(t, width, s)
        if widths is not None:
            return widths, s
        s -= 0.5
    n = len(t.columns)  # nothing fits: equal columns, words broken between characters (never cut)
    return [width / n] * n, 4.5


def draw_table(wr: _Writer, t: Table, size: float = 7.0, width: float | None = None,
               max_rows: int | None = None, caption: bool = True) -> None:
    """Draw a :class:`Table` at the writer's cursor, continued on new pages with its header."""
    from .labels import FAMILY_COLORS, OTHER_COLOR
    width = wr.content_w if width is None else width
    widths, size = _fitted(t, width, size)
    xs = np.cumsum([MARGIN] + widths)
    lh = size * LINE / 72
    rows = t.rows if max_rows is None else t.rows[:max_rows]
    heads = [wrap(str(c), w - 2 * PAD, size, True) for c, w in zip(t.columns, widths)]
    head_h = max(len(h) for h in heads) * lh + 2 * PAD
    laid = []
    for row in rows:
        lines = []
        for j, cell in enumerate(row):
            dot = 0.12 if any(c.startswith("fam-") for c in cell.cls.split()) else 0.0
            lines.append(_cell_lines(cell, widths[j] - 2 * PAD - dot, size))
        laid.append((lines, max(len(x) for x in lines) * lh + 2 * PAD))
    cap_lines = wrap(t.caption, width, 7) if (caption and t.caption) else []
    cap_h = len(cap_lines) * 7 * LINE / 72 + 0.1

    def header():
        wr.bar(MARGIN, wr.y - head_h, sum(widths), head_h, "#e6eaf0")
        for j, lines in enumerate(heads):
            right = j in t.numeric
            x = xs[j + 1] - PAD if right else xs[j] + PAD
            yy = wr.y - head_h + PAD + (len(lines) - 1) * lh  # bottom-aligned, like the HTML
            for ln in lines:
                wr.text(x, yy, ln, fontsize=size, fontweight="bold", va="bottom",
                        ha="right" if right else "left")
                yy -= lh
        wr.y -= head_h

    first = head_h + sum(h for _, h in laid[:3]) + (cap_h if len(laid) <= 3 else 0)
    wr.need(min(first, wr.page_h - 0.2))
    wr.log.append((wr.page, "table", t.name))
    header()
    for i, (row, (lines, rh)) in enumerate(zip(rows, laid)):
        last = i == len(rows) - 1
        if wr.y - rh - (cap_h if last else 0) < BOTTOM:
            wr.new_page()
            header()
        _draw_row(wr, t, i, row, lines, rh, xs, widths, size, FAMILY_COLORS, OTHER_COLOR)
    wr.bar(MARGIN, wr.y, sum(widths), 0.5 / 72, "#9aa5b4")
    wr.y -= 0.08
    for ln in cap_lines:
        wr.text(MARGIN, wr.y, ln, fontsize=7, color=MUTED, va="top", style="italic")
        wr.y -= 7 * LINE / 72
    wr.y -= 0.12


def _draw_row(wr, t, i, row, lines, rh, xs, widths, size, fam_colors, other) -> None:
    rc = t.row_classes[i] if i < len(t.row_classes) else ""
    if i % 2 or "variant" in rc or "failed-row" in rc:
        color = "#fff4e5" if "variant" in rc else ("#fdf0ef" if "failed-row" in rc else "#f6f8fa")
        wr.bar(MARGIN, wr.y - rh, sum(widths), rh, color)
    lh = size * LINE / 72
    for j, cell in enumerate(row):
        right = j in t.numeric
        color = INK
        for k, v in CELL_COLORS.items():
            if k in cell.cls.split():
                color = v
        fam = next((c[4:] for c in cell.cls.split() if c.startswith("fam-")), None)
        x = xs[j + 1] - PAD if right else xs[j] + PAD
        if fam is not None:
            wr.fig.add_artist(Circle(((x + 0.04) / wr.w, (wr.y - PAD - lh / 2) / wr.h), 0.035 / wr.w,
                                     transform=wr.fig.transFigure, color=fam_colors.get(fam, other)))
            x += 0.12
        yy = wr.y - PAD
        for ln, sub in lines[j]:
            wr.text(x, yy, ln, fontsize=size - (1 if sub else 0), color=MUTED if sub else color, va="top",
                    ha="right" if right else "left",
                    fontweight="bold" if ("sig" in cell.cls.split() and not sub) else "normal")
            yy -= lh
    wr.y -= rh


# --------------------------------------------------------------------------- report.pdf
def _pdf_meta(doc: Document) -> dict:
    return {"Title": doc.title, "Subject": doc.subtitle, "Creator": f"bench {__version__}",
            "CreationDate": datetime.now(timezone.utc)}


def _front(wr: _Writer, doc: Document) -> None:
    """Title, banner, verdicts, methods, caveats, facts and the top rows."""
    wr.section = "Summary"
    wr.new_page()
    size = _fit_size(doc.title, wr.content_w, 20, True, 11)
    for ln in wrap(doc.title, wr.content_w, size, True):
        wr.text(MARGIN, wr.y, ln, fontsize=size, fontweight="bold", color=ACCENT, va="top")
        wr.y -= size * 1.3 / 72
    wr.y -= 0.12
    wr.text(MARGIN, wr.y, doc.subtitle, fontsize=10, color=MUTED, va="top")
    wr.y -= 0.35
    if doc.banner:
        wr.banner(doc.banner)
    for v in doc.verdicts:
        wr.verdict(v)
    if doc.methods:
        wr.paragraph("Methods. " + doc.methods, size=8.5)
    for c in doc.caveats:
        wr.paragraph(f"•  {c}", size=8.5, indent=0.1)
    wr.facts(doc.facts)
    if doc.key_table is not None:
        wr.table(doc.key_table)


def _block(wr: _Writer, doc: Document, b) -> None:
    if b.kind == "table":
        wr.table(b.value)
    elif b.kind in ("figure", "explain"):
        wr.image(b.value.png, b.value.caption, name=b.value.name)
    elif b.kind == "text":
        wr.paragraph(b.value, size=9.5, weight="bold")
    elif b.kind == "note":
        wr.paragraph(b.value, size=8.5, color=MUTED, style="italic")
    elif b.kind == "facts":
        wr.facts(b.value)
        if doc.packages:
            wr.paragraph("Packages: " + doc.packages, size=7.5, color=MUTED)
    elif b.kind in ("gallery", "retrieval"):
        wr.image(b.value["png"], b.caption, name=b.kind)
    elif b.kind in sections.KINDS:
        sections.pdf_block(wr, b)
    elif b.kind == "links":
        for label, href in b.value:
            wr.paragraph(f"{label}: {href}", size=9)
        if b.caption:
            wr.paragraph(b.caption, size=8.5, color=MUTED, style="italic")


def write_report(doc: Document, path: Path, log: list | None = None) -> Path:
    """The full paginated report. ``log`` (a list) receives ``(page, kind, what)`` for every
    heading and figure placed."""
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    with PdfPages(tmp, metadata=_pdf_meta(doc)) as pdf:
        wr = _Writer(pdf, doc)
        _front(wr, doc)
        for s in doc.sections:
            if not s.blocks:
                continue
            wr.heading(s.title)
            for b in s.blocks:
                _block(wr, doc, b)
        wr.flush()
        if log is not None:
            log.extend(wr.log)
    tmp.replace(path)
    return path


__all__ = ["write_report", "draw_table", "wrap", "text_width", "column_widths"]

"""Reports rebuilt from a saved run folder: one self-contained HTML file and two PDFs.

``build(run_dir)`` reads ``results/<run-id>/`` only (records, predictions, splits,
analysis artefacts; never the feature cache) and writes ``reports/<run-id>/``::

    report.html    self-contained (images base64, inline CSS/JS), sortable tables
    report.pdf     the same content on A4 landscape pages
    summary.pdf    one A4 page to hand in: verdict, methods, family table, two confusion
                   matrices, caveats, a Contribution box
    figures/*.png  every figure
    tables/*.csv   every table as displayed (rebuilds can be diffed)

``compare(run_dirs, out_dir)`` writes the same set over several runs (scores per
dataset, average ranks, critical-difference diagram, joined leaderboard);
``suite(run_dirs, out_dir, links)`` the same document for a suite of datasets, with
each dataset's leaderboard and links to the per-dataset reports.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

from ..aggregate import csv_safe
from ..errors import ConfigError, ResultsError

log = logging.getLogger(__name__)

FORMATS = ("html", "pdf")


def default_reports_dir(run_id: str) -> Path:
    """``<repo>/reports/<run-id>``."""
    return Path(__file__).resolve().parents[2] / "reports" / run_id


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown report format(s): {', '.join(map(str, bad))}",
                          "use html, pdf or html,pdf")
    return formats


def _unique(names: Iterable[str]) -> list[str]:
    """File names for the figures or tables, in order: a repeated name gains ``-2``, ``-3``...
    (two figures of one name would otherwise overwrite each other's file)."""
    seen: set[str] = set()
    out = []
    for name in names:
        new, k = name, 1
        while new in seen:
            k += 1
            new = f"{name}-{k}"
        seen.add(new)
        out.append(new)
    return out


def _write(doc, out: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    from . import html, pdf, summary_pdf
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"cannot create the report folder {out}: {exc}",
                           "pass a writable folder with --out") from exc
    paths: dict[str, Path] = {}
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    for old in fig_dir.glob("*.png"):  # a rebuild must not keep figures of sections now gone
        old.unlink()
    figures, tables = doc.figures(), doc.tables()
    for f, name in zip(figures, _unique(f.name for f in figures)):
        (fig_dir / f"{name}.png").write_bytes(f.png)
    tab_dir = out / "tables"
    tab_dir.mkdir(exist_ok=True)
    for old in tab_dir.glob("*.csv"):
        old.unlink()
    for t, name in zip(tables, _unique(t.name for t in tables)):
        csv_safe(t.to_frame()).to_csv(tab_dir / f"{name}.csv", index=False)
    if "html" in formats:
        paths["html"] = html.write(doc, out / "report.html")
    if "pdf" in formats:
        paths["pdf"] = pdf.write_report(doc, out / "report.pdf")
        paths["summary_pdf"] = summary_pdf.write_summary(doc, out / "summary.pdf")
    paths["figures"] = fig_dir
    paths["tables"] = tab_dir
    return paths


def build(run_dir, reports_dir=None, formats: Sequence[str] = FORMATS,
          records: list | None = None) -> dict[str, Path]:
    """Build the report of one run folder; returns ``{"html", "pdf", "summary_pdf", "figures", "tables"}``
    (only the formats asked for). ``reports_dir`` defaults to ``<repo>/reports/<run-id>``;
    ``records``: the run's records when the caller holds them (``bench run``), else read."""
    from .document import build_document
    from .rundata import RunData
    formats = _check_formats(formats)
    rd = RunData.load(run_dir, records=records)
    out = Path(reports_dir) if reports_dir is not None else default_reports_dir(rd.run_id)
    doc = build_document(rd)
    paths = _write(doc, out, formats)
    log.info("report of %s written to %s", rd.run_id, out)
    return paths


def compare(run_dirs: Sequence, out_dir, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """One report over several runs (datasets, or a variant against a baseline)."""
    from .document import build_compare_document
    from .rundata import RunData
    formats = _check_formats(formats)
    if len(run_dirs) < 2:
        raise ConfigError("compare needs at least two run "
                          "folders", "python -m bench compare RUN_DIR RUN_DIR ...")
    runs = [RunData.load(d) for d in run_dirs]
    doc = build_compare_document(runs)
    return _write(doc, Path(out_dir), formats)


def suite(run_dirs: Sequence, out_dir, links: Sequence[tuple[str, str]] = (), title: str | None = None,
          formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """The report of a suite (one run per dataset): the compare document with each dataset's
    leaderboard and ``links`` (label, href relative to ``out_dir``) to the per-dataset reports."""
    from .document import build_compare_document
    from .rundata import RunData
    formats = _check_formats(formats)
    if not run_dirs:
        raise ResultsError("the suite has no finished dataset run", "check the errors above")
    runs = [RunData.load(d) for d in run_dirs]
    doc = build_compare_document(runs, kind="suite", title=title, links=list(links))
    return _write(doc, Path(out_dir), formats)


__all__ = ["build", "compare", "suite", "default_reports_dir", "FORMATS"]

"""Suites: one pipeline over several datasets (``datasets: [...]``), then one report.

A suite is an outer layer over the single-dataset run: :func:`bench.config.validate`
expands ``datasets:`` into one complete config per dataset (its own ``prepare`` and
``protocol`` merged over the top level), and :func:`run` hands each, unchanged but
for its output folder, to :func:`bench.engine.run`. Layout::

    results/<suite-id>/           suite.yaml (the resolved suite config), suite.json (status)
        <label>/                  one ordinary run folder per dataset (records, splits, ...)
    reports/<suite-id>/           report.html, report.pdf, summary.pdf: every dataset's
                                  leaderboard, every row's score per dataset, average ranks
                                  with the Friedman test, the Nemenyi CD diagram, links
        <label>/report.html ...   the per-dataset reports

``<suite-id>`` is ``<name>-<hash of the suite config>``, so the same command resumes
every dataset's run (finished cells are skipped) and a changed config gets a new
folder; ``--new`` adds a time stamp. A dataset whose run fails with a user error (a
missing path, say) is recorded as failed in ``suite.json``; the others still run and
the report covers those that finished. The suite report is the ``bench compare``
document (:func:`bench.report.document.build_compare_document`, ``kind="suite"``).
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .config import dump
from .errors import BenchError, ConfigError, ResultsError
from .runfolder import RunFolder, write_json

log = logging.getLogger(__name__)


@dataclass
class SuiteResult:
    suite_dir: Path
    runs: dict = field(default_factory=dict)      # label -> run folder (finished)
    failed: dict = field(default_factory=dict)    # label -> "message (hint)"
    reports: dict = field(default_factory=dict)   # {"suite": paths, "datasets": {label: paths}}


def member_config(member: dict, suite_dir: Path) -> dict:
    """A dataset's config with its run folder inside the suite folder (``<suite>/<label>``)."""
    cfg = copy.deepcopy(member)
    cfg["output"] = {**cfg["output"], "results_dir": str(suite_dir), "run_id": member["name"]}
    return cfg


def run(cfg: dict, *, progress=None, new: bool = False, on_run_dir: Callable[[Path], None] | None = None,
        base_dir: Path | None = None, report: bool = True) -> SuiteResult:
    """Run (or resume) every dataset of a validated suite config, then build the suite report.

    ``report=False`` (or ``output.formats: []``) skips every report; they can be rebuilt
    later with :func:`build_reports`.
    """
    from . import engine
    members = cfg.get("datasets")
    if not members:
        raise ConfigError("not a suite: the config has no 'datasets' list",
                          "list the datasets under datasets: [...], or run one with bench.engine.run")
    suite_dir = engine.resolve_run_dir(cfg, new)
    try:
        suite_dir.mkdir(parents=True, exist_ok=True)
        (suite_dir / "suite.yaml").write_text(dump(cfg))
    except OSError as exc:
        raise ResultsError(f"cannot write to the suite folder {str(suite_dir)!r}: {exc.strerror}",
                           "set output.results_dir to a writable folder with free space") from None
    result = SuiteResult(suite_dir)
    status = {"name": cfg["name"], "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "datasets": {}}
    for i, member in enumerate(members):
        label = member["name"]
        log.info("suite %s: dataset %d of %d: %s", suite_dir.name, i + 1, len(members), label)
        try:
            ctx = engine.run(member_config(member, suite_dir), progress=progress, new=False,
                             on_run_dir=on_run_dir, base_dir=base_dir)
            result.runs[label] = ctx.run_dir
            status["datasets"][label] = {"status": "ok", "run_dir": ctx.run_dir.name,
                                         "dataset": ctx.dataset.name, "n_images": len(ctx.dataset)}
        except BenchError as exc:  # a user error in one dataset: record it, run the others
            text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
            log.error("suite: dataset %s failed: %s", label, text)
            result.failed[label] = text
            status["datasets"][label] = {"status": "failed", "error": exc.message, "hint": exc.hint}
        write_json(suite_dir / "suite.json", status)
    status["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(suite_dir / "suite.json", status)
    formats = tuple(cfg["output"]["formats"] or ())
    if report and formats and result.runs:
        out_dir = Path(cfg["output"]["reports_dir"]) / suite_dir.name
        result.reports = build_reports(suite_dir, result.runs, out_dir, formats,
                                       title=f"{cfg['name']}: {len(members)} datasets")
    return result


def rebuild_reports(suite_dir, out_dir, formats=("html", "pdf")) -> dict:
    """Rebuild every report of a finished (or partly finished) suite folder from its files."""
    suite_dir = Path(suite_dir)
    try:
        status = json.loads((suite_dir / "suite.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read {suite_dir / 'suite.json'}: {exc}",
                           "pass a suite folder under results/ (it holds suite.json)") from None
    datasets = status.get("datasets", {})
    runs = {label: suite_dir / info.get("run_dir", label) for label, info in datasets.items()
            if info.get("status") == "ok"
            and RunFolder(suite_dir / info.get("run_dir", label)).is_run()}
    if not runs:
        raise ResultsError(f"{suite_dir}: no dataset of this suite finished", "run the suite first")
    return build_reports(suite_dir, runs, Path(out_dir), tuple(formats),
                         title=f"{status.get('name', suite_dir.name)}: {len(datasets)} datasets")


def build_reports(suite_dir: Path, runs: dict, out_dir: Path, formats=("html", "pdf"),
                  title: str | None = None) -> dict:
    """Per-dataset reports in ``out_dir/<label>/``, then the suite report in ``out_dir``."""
    from . import report as rep
    out: dict = {"datasets": {}}
    links = []
    for label, run_dir in runs.items():
        try:
            paths = rep.build(run_dir, out_dir / label, formats=formats)
        except BenchError as exc:
            log.error("suite: the report of %s failed: %s", label, exc.message)
            continue
        out["datasets"][label] = paths
        main = paths.get("html") or paths.get("pdf")
        if main is not None:
            links.append((label, os.path.relpath(main, out_dir)))
    out["suite"] = rep.suite(list(runs.values()), out_dir, links, title=title, formats=formats)
    log.info("suite report of %s written to %s", suite_dir.name, out_dir)
    return out

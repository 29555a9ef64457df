"""Helpers for tests that run the engine or the command line in this process.

* :func:`toy_config`: a validated config on the plugin dataset of ``plugin_toy.py``
  (tiny, a second or two per run), with the caller's ``key=value`` overrides last.
* :func:`run_cli`: ``bench.cli.main(args)`` as a user runs it, capturing stdout/stderr,
  and putting the ``bench`` logger back as it was (the CLI configures logging).
* :func:`record_lines`: ``records.jsonl`` as ``{cell_id: raw line bytes}``.
* :func:`read_spy_log`: what the spy components of ``plugin_toy.py`` logged.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from bench.config import load_config

TESTS = Path(__file__).resolve().parent
PLUGIN = str(TESTS / "plugin_toy.py")


def toy_config(tmp_path, *extra, n_per_class: int = 8, n_splits: int = 3):
    """Toy-blobs + ``column_profile`` + logreg, quiet report settings, private cache."""
    return load_config(None, [
        f"plugins=[{PLUGIN}]", "dataset.kind=toy-blobs", f"dataset.n_per_class={n_per_class}",
        "features=[column_profile]", "classifiers=[logreg]", f"protocol.n_splits={n_splits}",
        f"output.results_dir={Path(tmp_path) / 'results'}",
        f"output.reports_dir={Path(tmp_path) / 'reports'}", "report.tsne=false",
        "report.learning_curves=false", "report.gallery=0", "report.retrieval=false",
        f"cache.dir={Path(tmp_path) / 'cache'}", "parallel.n_jobs=1", "output.formats=[html]", *extra])


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.returncode, self.stdout, self.stderr = code, out, err

    def __repr__(self):
        return f"CliResult({self.returncode}, stdout={self.stdout[-800:]!r}, stderr={self.stderr[-1500:]!r})"


def run_cli(*args) -> CliResult:
    """``python -m bench ARGS`` in this process (no interpreter start-up: the TF import is shared)."""
    from bench import cli
    logger = logging.getLogger("bench")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in args])
    finally:
        for h in list(logger.handlers):
            if h not in saved[0]:
                logger.removeHandler(h)
                h.close()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
    return CliResult(code, out.getvalue(), err.getvalue())


def read_spy_log(log_dir) -> list:
    """Every line the spies of ``plugin_toy.py`` wrote to ``log_dir`` (all processes)."""
    out = []
    for p in sorted(Path(log_dir).glob("spy-*.jsonl")) if Path(log_dir).is_dir() else []:
        out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return out


def record_lines(run_dir) -> dict:
    """``{cell_id: the record's raw line}`` of a run folder's records.jsonl (complete lines only)."""
    out = {}
    for raw in (Path(run_dir) / "records.jsonl").read_bytes().splitlines(keepends=True):
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            continue
        assert rec["cell_id"] not in out, f"cell {rec['cell_id']} recorded twice"
        out[rec["cell_id"]] = raw
    return out

"""The run folder's one owner (bench.runfolder) and the staged engine that writes it.

* behaviour preserved: pipelines/smoke.yaml gives the per-fold scores stored in
  tests/data/smoke_reference.json, made on the tree before the engine was split into
  stages (same seed);
* ``records.jsonl`` is opened for reading once per ``bench run`` (a spy on ``open``);
* defect 5: running a finished run again keeps ``analysis/retrieval.json``;
* defect 6: two processes on one results folder: no crash, one record per cell;
* the lock, atomic writes with unique temporary names, torn lines.
"""
from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bench import runfolder
from bench.errors import ResultsError
from bench.runfolder import RECORDS, RunFolder
from run_helpers import run_cli, toy_config

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "data" / "smoke_reference.json"


def _smoke_args(tmp_path, *extra):
    """``bench run`` of smoke.yaml into ``tmp_path``; flags (``--no-report``) go first."""
    flags = [a for a in extra if a.startswith("--")]
    overrides = [a for a in extra if not a.startswith("--")]
    return ["-q", "run", *flags, "--config", str(REPO / "pipelines" / "smoke.yaml"),
            f"output.results_dir={tmp_path / 'results'}", f"output.reports_dir={tmp_path / 'reports'}",
            f"cache.dir={tmp_path / 'cache'}", *overrides]


def _run_dir(tmp_path) -> Path:
    (d,) = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    return d


def _cells(records) -> dict:
    out = {}
    for r in records:
        if r["status"] == "ok" and r["family"] != "cnn":
            key = f'{r["dataset"]}|{r["feature"]}|{r["classifier"]}|{r["split"]}' + \
                (f'|{r["variant"]}' if r.get("variant") else "")
            out[key] = {k: r[k] for k in ("family", "accuracy", "balanced_accuracy", "macro_f1",
                                          "n_features", "n_train", "n_test")}
    return out


# --------------------------------------------------------------------------- behaviour preserved
def test_smoke_scores_equal_the_reference_made_before_the_refactor(tmp_path):
    res = run_cli(*_smoke_args(tmp_path, "--no-report", "report.explain=false"))
    assert res.returncode == 0, res
    got = _cells(runfolder.read_records(_run_dir(tmp_path) / RECORDS))
    want = json.loads(REFERENCE.read_text())["cells"]
    assert set(got) == set(want)
    diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not diff, f"per-fold scores changed: {diff}"


# --------------------------------------------------------------------------- records read once
def test_records_file_is_opened_for_reading_once_per_run(tmp_path, monkeypatch):
    """A resumed run (records on disk already) with analysis and a report: one read."""
    args = _smoke_args(tmp_path, "output.formats=[html]", "report.explain=false", "output.run_id=r")
    first = _smoke_args(tmp_path, "--no-report", "report.explain=false", "output.run_id=r", "classifiers=[svm]")
    assert run_cli(*first).returncode == 0  # a first session: the svm cells are done
    reads: list = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def is_records(file) -> bool:
        return isinstance(file, (str, os.PathLike)) and Path(file).name == RECORDS

    def spy_open(file, mode="r", *a, **k):
        if is_records(file) and not any(c in mode for c in "wax+"):
            reads.append(("open", str(file), mode))
        return real_open(file, mode, *a, **k)

    def spy_io_open(file, mode="r", *a, **k):
        if is_records(file) and not any(c in mode for c in "wax+"):
            reads.append(("io.open", str(file), mode))
        return real_io_open(file, mode, *a, **k)

    def spy_os_open(path, flags, *a, **k):
        if is_records(path) and not flags & (os.O_WRONLY | os.O_RDWR):
            reads.append(("os.open", str(path), flags))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(Path, "read_text", _spy_read_text(Path.read_text, reads))
    monkeypatch.setattr(Path, "read_bytes", _spy_read_text(Path.read_bytes, reads))
    res = run_cli(*args)
    assert res.returncode == 0, res
    assert len(reads) == 1, reads
    recs = runfolder.read_records(_run_dir(tmp_path) / RECORDS)
    assert {r["classifier"] for r in recs} == {"svm", "logreg"}  # the session did write records
    assert (tmp_path / "reports" / _run_dir(tmp_path).name / "report.html").exists()


def _spy_read_text(real, reads):
    def spy(self, *a, **k):
        if self.name == RECORDS:
            reads.append((real.__name__, str(self)))
        return real(self, *a, **k)
    return spy


# --------------------------------------------------------------------------- defect 5
def test_rerunning_a_finished_run_keeps_the_retrieval_gallery(tmp_path):
    """Smoke with explain off: a finished rerun loads no features (every cell done); the
    analysis used to delete retrieval.json and the rebuilt report lost its figure."""
    args = _smoke_args(tmp_path, "report.explain=false", "output.formats=[html]")
    assert run_cli(*args).returncode == 0
    ret = _run_dir(tmp_path) / "analysis" / "retrieval.json"
    first = ret.read_bytes()
    assert json.loads(first)["queries"]
    res = run_cli(*args)
    assert res.returncode == 0, res
    assert ret.exists() and ret.read_bytes() == first
    manifest = json.loads((ret.parent / "manifest.json").read_text())
    assert manifest["parts"]["retrieval"]["status"] == "kept"
    html = (tmp_path / "reports" / _run_dir(tmp_path).name / "report.html").read_text()
    assert "No retrieval gallery" not in html


def test_a_run_killed_before_retrieval_was_written_computes_it_on_rerun(tmp_path):
    """Killed during analysis or report writing, retrieval.json missing: the rerun loads
    the features again (from the cache) and writes it."""
    args = _smoke_args(tmp_path, "report.explain=false", "--no-report")
    assert run_cli(*args).returncode == 0
    ret = _run_dir(tmp_path) / "analysis" / "retrieval.json"
    first = json.loads(ret.read_text())
    ret.unlink()
    assert run_cli(*args).returncode == 0
    assert json.loads(ret.read_text()) == first


def test_retrieval_switched_off_removes_the_old_file(tmp_path):
    args = _smoke_args(tmp_path, "report.explain=false", "--no-report", "output.run_id=r")
    assert run_cli(*args).returncode == 0
    ret = tmp_path / "results" / "r" / "analysis" / "retrieval.json"
    assert ret.exists()
    off = _smoke_args(tmp_path, "report.explain=false", "--no-report", "output.run_id=r",
                      "report.retrieval=false")
    assert run_cli(*off).returncode == 0
    assert not ret.exists()


# --------------------------------------------------------------------------- defect 6
_TWO_RUNS = """
import sys
from bench import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_two_processes_on_one_results_folder_write_each_cell_once(tmp_path):
    cfg_args = _smoke_args(tmp_path, "--no-report", "report.explain=false", "output.run_id=shared",
                           "parallel.n_jobs=1")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_RUNS, *cfg_args], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "internal error" not in err
    lines = (tmp_path / "results" / "shared" / RECORDS).read_text().splitlines()
    counts = Counter(json.loads(line)["cell_id"] for line in lines)
    assert len(counts) == 18 and set(counts.values()) == {1}, counts
    assert any("waiting for it to finish" in err for _, err in outs)


# --------------------------------------------------------------------------- the lock
def test_a_held_lock_stops_a_second_writer_with_a_clear_error(tmp_path):
    a = RunFolder.create(tmp_path / "run")
    with a.lock():
        b = RunFolder(tmp_path / "run")
        with pytest.raises(ResultsError) as err:
            b.acquire(timeout=0)
        assert f"pid {os.getpid()}" in err.value.message and "--new" in err.value.hint
        with pytest.raises(ResultsError):
            b.acquire(timeout=0.3)
    b.acquire(timeout=0)  # released: free again
    b.release()


def test_a_waiting_writer_gets_the_lock_when_the_first_releases(tmp_path):
    a = RunFolder.create(tmp_path / "run")
    a.acquire()
    got = []
    t = threading.Thread(target=lambda: (RunFolder(tmp_path / "run").acquire(timeout=10), got.append(1)))
    t.start()
    time.sleep(0.5)
    assert not got
    a.release()
    t.join(10)
    assert got == [1]


def test_engine_run_holds_the_lock(tmp_path, monkeypatch):
    from bench import engine
    seen = []
    cfg = toy_config(tmp_path)

    def probe(run_dir):
        with pytest.raises(ResultsError):
            RunFolder(run_dir).acquire(timeout=0)
        seen.append(run_dir)
    engine.run(cfg, on_run_dir=probe)
    assert seen
    RunFolder(seen[0]).acquire(timeout=0)  # released after the run


# --------------------------------------------------------------------------- writes and records
def test_atomic_writes_use_unique_temporary_names_and_leave_none(tmp_path, monkeypatch):
    names = []
    real = os.replace

    def spy(src, dst):
        names.append(Path(src).name)
        return real(src, dst)
    monkeypatch.setattr(runfolder.os, "replace", spy)
    target = tmp_path / "x.json"
    runfolder.write_json(target, {"a": 1})
    runfolder.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert len(set(names)) == 2 and all(n.startswith(".x.json.") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    with pytest.raises(RuntimeError):
        with runfolder.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_records_read_once_and_appends_kept_in_memory(tmp_path, monkeypatch):
    folder = RunFolder.create(tmp_path / "run")
    folder.records_path.write_bytes(b'{"cell_id": "a", "status": "ok"}\n{"cell_id": "b", "sta')  # torn
    calls = []
    real = runfolder.read_records
    monkeypatch.setattr(runfolder, "read_records", lambda p: calls.append(p) or real(p))
    assert folder.done() == {"a"}
    folder.append({"cell_id": "b", "status": "ok"})
    folder.append({"cell_id": "a", "status": "failed"})
    assert folder.done() == {"b"} and len(folder.records()) == 3
    assert len(calls) == 1
    # on disk: the torn line is skipped, the appended ones start on a fresh line
    assert [r["cell_id"] for r in real(folder.records_path)] == ["a", "b", "a"]


def test_open_names_the_missing_records(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match=f"no {RECORDS}"):
        RunFolder.open(tmp_path / "empty")
    with pytest.raises(ResultsError, match="does not exist"):
        RunFolder.open(tmp_path / "nope")

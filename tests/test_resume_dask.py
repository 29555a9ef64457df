"""Robustness of runs: resume after kill -9, and the Dask engine running the cells on the
cluster's workers and giving the same records."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import engine, records
from bench.config import load_config

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(Path(__file__).parent / "plugin_toy.py")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import read_spy_log, record_lines  # noqa: E402

ARGS = [f"plugins=[{PLUGIN}]", "dataset.kind=toy-blobs", "dataset.n_per_class=8",
        "features=[column_profile]", "protocol.n_splits=4", "report.tsne=false",
        "report.learning_curves=false", "report.gallery=0", "report.retrieval=false", "finetune=[]"]


def _strip(rs):
    drop = ("time", "fit_s", "predict_s", "extract_ms_per_image", "run_id")
    return sorted(({k: v for k, v in r.items() if k not in drop} for r in rs),
                  key=lambda r: r["cell_id"])


def test_resume_after_kill_minus_9(tmp_path):
    args = ARGS + ["classifiers=[{name: sleepy_knn, params: {sleep: 0.25}}]", "protocol.n_repeats=6",
                   f"output.results_dir={tmp_path}", "output.run_id=r", f"cache.dir={tmp_path / 'c'}",
                   "parallel.n_jobs=1", "output.formats=[]"]
    cmd = [sys.executable, "-m", "bench", "-q", "run", "--no-report", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    path = tmp_path / "r" / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if path.exists() and len(records.load(path)) >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = records.load(path)
    assert 5 <= len(partial) < 24, "the run should have been killed mid-way"
    raw = path.read_bytes()
    finished = raw[: raw.rfind(b"\n") + 1]                  # complete lines (a torn one may follow)
    preds = {p: p.stat().st_mtime_ns for p in (tmp_path / "r" / "predictions").glob("*.npz")}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    final = record_lines(tmp_path / "r")                      # fails on a cell recorded twice
    assert len(final) == 24
    assert all(json.loads(line)["status"] == "ok" for line in final.values())
    # finished records were neither rewritten nor recomputed: the old lines, byte for byte,
    # then one new line per missing cell; their predictions files untouched
    assert path.read_bytes().startswith(finished)
    assert len(path.read_bytes().splitlines()) - len(finished.splitlines()) <= 24 - len(partial) + 1
    done = {r["cell_id"] for r in partial}
    for pred, mtime in preds.items():
        if pred.stem in done:
            assert pred.stat().st_mtime_ns == mtime, pred.name


def _spy_run(tmp_path, name, *extra):
    spy = tmp_path / f"spy-{name}"
    cfg = load_config(None, ARGS + [f"classifiers=[{{name: spy_logreg, params: {{log_dir: {spy}}}}}, knn]",
                                    f"cache.dir={tmp_path / 'c'}", "output.run_id=x", "parallel.n_jobs=2",
                                    f"output.results_dir={tmp_path / name}", *extra])
    return engine.run(cfg).records(), read_spy_log(spy)


def test_dask_runs_the_cells_on_the_cluster_workers(tmp_path):
    """``parallel.backend=dask``: every cell is fitted in a worker of the named cluster (not
    in this process, not in loky workers), and the records equal the local backend's."""
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is in the test extra")
    a, fits_a = _spy_run(tmp_path, "loky", "parallel.backend=loky")
    # a plugin classifier works in worker processes too (it used to fail every cell there:
    # the workers' registry does not know plugin components, so the estimator is shipped)
    assert all(r["status"] == "ok" for r in a), [r["error"] for r in a if r["error"]]
    assert len(fits_a) == 4 and all(f["worker"] is None and f["pid"] != os.getpid() for f in fits_a)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        worker_pids = client.run(os.getpid)                  # {worker address: pid}
        b, fits_b = _spy_run(tmp_path, "dask", "parallel.backend=dask",
                             f"parallel.address={cluster.scheduler_address}")
    assert len(fits_b) == 4                                   # one fit per spy_logreg cell
    for f in fits_b:
        assert f["worker"] in worker_pids and f["pid"] == worker_pids[f["worker"]], (f, worker_pids)
    no_log_dir = lambda rs: [{k: v for k, v in r.items() if k != "params"} for r in _strip(rs)]
    assert len(a) == 8 and no_log_dir(a) == no_log_dir(b)     # params differ only by the spy's log_dir


def test_dask_without_address_starts_a_local_cluster(tmp_path):
    pytest.importorskip("distributed", reason="dask[distributed] is in the test extra")
    rs, fits = _spy_run(tmp_path, "dask", "parallel.backend=dask")
    assert len(rs) == 8 and all(r["status"] == "ok" for r in rs)
    assert len(fits) == 4 and all(f["worker"] is not None and f["pid"] != os.getpid() for f in fits)

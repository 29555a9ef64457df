"""Robustness of runs: resume after kill -9, and the Dask engine giving the same records."""
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
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    final = records.load(path)
    assert len(final) == 24 and len({r["cell_id"] for r in final}) == 24
    assert all(r["status"] == "ok" for r in final)
    # finished records were not rewritten
    assert _strip(final[: len(partial)]) == _strip(partial)


def test_dask_local_cluster_equals_loky(tmp_path):
    pytest.importorskip("dask.distributed")
    base = ARGS + ["classifiers=[logreg,knn]", f"cache.dir={tmp_path / 'c'}", "output.run_id=x"]
    a = engine.run(load_config(None, base + [f"output.results_dir={tmp_path / 'a'}",
                                             "parallel.backend=loky", "parallel.n_jobs=2"])).records()
    b = engine.run(load_config(None, base + [f"output.results_dir={tmp_path / 'b'}",
                                             "parallel.backend=dask", "parallel.n_jobs=2"])).records()
    assert len(a) == 8 and _strip(a) == _strip(b)

"""The report's "Reproduce" section works: its commands, pasted, give the same per-fold scores.

A tiny run is made with bench's command line (a config file and a ``key=value``
override) in one temporary folder; the commands are then copied out of its
report.html and run as printed, each in a fresh temporary folder:

* "rerun anywhere": the resolved config.yaml shown in the report, saved in an empty
  folder, with ``python -m bench run --config config.yaml`` (a real ``python -m``
  subprocess with a fresh feature cache: the text is exactly what a reader pastes);
* "the command that launched this run", from a folder holding the same config file;
* ``python -m bench report RUN_DIR``, which rebuilds the report from the new folder.

Each rerun has the same run id, the same splits, and identical records (every metric
of every cell) and predictions.
"""
import html as htmlmod
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import run_cli  # noqa: E402

from bench import provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = """\
name: tiny-repro
seed: 0
dataset: {kind: synthetic-parcel, n_per_class: 8, size: 32}
prepare: {depth_range: minmax}
features:
  - lbp
  - name: parcel_shape
    prepare: {depth_range: null}
classifiers: [logreg, svm]
protocol: {kind: kfold, n_splits: 3}
parallel: {n_jobs: 1}
report: {gallery: 4, tsne: false, learning_curves: false, retrieval: false, explain: false}
output: {formats: [html]}
"""
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _command(page: str, id_: str) -> str:
    m = re.search(rf'<pre class="command" id="cmd-{id_}"><code>(.*?)</code></pre>', page, re.S)
    assert m, f"no command {id_} in the report"
    return htmlmod.unescape(m.group(1))


def _scores(run_dir: Path) -> dict:
    out = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["cell_id"]] = (r["status"], r["split"], *(r[m] for m in METRICS))
        with np.load(run_dir / "predictions" / f"{r['cell_id']}.npz") as z:
            out[r["cell_id"] + "/pred"] = (z["test_index"].tolist(), z["y_pred"].tolist())
    return out


def _paste(command: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess:
    """Run a pasted ``python -m bench ...`` line with this interpreter and this checkout."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "bench"], command
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "BENCH_CACHE_DIR": str(tmp / "fresh-cache")}
    return subprocess.run([sys.executable, *words[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The run as a user makes it: ``python -m bench -q run --config pipelines/tiny.yaml seed=3``."""
    root = tmp_path_factory.mktemp("original")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "tiny.yaml").write_text(TINY)
    old = Path.cwd()
    os.chdir(root)
    try:
        res = run_cli("-q", "run", "--config", "pipelines/tiny.yaml", "seed=3")
    finally:
        os.chdir(old)
    assert res.returncode == 0, res
    run_dir = next((root / "results").iterdir())
    page = (root / "reports" / run_dir.name / "report.html").read_text(encoding="utf-8")
    return run_dir, page


def test_env_records_the_command_line_and_commit(original):
    run_dir, page = original
    env = json.loads((run_dir / "env.json").read_text())
    assert env["argv"] == ["-q", "run", "--config", "pipelines/tiny.yaml", "seed=3"]
    assert provenance.launch_argv() is None  # forgotten once the command returned
    git = provenance.git_info()
    assert env["git"] == git
    if git is not None:  # run from a checkout of bench: the commit is on the page
        assert git["commit"] in page


def test_pasted_config_command_reproduces_the_per_fold_scores(original, tmp_path):
    run_dir, page = original
    m = re.search(r'<pre class="code" id="config-yaml"><code>(.*?)</code></pre>', page, re.S)
    (tmp_path / "config.yaml").write_text(htmlmod.unescape(m.group(1)))
    cmd = _command(page, "rerun-config")
    assert cmd == "python -m bench run --config config.yaml"
    res = _paste(cmd, tmp_path, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert any((tmp_path / "fresh-cache").rglob("*")), "the rerun computed its own features"
    again = tmp_path / "results" / run_dir.name  # the same run id
    splits = json.loads((run_dir / "splits.json").read_text())
    assert json.loads((again / "splits.json").read_text()) == splits
    assert _scores(again) == _scores(run_dir)
    assert len([k for k in _scores(again) if "/" not in k]) == 2 * 2 * 3

    # and the report command of the page rebuilds the report there
    rep = _command(page, "report")
    assert rep == f"python -m bench report results/{run_dir.name}"
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        out = run_cli(*shlex.split(rep)[3:])
    finally:
        os.chdir(old)
    assert out.returncode == 0, out
    rebuilt = (tmp_path / "reports" / run_dir.name / "report.html").read_text(encoding="utf-8")
    assert _command(rebuilt, "rerun-config") == cmd


def test_pasted_launch_command_reproduces_the_per_fold_scores(original, tmp_path):
    run_dir, page = original
    cmd = _command(page, "rerun-launched")
    assert cmd == "python -m bench -q run --config pipelines/tiny.yaml seed=3"
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "tiny.yaml").write_text(TINY)
    words = shlex.split(cmd)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:  # bench's own command line, in this process (the config command above ran as a subprocess)
        res = run_cli(*words[3:])
    finally:
        os.chdir(old)
    assert res.returncode == 0, res
    assert _scores(tmp_path / "results" / run_dir.name) == _scores(run_dir)


def test_git_info_only_for_a_checkout_of_bench(tmp_path):
    assert provenance.git_info(tmp_path / "bench") is None  # no repository at all
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "elsewhere" / "bench").mkdir(parents=True)
    # a repository, but bench is not at its top level (e.g. a venv inside a project)
    assert provenance.git_info(tmp_path / "elsewhere" / "bench") is None
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "x.py").write_text("x = 1\n")
    g = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(g + ["add", "-A"], check=True)
    subprocess.run(g + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(g + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = provenance.git_info(tmp_path / "bench")
    assert info["commit"] == head and info["dirty"] is False
    (tmp_path / "bench" / "x.py").write_text("x = 2\n")
    assert provenance.git_info(tmp_path / "bench")["dirty"] is True

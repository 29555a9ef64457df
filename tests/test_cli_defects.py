"""Issue 11, defects 7, 8 and 9: each as a user meets it on the command line.

Most tests run ``bench.cli.main`` in this process (:func:`tests.run_helpers.run_cli`) on the
toy plugin dataset or a tiny folder dataset; the kill -9 test starts ``python -m bench run``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import PLUGIN, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUIET = ["report.tsne=false", "report.learning_curves=false", "report.gallery=0", "report.retrieval=false",
         "report.explain=false", "parallel.n_jobs=1", "output.formats=[html]"]


def _pipeline(tmp_path, **over) -> Path:
    """A pipeline file (so no test picks up pipelines/default.yaml) on the toy plugin dataset."""
    cfg = {"name": "t", "plugins": [PLUGIN], "dataset": {"kind": "toy-blobs", "n_per_class": 6},
           "features": ["column_profile"], "classifiers": ["logreg"], "protocol": {"n_splits": 2},
           "output": {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports")},
           "cache": {"dir": str(tmp_path / "cache")}, **over}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tree(root: Path, classes: dict) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / cls / f"{i}.png")
    return root


def _user_error(res, *words):
    assert res.returncode == 2, res
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr, res
    lines = res.stderr.splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, res
    assert any(line.startswith("hint:") and len(line) > 8 for line in lines), res
    for w in words:
        assert w in res.stderr, (w, res)


def _folder_run(tmp_path, root, *extra):
    return run_cli("run", "--config", _pipeline(tmp_path), "dataset.kind=folder", f"dataset.path={root}",
                   "features=[color_hist]", *QUIET, *extra, "--no-report")


# --------------------------------------------------------------------------- defect 7
ORDERS = [["dataset.path=X", "dataset.kind=folder"], ["dataset.kind=folder", "dataset.path=X"]]


@pytest.mark.parametrize("order", ORDERS)
def test_dataset_path_before_or_after_kind(order):
    cfg = load_config(None, order + ["features=[hog]", "classifiers=[svm]"])
    assert cfg["dataset"] == {"kind": "folder", "path": "X"}


def test_override_order_never_changes_the_config():
    import itertools
    base = ["features=[hog]", "classifiers=[svm]"]
    overrides = ["dataset.path=X", "dataset.kind=folder", "protocol={kind: holdout, test_size: 0.3}",
                 "protocol.test_size=0.4", "dataset={group_pattern: '^(\\d+)_'}"]
    seen = {json.dumps(load_config(None, base + list(p)), sort_keys=True, default=str)
            for p in itertools.permutations(overrides)}
    assert len(seen) == 1
    cfg = json.loads(seen.pop())
    assert cfg["dataset"] == {"kind": "folder", "path": "X", "group_pattern": "^(\\d+)_"}
    assert cfg["protocol"]["kind"] == "holdout" and cfg["protocol"]["test_size"] == 0.4  # specific key wins


def test_kind_change_drops_only_the_file_dataset_params(tmp_path):
    path = _pipeline(tmp_path)  # dataset: toy-blobs with n_per_class: 6
    cfg = load_config(path, ["dataset.path=X", "dataset.kind=folder"])
    assert cfg["dataset"] == {"kind": "folder", "path": "X"}
    assert load_config(path, ["dataset.n_per_class=4"])["dataset"] == {"kind": "toy-blobs", "n_per_class": 4}


def test_cli_folder_run_with_path_first(tmp_path):
    root = _tree(tmp_path / "data", {"a": 4, "b": 4})
    res = run_cli("run", "--config", _pipeline(tmp_path), f"dataset.path={root}", "dataset.kind=folder",
                  "features=[color_hist]", *QUIET, "--no-report")
    assert res.returncode == 0, res


# --------------------------------------------------------------------------- defect 8
def test_self_pointing_symlink_in_dataset_root(tmp_path):
    root = _tree(tmp_path / "data", {"a": 4, "b": 4})
    os.symlink(root / "loop", root / "loop")
    _user_error(_folder_run(tmp_path, root), str(root / "loop"), "points to itself")
    assert not (tmp_path / "results").exists()


def test_self_pointing_symlink_in_class_folder(tmp_path):
    root = _tree(tmp_path / "data", {"a": 4, "b": 4})
    os.symlink(root / "a" / "self.png", root / "a" / "self.png")
    _user_error(_folder_run(tmp_path, root), str(root / "a" / "self.png"))


def test_unreadable_class_folder(tmp_path, monkeypatch):
    root = _tree(tmp_path / "data", {"a": 4, "b": 4})
    if os.geteuid() != 0:
        os.chmod(root / "b", 0)
    else:  # root reads anything: the folder answers as an unreadable one does
        real = os.scandir

        def scandir(path="."):
            if Path(path) == root / "b":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)
        monkeypatch.setattr(os, "scandir", scandir)
    try:
        _user_error(_folder_run(tmp_path, root), str(root / "b"), "Permission denied", "chmod")
    finally:
        os.chmod(root / "b", 0o755)


# --------------------------------------------------------------------------- defect 9
@pytest.mark.parametrize("where", ["after", "among"])
def test_debug_and_no_report_anywhere(tmp_path, where):
    p = _pipeline(tmp_path)
    args = (["run", "--config", p, "--debug", "--no-report", *QUIET] if where == "after"
            else ["run", "--config", p, QUIET[0], "--debug", *QUIET[1:3], "--no-report", *QUIET[3:]])
    res = run_cli(*args)
    assert res.returncode == 0, res
    assert not (tmp_path / "reports").exists()  # --no-report took effect
    with pytest.raises(Exception):  # --debug took effect: the error is raised, not printed
        run_cli("run", "--config", p, "seed=-1", "--debug")


def test_unknown_option_among_overrides_is_an_argparse_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_cli("run", "--config", _pipeline(tmp_path), "seed=1", "--bogus")
    assert exc.value.code == 2


@pytest.mark.parametrize("name", ["../..", "../escape", "a/b", "..", "."])
def test_run_name_cannot_escape_results_dir(tmp_path, name):
    res = run_cli("run", "--config", _pipeline(tmp_path), f"name={name}", *QUIET)
    _user_error(res, "plain folder name")
    assert not (tmp_path / "results").exists() and not list(tmp_path.parent.glob("*-????????"))


def test_formula_labels_are_escaped_in_csv(tmp_path):
    label = '=HYPERLINK("http://x","y")'
    res = run_cli("run", "--config", _pipeline(tmp_path), *QUIET,
                  f"features=[{{name: column_profile, label: '{label}'}}]")
    assert res.returncode == 0, res
    run_dir = next((tmp_path / "results").iterdir())
    summary = (run_dir / "summary.csv").read_text()
    assert "'=HYPERLINK" in summary and '\n"=HYPERLINK' not in summary and "\n=HYPERLINK" not in summary
    tables = list((tmp_path / "reports").rglob("tables/*.csv"))
    assert tables
    for t in tables:
        for line in t.read_text().splitlines():
            for cell in line.split(","):
                assert not cell.lstrip('"').startswith(("=", "@")), (t, line)
    from bench.report.rundata import RunData
    assert label in set(RunData.load(run_dir).summary["feature"])  # bench reads its own rows intact


def test_csv_escaping_round_trips():
    import io

    import pandas as pd

    from bench.aggregate import csv_safe, csv_unescape
    df = pd.DataFrame({"label": ["=1+2", "+cmd", "-x", "@SUM(A1)", "'quoted", "plain", "-1.5", "+2", "-"],
                       "v": range(9)})
    text = csv_safe(df).to_csv(index=False)
    cells = [line.split(",")[0].strip('"') for line in text.splitlines()[1:]]
    assert cells[:5] == ["'=1+2", "'+cmd", "'-x", "'@SUM(A1)", "''quoted"]
    assert cells[5:] == ["plain", "-1.5", "+2", "-"]  # plain numbers and the empty-cell dash stay
    assert csv_unescape(pd.read_csv(io.StringIO(text))).equals(df)


def test_one_image_class_hint_does_not_say_lower_to_two(tmp_path):
    root = _tree(tmp_path / "data", {"a": 4, "b": 1})
    res = _folder_run(tmp_path, root, "protocol.n_splits=2")
    _user_error(res, "b (1)", "at least 2 images")
    assert "lower protocol.n_splits to 2" not in res.stderr


def test_lbp_radius_of_wrong_type_caught_before_the_run(tmp_path):
    res = run_cli("run", "--config", _pipeline(tmp_path), *QUIET, "features=[{name: lbp, params: {radii: a}}]")
    _user_error(res, "features[0] (lbp).params.radii", "a number or a list of numbers")
    assert not (tmp_path / "results").exists()
    res = run_cli("run", "--config", _pipeline(tmp_path), *QUIET, "features=[{name: lbp, params: {radii: [1, x]}}]")
    _user_error(res, "radii")
    res = run_cli("run", "--config", _pipeline(tmp_path), *QUIET, "features=[{name: lbp, params: {method: rorr}}]")
    _user_error(res, "unknown method 'rorr'")


def test_user_error_without_its_own_hint_gets_one(tmp_path):
    # finetune's number checks raise without a hint of their own
    res = run_cli("run", "--config", _pipeline(tmp_path), *QUIET, "finetune=[{mode: scratch, lr: -1}]")
    _user_error(res, "finetune[0].lr")


def test_non_image_file_reason_has_no_memory_address(tmp_path):
    root = _tree(tmp_path / "data", {"a": 4, "b": 4})
    (root / "a" / "notes.png").write_text("not an image")
    res = _folder_run(tmp_path, root)
    _user_error(res, "notes.png", "unknown image format")
    assert " at 0x" not in res.stderr and "<_io" not in res.stderr


def test_feature_typo_leaves_no_run_folder(tmp_path):
    res = run_cli("run", "--config", _pipeline(tmp_path), *QUIET, "features=[column_profil]")
    _user_error(res, "unknown feature 'column_profil'", "did you mean 'column_profile'")
    assert not (tmp_path / "results").exists()
    res = run_cli("run", "--config", _pipeline(tmp_path), *QUIET, "classifiers=[{name: logreg, params: {CC: 1}}]")
    _user_error(res, "no parameter 'CC'", "did you mean 'C'")
    assert not (tmp_path / "results").exists()


def test_readme_says_a_plugin_file_runs_code():
    text = (REPO / "README.md").read_text()
    assert "A plugin file is Python code that bench runs" in text


def test_textures_pipeline_labels_lbp_methods_truthfully():
    cfg = load_config(REPO / "pipelines" / "textures.yaml")
    for f in cfg["features"]:
        if f["name"] == "lbp":
            method = f["params"].get("method", "uniform")
            if "riu2" in f["label"]:
                assert method in ("uniform", "riu2"), f
            if method == "ror":
                assert "ror" in f["label"], f


def _loky_workers(pid):
    import psutil
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if "loky" in " ".join(k.cmdline())]


def _alive(procs):
    import psutil
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_loky_workers_die_with_a_killed_parent(tmp_path):
    pytest.importorskip("psutil")
    cmd = [sys.executable, "-m", "bench", "run", "--config", str(_pipeline(tmp_path)), *QUIET[:5],
           "parallel.n_jobs=2", "protocol.n_splits=3", "classifiers=[{name: sleepy_knn, params: {sleep: 120}}]",
           "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.5)
            workers = _loky_workers(proc.pid)
        assert len(workers) >= 2, (proc.poll(), proc.stderr.read().decode()[-2000:] if proc.poll() else "")
        time.sleep(1.0)  # the workers are in the sleeping fit
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.time()
        while time.time() - t0 < 10 and _alive(workers):
            time.sleep(0.25)
        assert not _alive(workers), f"{len(_alive(workers))} loky workers outlived the killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in _alive(workers):  # only the workers this test started
            w.kill()

"""The command line as a user meets it: exit codes, one-line errors, the smoke pipeline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(*args, cwd=REPO, env_extra=None, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _assert_user_error(p, *words):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    err = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1, p.stderr
    assert any(l.startswith("hint:") for l in p.stderr.splitlines()), p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)


def _tree(root: Path, classes: dict) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        d = root / cls
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def test_help_has_examples():
    p = bench("run", "--help")
    assert p.returncode == 0 and "examples:" in p.stdout and "dataset.n_per_class" in p.stdout
    for cmd in ("list", "report", "compare", "perf", "cache"):
        assert "examples:" in bench(cmd, "--help").stdout


def test_list_shows_every_axis_with_descriptions():
    p = bench("list")
    assert p.returncode == 0, p.stderr
    for name in ("synthetic-parcel", "folder", "digits", "faces", "hog", "lbp", "glcm", "sift_bovw",
                 "color_hist", "granulometry", "parcel_shape", "concat", "cnn", "svm", "linear_svm",
                 "random_forest", "mlp", "knn", "logreg", "mobilenetv2", "resnet50"):
        lines = [l for l in p.stdout.splitlines() if l.strip().startswith(name + " ")]
        assert lines and len(lines[0].split()) > 2, (name, p.stdout)


@pytest.mark.parametrize("args, words", [
    (["features=[hgo]"], ["unknown feature 'hgo'", "did you mean 'hog'"]),
    (["clasifiers=[svm]"], ["did you mean 'classifiers'"]),
    (["dataset.kind=folder", "dataset.path=/no/such/folder"], ["/no/such/folder"]),
])
def test_user_mistakes_exit_2_with_one_line(args, words, tmp_path):
    p = bench("run", "--config", "pipelines/smoke.yaml", f"output.results_dir={tmp_path}", *args)
    _assert_user_error(p, *words)


def test_empty_class_and_single_class(tmp_path):
    root = _tree(tmp_path / "data", {"a": 6, "b": 6})
    (root / "empty").mkdir()
    p = bench("run", "--config", "pipelines/smoke.yaml", "dataset.kind=folder",
              f"dataset.path={root}", f"output.results_dir={tmp_path}")
    _assert_user_error(p, "empty")
    one = _tree(tmp_path / "one", {"only": 8})
    p = bench("run", "--config", "pipelines/smoke.yaml", "dataset.kind=folder",
              f"dataset.path={one}", f"output.results_dir={tmp_path}")
    _assert_user_error(p, "class")


def test_report_on_non_run_folder(tmp_path):
    _assert_user_error(bench("report", str(tmp_path)), "not a run folder")


def test_smoke_pipeline_end_to_end(tmp_path):
    res, rep = tmp_path / "results", tmp_path / "reports"
    p = bench("run", "--config", "pipelines/smoke.yaml", f"output.results_dir={res}",
              f"output.reports_dir={rep}")
    assert p.returncode == 0, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("report: ") and last.endswith("report.html")
    run_dir = next(res.iterdir())
    recs = [json.loads(l) for l in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 3 * 2 * 3 and all(r["status"] == "ok" for r in recs)
    for name in ("config.yaml", "env.json", "splits.json", "summary.csv", "run.log", "dataset.json"):
        assert (run_dir / name).exists(), name
    assert (rep / run_dir.name / "report.html").exists()
    assert (rep / run_dir.name / "summary.pdf").exists()
    # leaderboard printed
    assert "macro" in p.stdout.lower()
    # the same command again: nothing recomputed, records unchanged
    before = (run_dir / "records.jsonl").read_bytes()
    p2 = bench("run", "--config", "pipelines/smoke.yaml", f"output.results_dir={res}",
               f"output.reports_dir={rep}")
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert (run_dir / "records.jsonl").read_bytes() == before


def test_missing_imagenet_weights_error_exits_2(tmp_path):
    p = bench("run", "--config", "pipelines/smoke.yaml", f"output.results_dir={tmp_path}",
              "features=[{name: cnn, params: {backbone: mobilenetv2, input_size: 32}}]",
              "on_missing_weights=error", env_extra={"KERAS_HOME": str(tmp_path / "keras")})
    _assert_user_error(p, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels", str(tmp_path / "keras"))

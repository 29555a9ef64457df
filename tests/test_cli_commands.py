"""The commands of the README succeeding, with what they write checked: run --new, report
--format --out, compare, perf, cache info|clear, and the run log of skipped bad images.

They run ``bench.cli.main`` in this process (tests/run_helpers.py: run_cli) on a pipeline
file written here; tests/test_cli.py runs ``python -m bench`` in a subprocess."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_helpers import make_tree  # noqa: E402
from run_helpers import PLUGIN, run_cli  # noqa: E402


def _pipeline(tmp_path, name="toy", **over) -> Path:
    """A pipeline file on the plugin dataset, results, reports and cache under ``tmp_path``."""
    cfg = {"name": name, "plugins": [PLUGIN], "dataset": {"kind": "toy-blobs", "n_per_class": 8},
           "features": ["column_profile"], "classifiers": ["logreg", "knn"],
           "protocol": {"kind": "kfold", "n_splits": 3},
           "parallel": {"n_jobs": 1}, "cache": {"dir": str(tmp_path / "cache")},
           "output": {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
                      "formats": []},
           "report": {"tsne": False, "learning_curves": False, "gallery": 0, "retrieval": False}}
    for k, v in over.items():   # sections are merged, except the dataset (a new kind: its own keys)
        cfg[k] = {**cfg[k], **v} if k != "dataset" and isinstance(cfg.get(k), dict) else v
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _last_path(out: str, key: str) -> Path:
    line = [l for l in out.splitlines() if l.startswith(f"{key}: ")][-1]
    return Path(line.split(": ", 1)[1])


def test_run_prints_the_leaderboard_and_new_starts_a_fresh_folder(tmp_path):
    cfg = _pipeline(tmp_path)
    p = run_cli("-q", "run", "--config", cfg)
    assert p.returncode == 0, p
    first = _last_path(p.stdout, "results")
    assert first.parent == tmp_path / "results" and first.name.startswith("toy-")
    assert "column_profile" in p.stdout and "macro" in p.stdout.lower()
    summary = pd.read_csv(first / "summary.csv")
    assert sorted(summary["classifier"]) == ["knn", "logreg"]
    before = (first / "records.jsonl").read_bytes()
    assert len(before.splitlines()) == 6
    p = run_cli("-q", "run", "--config", cfg, "--new")
    assert p.returncode == 0, p
    fresh = _last_path(p.stdout, "results")
    assert fresh != first and fresh.name.startswith(first.name + "-")   # <name>-<hash>-<date>-<time>
    assert re.fullmatch(re.escape(first.name) + r"-\d{8}-\d{6}", fresh.name)
    assert len((fresh / "records.jsonl").read_bytes().splitlines()) == 6
    assert (first / "records.jsonl").read_bytes() == before              # the old run is untouched
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted([first.name, fresh.name])


def test_report_format_and_out(tmp_path):
    p = run_cli("-q", "run", "--config", _pipeline(tmp_path))
    run_dir = _last_path(p.stdout, "results")
    out = tmp_path / "elsewhere" / "html-only"
    p = run_cli("-q", "report", run_dir, "--format", "html", "--out", out)
    assert p.returncode == 0, p
    assert _last_path(p.stdout, "report") == out / "report.html"
    assert (out / "report.html").stat().st_size > 10_000
    assert not (out / "report.pdf").exists() and not (out / "summary.pdf").exists()
    html = (out / "report.html").read_text()
    assert "column_profile" in html and "StratifiedKFold(n_splits=3)" in html
    board = pd.read_csv(out / "tables" / "leaderboard.csv")
    assert len(board) == 2
    pdf_out = tmp_path / "pdf-only"
    p = run_cli("-q", "report", run_dir, "--format", "pdf", "--out", pdf_out)
    assert p.returncode == 0, p
    assert (pdf_out / "report.pdf").read_bytes()[:5] == b"%PDF-" and (pdf_out / "summary.pdf").is_file()
    assert not (pdf_out / "report.html").exists()
    assert _last_path(p.stdout, "report") == pdf_out / "report.pdf"


def test_compare_two_runs(tmp_path):
    a = _last_path(run_cli("-q", "run", "--config", _pipeline(tmp_path, "blobs")).stdout, "results")
    b = _last_path(run_cli("-q", "run", "--config", _pipeline(
        tmp_path, "points", dataset={"kind": "toy-points", "n_per_class": 9})).stdout, "results")
    out = tmp_path / "cmp"
    p = run_cli("-q", "compare", a, b, "--out", out)
    assert p.returncode == 0, p
    assert _last_path(p.stdout, "report") == out / "report.html"
    html = (out / "report.html").read_text()
    assert "toy-blobs" in html and "toy-points" in html and "Average ranks" in html
    joined = pd.read_csv(out / "tables" / "joined-leaderboard.csv")
    assert len(joined) == 4 and set(joined["Dataset"]) == {"toy-blobs", "toy-points"}
    ranks = pd.read_csv(out / "tables" / "ranks-compare.csv")
    assert len(ranks) == 2 and ranks["Average rank"].between(1, 2).all()
    assert ranks["Average rank"].sum() == pytest.approx(3.0)            # ranks 1 and 2 per dataset
    assert (out / "report.pdf").is_file() and (out / "summary.pdf").is_file()


def test_cache_info_and_clear(tmp_path):
    cfg = _pipeline(tmp_path, features=["column_profile", "lbp"])
    assert run_cli("-q", "run", "--config", cfg).returncode == 0
    cache = tmp_path / "cache"
    entries = list((cache / "features").glob("*.json"))
    assert len(entries) == 2
    p = run_cli("cache", "info", "--dir", cache)
    assert p.returncode == 0, p
    info = dict(l.split(": ", 1) for l in p.stdout.strip().splitlines())
    assert info["cache"] == str(cache) and info["entries"] == "2"
    size = sum(f.stat().st_size for f in (cache / "features").iterdir())
    assert info["size"] == f"{size / 1e6:.1f} MB"
    p = run_cli("cache", "clear", "--dir", cache)
    assert p.returncode == 0 and p.stdout.strip() == f"removed 2 entries from {cache}"
    assert not (cache / "features").exists()
    assert "entries: 0" in run_cli("cache", "info", "--dir", cache).stdout


def test_perf_quick_writes_its_table(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    p = run_cli("perf", "--only", "handcrafted", "--quick", "--write", out)
    assert p.returncode == 0, p
    names = ("hog", "lbp", "glcm", "sift", "sift_detect", "color_hist", "granulometry")
    printed = re.findall(r"^\[handcrafted\] (\w+): ([\d.]+)x \(bench ([\d.]+) s, baseline ([\d.]+) s\)",
                         p.stdout, re.M)
    assert [n for n, *_ in printed] == list(names)
    for _, ratio, b, base in printed:                  # timings: only their presence is checked
        assert float(ratio) > 0 and float(b) > 0 and float(base) > 0
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "## Hand-crafted extractors against the plain per-image scikit-image call" in text
    assert "`python -m bench perf --only handcrafted --quick`" in text
    rows = [l for l in text.splitlines() if l.startswith("| ") and not l.startswith("| what")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(names)
    assert all("n_images=" in r and "size=128" in r for r in rows)
    assert f"written: {out}" in p.stdout


def test_bad_images_are_skipped_and_listed_in_the_run_log(tmp_path):
    data = tmp_path / "data"
    make_tree(data, classes=("a", "b"), n=6, shape=(20, 20))
    (data / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (data / "b" / "empty.jpg").write_bytes(b"")
    cfg = _pipeline(tmp_path, "folder", dataset={"kind": "folder", "path": str(data)}, plugins=[],
                    features=["lbp"], on_bad_image="skip")
    p = run_cli("run", "--config", cfg)
    assert p.returncode == 0, p
    run_dir = _last_path(p.stdout, "results")
    log = (run_dir / "run.log").read_text()
    lines = [l for l in log.splitlines() if "unreadable images were skipped" in l]
    assert len(lines) == 1, f"run.log does not list the skipped images:\n{log[-2000:]}"
    line = lines[0]
    assert "WARNING" in line and line.count("broken.png") == 1 and line.count("empty.jpg") == 1
    assert "2 unreadable images" in line
    ds = json.loads((run_dir / "dataset.json").read_text())
    assert sorted(Path(p).name for p, _ in ds["bad_images"]) == ["broken.png", "empty.jpg"]
    assert ds["n_images"] == 12 and not any("broken" in i or "empty" in i for i in ds["ids"])
    recs = [json.loads(l) for l in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(r["status"] == "ok" and r["n_train"] + r["n_test"] == 12 for r in recs)
    # without skip the same folder stops the run, naming a file
    cfg = _pipeline(tmp_path, "strict", dataset={"kind": "folder", "path": str(data)}, plugins=[],
                    features=["lbp"])
    p = run_cli("run", "--config", cfg)
    assert p.returncode == 2 and "broken.png" in p.stderr and "on_bad_image" in p.stderr
    assert np.any([l.startswith("hint:") for l in p.stderr.splitlines()])

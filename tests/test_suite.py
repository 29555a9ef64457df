"""Suites: ``datasets: [...]`` in one pipeline, one run folder per dataset, one suite report."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import records
from bench.cli import main
from bench.config import config_hash, load_config
from bench.errors import ConfigError

FAST = {"features": ["lbp", "hog"], "classifiers": ["logreg", "knn"], "finetune": [],
        "report": {"tsne": False, "learning_curves": False, "gallery": 0, "retrieval": False}}


def small_npz(path):
    rng = np.random.default_rng(0)

    def part(n):
        y = np.arange(n) % 2
        x = rng.normal(100, 15, (n, 16, 16))
        for i, c in enumerate(y):
            x[i, :, (c * 8):(c * 8 + 8)] += 80
        return np.clip(x, 0, 255).astype(np.uint8), y
    (xa, ya), (xb, yb) = part(40), part(20)
    np.savez_compressed(path, train_images=xa, train_labels=ya, test_images=xb, test_labels=yb)
    return path


def write_suite(tmp_path, datasets, **top):
    cfg = {"name": "tiny-suite", **FAST, "datasets": datasets, "protocol": {"n_splits": 3},
           "output": {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
                      "formats": ["html"]},
           "cache": {"dir": str(tmp_path / "cache")}, "parallel": {"n_jobs": 1}, **top}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_suite_runs_every_dataset_and_reports_ranks(tmp_path, capsys):
    npz = small_npz(tmp_path / "tiny.npz")
    path = write_suite(tmp_path, [
        {"kind": "digits", "max_per_class": 8},
        {"kind": "faces", "max_per_class": 9, "protocol": {"n_splits": 3}, "prepare": {"size": [32, 32]}},
        {"kind": "npz", "path": str(npz), "label": "stripes", "protocol": {"kind": "predefined"}},
    ])
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    suite_dir = next((tmp_path / "results").glob("tiny-suite-*"))
    assert sorted(p.name for p in suite_dir.iterdir() if p.is_dir()) == ["digits", "faces", "stripes"]
    status = json.loads((suite_dir / "suite.json").read_text())
    assert {k: v["status"] for k, v in status["datasets"].items()} == {
        "digits": "ok", "faces": "ok", "stripes": "ok"}
    # each dataset is an ordinary run folder, with its own prepare and protocol
    faces_cfg = yaml.safe_load((suite_dir / "faces" / "config.yaml").read_text())
    assert faces_cfg["prepare"]["size"] == [32, 32]
    assert faces_cfg["features"][0]["prepare"]["size"] == [32, 32]
    assert yaml.safe_load((suite_dir / "digits" / "config.yaml").read_text())["prepare"]["size"] is None
    assert json.loads((suite_dir / "stripes" / "splits.json").read_text())["kind"] == "predefined"
    n_cells = {d: len(records.load(suite_dir / d / "records.jsonl")) for d in ("digits", "faces", "stripes")}
    assert n_cells == {"digits": 12, "faces": 12, "stripes": 4}

    rep = tmp_path / "reports" / suite_dir.name
    scores = pd.read_csv(rep / "tables" / "scores-per-dataset.csv")
    assert list(scores.columns) == ["Row", "Family", "digits", "faces", "stripes", "Mean over datasets"]
    assert len(scores) == 4 and scores["digits"].str.match(r"\d+\.\d ± \d+\.\d").all()
    ranks = pd.read_csv(rep / "tables" / "ranks-compare.csv")
    assert len(ranks) == 4 and ranks["Average rank"].between(1, 4).all()
    # the average ranks follow from the per-dataset means (reference: scipy's rankdata)
    from scipy.stats import rankdata
    means = scores[["digits", "faces", "stripes"]].apply(lambda col: col.str.split(" ").str[0].astype(float))
    expect = dict(zip(scores["Row"], rankdata(-means.to_numpy(), axis=0).mean(axis=1)))
    for row, rank in zip(ranks["Row"], ranks["Average rank"]):
        assert rank == pytest.approx(expect[row], abs=0.006), row
    assert (rep / "figures" / "cd-compare.png").stat().st_size > 1000
    for d in ("digits", "faces", "stripes"):
        assert (rep / "tables" / f"leaderboard-{d}.csv").is_file()
    html = (rep / "report.html").read_text()
    assert "Friedman" in html and "official test split, n = 20" in html
    links = re.findall(r'<a href="([^"#][^"]*)">', html)
    assert sorted(links) == ["digits/report.html", "faces/report.html", "stripes/report.html"]
    assert all((rep / link).is_file() for link in links)
    assert f"report: {rep / 'report.html'}" in out

    # the same command resumes: nothing recomputed
    assert main(["run", "--config", str(path)]) == 0
    assert {d: len(records.load(suite_dir / d / "records.jsonl")) for d in n_cells} == n_cells


def test_a_failing_dataset_does_not_stop_the_others(tmp_path, capsys):
    path = write_suite(tmp_path, [{"kind": "folder", "path": str(tmp_path / "nowhere"), "label": "gone"},
                                  {"kind": "digits", "max_per_class": 6}])
    assert main(["run", "--config", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 datasets failed" in err and "gone" in err and "does not exist" in err
    suite_dir = next((tmp_path / "results").glob("tiny-suite-*"))
    status = json.loads((suite_dir / "suite.json").read_text())["datasets"]
    assert status["gone"]["status"] == "failed" and status["digits"]["status"] == "ok"
    assert len(records.load(suite_dir / "digits" / "records.jsonl")) == 12


def test_suite_config_expansion_and_errors(tmp_path):
    base = ["features=[hog]", "classifiers=[svm]", "prepare.color=gray", "protocol.n_splits=4"]
    cfg = load_config(None, base + ["datasets=[digits, {kind: faces, label: f, protocol: {kind: holdout}}]"])
    a, b = cfg["datasets"]
    assert (a["name"], b["name"]) == ("digits", "f") and cfg["dataset"] is None
    assert a["protocol"]["kind"] == "kfold" and b["protocol"] == {**a["protocol"], "kind": "holdout"}
    assert a["prepare"]["color"] == b["prepare"]["color"] == "gray"
    c2 = load_config(None, base + ["datasets=[digits, {kind: faces, label: f, protocol: {kind: holdout}}]",
                                   "datasets.1.max_per_class=5"])
    assert c2["datasets"][1]["dataset"]["max_per_class"] == 5 and config_hash(c2) != config_hash(cfg)
    with pytest.raises(ConfigError, match=r"datasets\[1\] \(digits\): protocol.kind: 'kfolds'"):
        load_config(None, base + ["datasets=[faces, {kind: digits, protocol: {kind: kfolds}}]"])
    with pytest.raises(ConfigError, match="label 'digits' is used by two datasets"):
        load_config(None, base + ["datasets=[digits, digits]"])
    with pytest.raises(ConfigError, match="both 'dataset' and 'datasets'"):
        load_config(None, base + ["datasets=[digits, faces]", "dataset.kind=faces"])
    with pytest.raises(ConfigError, match=r"datasets\[0\]: needs a 'kind'"):
        load_config(None, base + ["datasets=[{path: x}]"])
    with pytest.raises(ConfigError, match="a non-empty list"):
        load_config(None, base + ["datasets=[]"])


def test_list_datasets_shows_new_kinds_with_examples(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    for kind, example in (("npz", "dataset.kind=npz dataset.path="), ("manifest", "dataset.kind=manifest"),
                          ("folder", "dataset.kind=folder dataset.path=")):
        assert re.search(rf"^  {kind} .*\n.*e\.g\. python -m bench run {re.escape(example)}", out, re.M), kind
    assert "datasets: [" in out  # the suite form


def test_report_rebuilds_a_suite_folder(tmp_path, capsys):
    path = write_suite(tmp_path, [{"kind": "digits", "max_per_class": 6},
                                  {"kind": "faces", "max_per_class": 6}])
    assert main(["run", "--config", str(path), "--no-report"]) == 0
    suite_dir = next((tmp_path / "results").glob("tiny-suite-*"))
    assert not (tmp_path / "reports").exists()
    capsys.readouterr()
    out = tmp_path / "rebuilt"
    assert main(["report", str(suite_dir), "--out", str(out), "--format", "html"]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert (out / "digits" / "report.html").is_file() and (out / "faces" / "report.html").is_file()
    assert list(pd.read_csv(out / "tables" / "scores-per-dataset.csv").columns)[2:4] == ["digits", "faces"]

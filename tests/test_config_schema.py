"""Issue 11, "One config schema": one table of keys, defaults and allowed values, one "did
you mean", every key used (``protocol.metric`` included: inner search, ranking, captions)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from bench import config, schema
from bench.errors import ConfigError, did_you_mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import PLUGIN, run_cli  # noqa: E402

BENCH = Path(config.__file__).resolve().parent


def _modules():
    for path in sorted(BENCH.rglob("*.py")):
        yield path, ast.parse(path.read_text())


# --------------------------------------------------------------------------- one table
def test_defaults_and_choices_are_views_of_the_schema():
    assert set(config.DEFAULTS) == set(schema.SCHEMA[""])
    for sec in config.SECTIONS:
        assert config.DEFAULTS[sec] == schema.defaults(sec)
    assert config.CHOICES["protocol.metric"] == schema.METRICS
    assert config.CHOICES["parallel.backend"] == ("loky", "threading", "sequential", "dask")
    cfg = config.load_config(None, ["features=[hog]", "classifiers=[svm]"])
    for sec in config.SECTIONS:
        assert set(cfg[sec]) == set(schema.SCHEMA[sec]), sec


def test_finetune_defaults_come_from_the_schema():
    from bench import finetune
    s = finetune.validate_spec({"mode": "scratch"})
    for k, v in {**schema.defaults("finetune"), **schema.defaults("finetune.scratch")}.items():
        if k != "folds":
            assert s[k] == v, k
    f = finetune.validate_spec({"mode": "finetune", "backbone": "mobilenetv2"})
    assert f["epochs"] == schema.SCHEMA["finetune"]["epochs"].default
    assert f["unfreeze_blocks"] == schema.SCHEMA["finetune.finetune"]["unfreeze_blocks"].default
    assert f["finetune_lr"] == pytest.approx(f["lr"] / 10)
    with pytest.raises(ConfigError, match="not used by mode 'scratch'"):
        finetune.validate_spec({"mode": "scratch", "backbone": "mobilenetv2"})
    assert set(finetune._KEYS) == set(schema.keys("finetune"))


def test_count_defaults_come_from_the_schema(monkeypatch):
    from bench.counting import cnn, run
    opts = run._counting_options({}, 32)
    d = schema.defaults("count")
    assert opts["methods"] == [d["method"]] and opts["threshold"] == d["threshold"]
    assert opts["splits"] == d["splits"] and opts["batch_size"] == d["batch_size"]
    assert opts["mine_per_scene"] == d["mine_per_scene"] and opts["stride"] == 32 // 4  # DERIVED
    [c] = cnn.cnn_options({}, 32)
    for k, v in schema.defaults("count.cnn").items():
        assert c[k] == v, k
    assert c["tile"] == 64 and c["sigma"] == 4.0
    assert run.SPEC_KEYS == schema.keys("count") and run.METHODS == schema.COUNT_METHODS
    with pytest.raises(ConfigError, match="count.regression"):
        run._counting_options({"method": "regression", "regression": {"tiel": 3}}, 32)


def test_analysis_defaults_come_from_the_schema():
    from bench import analysis
    assert analysis.DEFAULT_GALLERY == schema.SCHEMA["report"]["gallery"].default
    assert analysis.DEFAULT_BUDGET_S == schema.SCHEMA["report"]["analysis_budget_s"].default
    assert tuple(analysis.LEARNING_FRACTIONS) == schema.ANALYSIS["learning_fractions"]


def test_count_keys_checked_up_front_with_did_you_mean():
    with pytest.raises(ConfigError) as exc:
        config.load_config(None, ["features=[hog]", "classifiers=[svm]", "count.methd=nms"])
    assert "count.methd" in exc.value.message and "did you mean 'method'" in exc.value.hint


# --------------------------------------------------------------------------- one "did you mean"
def test_one_did_you_mean():
    assert did_you_mean("hgo", ["hog", "lbp"]) == "did you mean 'hog'? "
    assert did_you_mean("zzz", ["hog", "lbp"]) == ""
    users = [p.relative_to(BENCH).as_posix() for p, tree in _modules()
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "difflib" in ast.unparse(n)
                    for n in ast.walk(tree))]
    assert users == ["errors.py"], users


# --------------------------------------------------------------------------- every key used
def test_every_section_key_is_read_outside_the_config_modules():
    literals = set()
    for path, tree in _modules():
        if path.name in ("schema.py", "config.py"):
            continue
        literals |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    unused = [f"{sec}.{k}" for sec in config.SECTIONS for k in schema.SCHEMA[sec] if k not in literals]
    unused += [k for k in schema.SCHEMA[""] if k not in literals]
    assert not unused, f"keys nothing reads: {unused}"


# --------------------------------------------------------------------------- protocol.metric
def _pipeline(tmp_path, **over):
    cfg = {"name": "m", "plugins": [PLUGIN], "dataset": {"kind": "toy-blobs", "n_per_class": 6},
           "features": ["column_profile"], "protocol": {"n_splits": 2},
           "classifiers": ["logreg", {"name": "knn", "params": {"n_neighbors": 1}}],
           "output": {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
                      "formats": ["html"]},
           "report": {"tsne": False, "learning_curves": False, "gallery": 0, "retrieval": False,
                      "explain": False},
           "parallel": {"n_jobs": 1}, "cache": {"dir": str(tmp_path / "cache")}, **over}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("metric, scoring", [("balanced_accuracy", "balanced_accuracy"),
                                             ("accuracy", "accuracy"), ("macro_f1", "f1_macro")])
def test_metric_scores_the_inner_search(tmp_path, monkeypatch, metric, scoring):
    from bench import cells
    seen = []

    class Spy(cells.GridSearchCV):
        def fit(self, *a, **k):
            seen.append(self.scoring)
            return super().fit(*a, **k)
    monkeypatch.setattr(cells, "GridSearchCV", Spy)
    res = run_cli("run", "--config", _pipeline(tmp_path), f"protocol.metric={metric}",
                  "classifiers=[{name: logreg, search: {C: [0.1, 10]}}]", "--no-report")
    assert res.returncode == 0, res
    assert seen and set(seen) == {scoring}


def _rec(feature, acc, f1, split):
    from bench import records as rec
    return rec.make_record(run_id="r", dataset="d", feature=feature, family="handcrafted", classifier="c",
                           split=split, repeat=0, fold=split, cell_id=f"{feature}-{split}", variant=None,
                           weights="n/a", status="ok", accuracy=acc, balanced_accuracy=acc, macro_f1=f1)


def test_metric_ranks_the_summary_and_the_leaderboard():
    from bench import aggregate
    recs = [_rec("acc-best", 0.9, 0.5, s) for s in range(2)] + [_rec("f1-best", 0.7, 0.8, s) for s in range(2)]
    assert aggregate.summarize(recs)["feature"].tolist() == ["f1-best", "acc-best"]
    assert aggregate.summarize(recs, "accuracy")["feature"].tolist() == ["acc-best", "f1-best"]
    text = aggregate.leaderboard_text(aggregate.summarize(recs), metric="accuracy")
    assert text.splitlines()[0] == "ranked by mean accuracy (protocol.metric)"
    assert text.index("acc-best") < text.index("f1-best")


def test_metric_drives_the_cli_leaderboard_summary_csv_and_report_captions(tmp_path):
    import pandas as pd
    res = run_cli("run", "--config", _pipeline(tmp_path), "protocol.metric=balanced_accuracy")
    assert res.returncode == 0, res
    assert "ranked by mean balanced accuracy (protocol.metric)" in res.stdout
    run_dir = next((tmp_path / "results").iterdir())
    s = pd.read_csv(run_dir / "summary.csv")
    assert s["balanced_accuracy_mean"].is_monotonic_decreasing
    html = next((tmp_path / "reports").rglob("report.html")).read_text()
    assert "Top rows by mean balanced accuracy" in html and "Ranked by mean balanced accuracy" in html

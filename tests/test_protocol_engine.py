"""The evaluation protocol as a run applies it (through ``bench.engine.run``): nested search,
holdout, grouping, the leak check, repeated splits, and what splits.json and the report say."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from bench import engine, report
from bench.errors import ConfigError
from bench.registry import DATASETS, FEATURES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import toy_config  # noqa: E402


def _plan(ctx, name="splits.json"):
    return json.loads((ctx.run_dir / name).read_text())


def _straddling(groups, plan) -> int:
    """Number of (split, group) pairs with images on both sides of the split."""
    return sum(len(set(groups[f["train"]]) & set(groups[f["test"]])) for f in plan["folds"])


# --------------------------------------------------------------------------- nested search
POINTS = ["dataset.kind=toy-points", "dataset.n_per_class=12", "features=[{name: column_profile, "
          "params: {bins: 2}}]"]


def test_search_picks_the_C_the_data_needs(tmp_path):
    """toy-points is separable only along x1 - x2, which a strongly regularised logistic
    regression (C = 1e-4) does not find: the nested search must choose C = 1e4 in every split."""
    ctx = engine.run(toy_config(tmp_path, *POINTS, "classifiers=[{name: logreg, label: tuned, "
                                "search: {C: [0.0001, 10000]}}, {name: logreg, label: tiny-C, "
                                "params: {C: 0.0001}}]"))
    rs = ctx.records()
    tuned = [r for r in rs if r["classifier"] == "tuned"]
    tiny = [r for r in rs if r["classifier"] == "tiny-C"]
    assert len(tuned) == len(tiny) == 3 and all(r["status"] == "ok" for r in rs)
    for r in tuned:
        params = json.loads(r["params"])
        assert params["search"] == {"C": [0.0001, 10000]}
        assert params["best_params"] == {"C": 10000}
    assert all(json.loads(r["params"])["best_params"] is None for r in tiny)
    mean = lambda rows: np.mean([r["macro_f1"] for r in rows])
    assert mean(tuned) > 0.9 and mean(tuned) > mean(tiny) + 0.25


def test_search_inner_cv_keeps_groups_together(tmp_path, monkeypatch):
    """With grouped data the inner folds of the search are grouped too: no group has images in
    both the inner training and the inner validation part (checked on the rows the search got)."""
    calls = []
    real_fit = GridSearchCV.fit

    def spy_fit(self, X, y=None, **params):
        calls.append((np.array(X, copy=True), np.asarray(y).copy(), params.get("groups"), self.cv))
        return real_fit(self, X, y, **params)

    monkeypatch.setattr(GridSearchCV, "fit", spy_fit)
    ctx = engine.run(toy_config(tmp_path, *POINTS, "dataset.n_groups=6",
                                "classifiers=[{name: logreg, search: {C: [0.01, 100]}}]"))
    assert all(r["status"] == "ok" for r in ctx.records())
    plan = _plan(ctx)
    assert plan["grouped"]
    ds = DATASETS.create("toy-points", n_per_class=12, n_groups=6)
    X_all = FEATURES.create("column_profile", bins=2).transform([ds.load(i) for i in range(len(ds))])
    row_of = {x.tobytes(): i for i, x in enumerate(X_all)}
    assert len(row_of) == len(ds) and len(calls) == len(plan["folds"])
    for (X, y, groups, cv), split in zip(calls, plan["folds"]):
        idx = np.array([row_of[x.tobytes()] for x in X.astype(np.float32)])
        np.testing.assert_array_equal(np.sort(idx), split["train"])     # outer training rows only
        true_groups = ds.groups[idx]
        assert groups is not None, "the search was not given the groups"
        np.testing.assert_array_equal(groups, true_groups)
        inner = list(cv.split(X, y, true_groups))
        assert len(inner) == 3
        for tr, va in inner:
            assert not set(true_groups[tr]) & set(true_groups[va]), "a group on both sides of an inner split"


# --------------------------------------------------------------------------- holdout, repeats
def test_holdout_uses_the_stated_test_size(tmp_path):
    ctx = engine.run(toy_config(tmp_path, "dataset.n_per_class=10", "protocol.kind=holdout",
                                "protocol.test_size=0.3", "protocol.n_repeats=2"))
    plan = _plan(ctx)
    assert plan["splitter"] == "StratifiedShuffleSplit(test_size=0.3) x 2 repeats"
    assert not plan["grouped"] and len(plan["folds"]) == 2
    labels = np.repeat(np.arange(3), 10)
    for f in plan["folds"]:
        assert len(f["test"]) == 9 and len(f["train"]) == 21            # ceil(0.3 * 30) test images
        assert sorted(f["train"] + f["test"]) == list(range(30))
        assert np.bincount(labels[f["test"]]).tolist() == [3, 3, 3]     # stratified
    assert plan["folds"][0]["test"] != plan["folds"][1]["test"]         # each repeat its own draw
    rs = ctx.records()
    assert len(rs) == 2 and all(r["n_test"] == 9 and r["n_train"] == 21 for r in rs)
    assert {(r["split"], r["repeat"], r["fold"]) for r in rs} == {(0, 0, 0), (1, 1, 0)}


def test_grouped_holdout_keeps_groups_on_one_side(tmp_path):
    ctx = engine.run(toy_config(tmp_path, "dataset.n_per_class=10", "dataset.n_groups=10",
                                "protocol.kind=holdout", "protocol.test_size=0.3"))
    plan = _plan(ctx)
    assert plan["grouped"] and plan["splitter"] == "GroupShuffleSplit(test_size=0.3)"
    groups = np.arange(30) % 10
    assert _straddling(groups, plan) == 0
    assert len(set(groups[plan["folds"][0]["test"]])) == 3              # 30 % of the 10 groups


def test_repeated_kfold_reshuffles_each_repeat_and_follows_the_seed(tmp_path):
    a = _plan(engine.run(toy_config(tmp_path / "a", "protocol.n_repeats=2")))
    again = _plan(engine.run(toy_config(tmp_path / "again", "protocol.n_repeats=2")))
    other_seed = _plan(engine.run(toy_config(tmp_path / "b", "protocol.n_repeats=2", "seed=1")))
    assert a == again                                                   # same seed, same splits
    tests = lambda plan, r: sorted(tuple(f["test"]) for f in plan["folds"] if f["repeat"] == r)
    assert len(a["folds"]) == 6 and tests(a, 0) != tests(a, 1)
    assert tests(a, 0) != tests(other_seed, 0)
    for r in (0, 1):                                                    # each repeat is a partition
        assert sorted(i for t in tests(a, r) for i in t) == list(range(24))


# --------------------------------------------------------------------------- grouping
GROUPED = ["dataset.n_groups=6"]


@pytest.mark.parametrize("group", ["auto", "true"])
def test_groups_are_used_when_present(tmp_path, group):
    ctx = engine.run(toy_config(tmp_path, *GROUPED, f"protocol.group={group}"))
    plan = _plan(ctx)
    assert plan["grouped"] and plan["splitter"] == "StratifiedGroupKFold(n_splits=3)"
    assert json.loads((ctx.run_dir / "dataset.json").read_text())["grouped"]
    assert _straddling(np.arange(24) % 6, plan) == 0


def test_group_false_ignores_the_groups(tmp_path):
    ctx = engine.run(toy_config(tmp_path, *GROUPED, "protocol.group=false"))
    plan = _plan(ctx)
    assert not plan["grouped"] and plan["splitter"] == "StratifiedKFold(n_splits=3)"
    assert _straddling(np.arange(24) % 6, plan) > 0                      # groups split freely
    assert not json.loads((ctx.run_dir / "dataset.json").read_text())["grouped"]


def test_group_true_without_groups_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="protocol.group"):
        engine.run(toy_config(tmp_path, "protocol.group=true"))


def test_leak_check_adds_labelled_random_split_rows_shown_in_the_report(tmp_path):
    """``leak_check`` on grouped data: every cell again on ungrouped splits, recorded as
    variant ``random-split``, listed unranked in the report, whose header says the main
    splits are grouped."""
    ctx = engine.run(toy_config(tmp_path, *GROUPED, "protocol.leak_check=true",
                                "classifiers=[logreg, knn]"))
    rs = ctx.records()
    main = [r for r in rs if r["variant"] is None]
    leak = [r for r in rs if r["variant"] == "random-split"]
    assert len(main) == len(leak) == 2 * 3 and len(rs) == 12
    assert {r["cell_id"] for r in main}.isdisjoint({r["cell_id"] for r in leak})
    rand = _plan(ctx, "splits_random.json")
    assert not rand["grouped"] and rand["splitter"] == "StratifiedKFold(n_splits=3)"
    assert _straddling(np.arange(24) % 6, rand) > 0
    for r in leak:
        assert r["n_test"] == len(rand["folds"][r["split"]]["test"]) and r["status"] == "ok"
    assert _plan(ctx)["grouped"]

    html = report.build(ctx.run_dir, tmp_path / "report", formats=("html",))["html"].read_text()
    assert "StratifiedGroupKFold(n_splits=3): 3 folds" in html
    assert "grouped by source image (no source image in both train and test)" in html
    board = html[html.index('id="t-leaderboard"'):]
    body = board[board.index("<tbody>"):board.index("</tbody>")]
    rows = re.findall(r'<tr(?: class="([^"]*)")?>(.*?)</tr>', body, re.S)
    cells = [(cls, re.findall(r"<td[^>]*>([^<]*)", tr)) for cls, tr in rows]
    variant = [(cls, c) for cls, c in cells if c[1] == "column_profile (random-split)"]
    ranked = [(cls, c) for cls, c in cells if c[1] == "column_profile"]
    assert sorted(c[3] for _, c in variant) == sorted(c[3] for _, c in ranked) == ["knn", "logreg"]
    assert all("variant" in cls.split() and c[0] == "" for cls, c in variant)   # shown apart, unranked
    assert sorted(c[0] for _, c in ranked) == ["1", "2"]


def test_leak_check_needs_grouped_splits(tmp_path):
    rs = engine.run(toy_config(tmp_path, "protocol.leak_check=true")).records()
    assert len(rs) == 3 and all(r["variant"] is None for r in rs)

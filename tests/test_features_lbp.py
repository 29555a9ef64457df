"""LBP: codes equal scikit-image's, histograms sum to one, rotation invariance."""
import warnings

import cv2
import numpy as np
import pytest
from skimage.feature import local_binary_pattern
from sklearn.base import clone

from bench.errors import ConfigError
from bench.features.lbp import LBPHistogram, lbp_codes, n_bins
from bench.registry import FEATURES


def images(seed=0):
    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (37, 41), dtype=np.uint8), (5, 5), 1.5)
    smooth[:15, :12] = 7                                    # flat patch: ties decided by float rounding
    return [smooth,
            rng.integers(0, 4, (30, 29)).astype(np.uint8),  # few levels: many ties
            rng.integers(0, 256, (3, 4), dtype=np.uint8),   # smaller than the circle
            (rng.random((25, 33)) * 1000).astype(np.uint16)]


@pytest.mark.parametrize("method", ["uniform", "nri_uniform", "ror", "default"])
@pytest.mark.parametrize("P", [4, 8, 16])
def test_codes_equal_skimage(method, P):
    for im in images():
        for R in (1, 1.5, 2, 3, 0.7):
            ours = lbp_codes(im, P, R, method)
            ref = local_binary_pattern(im, P, R, method)
            np.testing.assert_array_equal(ours, ref, err_msg=f"{method} P={P} R={R}")


def test_codes_equal_skimage_many_points_and_float_input():
    im = images()[0]
    np.testing.assert_array_equal(lbp_codes(im, 24, 3, "uniform"), local_binary_pattern(im, 24, 3, "uniform"))
    f = np.random.default_rng(1).random((20, 22))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about float images
        ref = local_binary_pattern(f, 8, 1.5, "uniform")
    np.testing.assert_array_equal(lbp_codes(f, 8, 1.5, "uniform"), ref)
    assert lbp_codes(im, 8, 1, "riu2").tolist() == lbp_codes(im, 8, 1, "uniform").tolist()


@pytest.mark.parametrize("method, P", [("uniform", 8), ("ror", 8), ("nri_uniform", 8), ("default", 4),
                                       ("uniform", 16)])
def test_histograms_equal_skimage_histograms(method, P):
    radii = (1, 2, 3)
    ims = images(2)[:2]
    X = LBPHistogram(radii=radii, points=P, method=method).transform(ims)
    for x, im in zip(X, ims):
        ref = []
        for r in radii:
            codes = local_binary_pattern(im, P, r, method)
            if method == "ror":  # one bin per possible rotation-invariant code, in increasing order
                mask = 2 ** P - 1
                rot = [min(((c >> k) | (c << (P - k))) & mask for k in range(P)) for c in range(2 ** P)]
                values = np.unique(rot)
                ref.append((codes.ravel()[:, None] == values[None]).sum(0) / codes.size)
            else:
                ref.append(np.histogram(codes, bins=n_bins(P, method), range=(0, n_bins(P, method)))[0]
                           / codes.size)
        np.testing.assert_allclose(x, np.concatenate(ref), rtol=0, atol=1e-7)


def test_histograms_sum_to_one_per_radius():
    e = LBPHistogram(radii=(1, 2.5, 3), points=(8, 12, 16), method="uniform")
    X = e.transform(images(3))
    sizes = [10, 14, 18]
    assert X.shape == (4, sum(sizes)) == (4, e.n_features()) and X.dtype == np.float32
    start = 0
    for s in sizes:
        np.testing.assert_allclose(X[:, start:start + s].sum(1), 1.0, atol=1e-6)
        start += s


@pytest.mark.parametrize("method", ["uniform", "ror"])
def test_rotation_invariant_variants_unchanged_by_90_degree_rotation(method):
    rng = np.random.default_rng(4)
    ims = [rng.integers(0, 256, (48, 52), dtype=np.uint8), images()[0]]
    e = LBPHistogram(radii=(1, 2, 3), points=8, method=method)
    A = e.transform(ims)
    for k in (1, 2, 3):
        B = e.transform([np.rot90(im, k) for im in ims])
        # interpolated neighbours map onto each other; measured difference 0
        np.testing.assert_allclose(A, B, atol=2e-3)
    # the non-invariant code does change
    d = LBPHistogram(radii=(1,), points=8, method="default")
    assert np.abs(d.transform(ims[:1]) - d.transform([np.rot90(ims[0])])).max() > 1e-3


def test_batching_does_not_change_results():
    rng = np.random.default_rng(5)
    ims = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(20)] + \
          [rng.integers(0, 256, (30, 45), dtype=np.uint8)] + [rng.integers(0, 256, (64, 64), dtype=np.uint8)]
    e = LBPHistogram(radii=(1, 3), points=(8, 16))
    together = e.transform(ims)
    alone = np.vstack([e.transform([im]) for im in ims])
    np.testing.assert_array_equal(together, alone)


def test_inputs_of_any_kind_and_size():
    rng = np.random.default_rng(6)
    ims = [rng.integers(0, 256, (20, 30), dtype=np.uint8),
           rng.integers(0, 256, (40, 35, 3), dtype=np.uint8),
           rng.integers(0, 65535, (25, 25), dtype=np.uint16),
           rng.random((30, 30)),
           (700 + 300 * rng.random((30, 30))).astype(np.float32)]
    X = LBPHistogram().transform(ims)
    assert X.shape == (5, 30) and X.dtype == np.float32 and np.isfinite(X).all()
    assert LBPHistogram().transform([]).shape == (0, 30)


def test_errors_and_sklearn_contract():
    im = images()[0]
    with pytest.raises(ConfigError):
        LBPHistogram(method="var").transform([im])
    with pytest.raises(ConfigError):
        LBPHistogram(method="ror", points=24).transform([im])
    with pytest.raises(ConfigError):
        LBPHistogram(radii=(1, 2), points=(8, 8, 8)).transform([im])
    with pytest.raises(ConfigError):
        LBPHistogram(radii=(0,)).transform([im])
    e = FEATURES.create("lbp", radii=[1, 2], points=8, method="riu2")
    c = clone(e)
    assert c.get_params() == e.get_params() and e.family == "handcrafted"
    np.testing.assert_array_equal(c.fit([im]).transform([im]), e.transform([im]))
    assert n_bins(8, "ror") == 36 and n_bins(8, "nri_uniform") == 59 and n_bins(8, "uniform") == 10

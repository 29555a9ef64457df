"""GLCM: matrices and Haralick properties equal scikit-image's."""
import cv2
import numpy as np
import pytest
from skimage.feature import graycomatrix as sk_graycomatrix
from skimage.feature import graycoprops
from sklearn.base import clone

from bench.errors import ConfigError
from bench.features.glcm import GLCM, PROPERTIES, glcm_properties, graycomatrix, quantize
from bench.registry import FEATURES

ANGLES = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4, 5 * np.pi / 6, np.pi, 1.3 * np.pi]
DISTANCES = [1, 2, 5, 50]  # 50: larger than the images -> empty matrices


def image(levels, shape, seed=0):
    return np.random.default_rng(seed).integers(0, levels, shape).astype(np.uint8)


@pytest.mark.parametrize("levels", [4, 32, 256])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (40, 37)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("normed", [False, True])
def test_matrix_equals_skimage(levels, shape, symmetric, normed):
    im = image(levels, shape)
    ours = graycomatrix(im, DISTANCES, ANGLES, levels, symmetric, normed)
    ref = sk_graycomatrix(im, DISTANCES, ANGLES, levels, symmetric, normed)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("levels", [4, 32, 256])
@pytest.mark.parametrize("symmetric", [False, True])
def test_properties_equal_skimage(levels, symmetric):
    for shape in [(1, 1), (3, 5), (40, 37)]:
        im = image(levels, shape, seed=1)
        ours = glcm_properties(im, DISTANCES, ANGLES, levels, symmetric, PROPERTIES)
        P = sk_graycomatrix(im, DISTANCES, ANGLES, levels, symmetric)
        for q, prop in enumerate(PROPERTIES):
            np.testing.assert_allclose(ours[q], graycoprops(P, prop), rtol=1e-9, atol=1e-9,
                                       err_msg=f"{prop} {shape}")


@pytest.mark.parametrize("symmetric", [False, True])
def test_properties_of_degenerate_images_equal_skimage(symmetric):
    flat = np.full((20, 20), 200, np.uint8)
    almost = flat.copy()
    almost[3, 4] = 201                                         # tiny variance: cancellation-prone
    stripes = np.tile(np.array([0, 255], np.uint8), (16, 8))   # perfectly (anti)correlated
    for im in (flat, almost, stripes):
        ours = glcm_properties(im, [1, 2], [0, np.pi / 2], 256, symmetric, PROPERTIES)
        P = sk_graycomatrix(im, [1, 2], [0, np.pi / 2], 256, symmetric)
        for q, prop in enumerate(PROPERTIES):
            np.testing.assert_allclose(ours[q], graycoprops(P, prop), rtol=1e-9, atol=1e-9, err_msg=prop)


def test_extractor_equals_skimage_pipeline():
    rng = np.random.default_rng(2)
    ims = [cv2.GaussianBlur(rng.integers(0, 256, (48, 50), dtype=np.uint8), (5, 5), 1.2) for _ in range(3)]
    props = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM", "entropy")
    for levels in (256, 32):
        e = GLCM(levels=levels, distances=(1, 3), angles=(0, 45, 90, 135), symmetric=True, props=props)
        X = e.transform(ims)
        assert X.shape == (3, len(props) * 2 * 4) == (3, e.n_features()) and X.dtype == np.float32
        for x, im in zip(X, ims):
            q = (im.astype(int) * levels // 256).astype(np.uint8)
            np.testing.assert_array_equal(quantize(im, levels), q)
            P = sk_graycomatrix(q, [1, 3], np.deg2rad([0, 45, 90, 135]), levels, symmetric=True, normed=True)
            ref = np.concatenate([graycoprops(P, p).ravel() for p in props])
            np.testing.assert_allclose(x, ref.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_angle_convention_and_average():
    # 90 degrees = one row down (scikit-image's offset), 0 = one column right
    im = np.array([[0, 1], [2, 3]], np.uint8)
    P = graycomatrix(im, [1], np.deg2rad([0, 90]), 4)
    assert P[0, 1, 0, 0] == 1 and P[2, 3, 0, 0] == 1 and P.sum() == 4
    assert P[0, 2, 0, 1] == 1 and P[1, 3, 0, 1] == 1
    e = GLCM(levels=16, distances=(1, 2), angles=(0, 45, 90, 135), average_angles=True)
    ims = [image(256, (30, 30), s) for s in range(2)]
    full = GLCM(levels=16, distances=(1, 2), angles=(0, 45, 90, 135)).transform(ims).reshape(2, 6, 2, 4)
    np.testing.assert_allclose(e.transform(ims), full.mean(axis=3).reshape(2, -1), rtol=1e-6)


def test_inputs_of_any_kind_and_size():
    rng = np.random.default_rng(3)
    ims = [rng.integers(0, 256, (20, 30), dtype=np.uint8),
           rng.integers(0, 256, (40, 35, 3), dtype=np.uint8),
           rng.integers(0, 65535, (25, 25), dtype=np.uint16),
           rng.random((30, 30)),
           (700 + 300 * rng.random((30, 30))).astype(np.float32),
           np.zeros((2, 2), np.uint8)]
    X = GLCM().transform(ims)
    assert X.shape == (6, 6 * 3 * 4) and X.dtype == np.float32 and np.isfinite(X).all()
    assert GLCM().transform([]).shape == (0, 72)


def test_errors_and_sklearn_contract():
    im = image(256, (20, 20))
    for bad in (dict(levels=1), dict(levels=300), dict(props=("contrast", "nope")), dict(distances=()),
                dict(distances=(0,))):
        with pytest.raises(ConfigError):
            GLCM(**bad).transform([im])
    e = FEATURES.create("glcm", levels=64, distances=[1], angles=[0, 90])
    c = clone(e)
    assert c.get_params() == e.get_params() and e.family == "handcrafted"
    np.testing.assert_array_equal(c.fit([im]).transform([im]), e.transform([im]))
    assert e.cache_key() != GLCM().cache_key()

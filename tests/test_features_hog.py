"""HOG: OpenCV availability, length from parameters, agreement with scikit-image."""
import cv2
import numpy as np
import pytest
from skimage.feature import hog as sk_hog
from sklearn.base import clone

from bench.errors import ConfigError, DataError
from bench.features.hog import HOG, hog_length
from bench.imaging import resize, to_gray_u8
from bench.registry import FEATURES


def textured(h, w, seed):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (0, 0), 2.0).astype(float)
    yy, xx = np.mgrid[:h, :w]
    img = 0.5 * base + 100 * np.sin(xx / rng.uniform(3, 8) + yy / rng.uniform(5, 12)) + 60
    return np.clip(img, 0, 255).astype(np.uint8)


def test_opencv_hogdescriptor_exists_and_works():
    # opencv 5 moved HOGDescriptor out of the main package; setup.cfg pins <5
    assert int(cv2.__version__.split(".")[0]) < 5
    assert hasattr(cv2, "HOGDescriptor")
    d = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9)
    v = d.compute(textured(64, 64, 0))
    assert v.size == 7 * 7 * 2 * 2 * 9 == d.getDescriptorSize()
    assert np.isfinite(v).all() and v.max() > 0


@pytest.mark.parametrize("size, ppc, cpb, orient", [
    ((64, 64), (8, 8), (2, 2), 9),
    ((48, 80), (8, 8), (2, 2), 9),
    ((64, 96), (8, 16), (2, 1), 6),
    ((60, 70), (6, 7), (3, 2), 12),   # size not a multiple of the cell: remainder ignored
])
def test_length_follows_parameters(size, ppc, cpb, orient):
    n_br = size[0] // ppc[0] - cpb[0] + 1
    n_bc = size[1] // ppc[1] - cpb[1] + 1
    expected = n_br * n_bc * cpb[0] * cpb[1] * orient
    e = HOG(orientations=orient, pixels_per_cell=ppc, cells_per_block=cpb, size=size)
    X = e.transform([textured(30, 50, 1), textured(100, 90, 2)])
    assert X.shape == (2, expected) == (2, hog_length(size, orient, ppc, cpb)) == (2, e.n_features())
    assert X.dtype == np.float32
    assert len(sk_hog(resize(textured(*size, 3), size), orient, ppc, cpb, "L2-Hys")) == expected


def diagonal_image(h, w, direction, seed):
    """0/255 stripes along a diagonal: ``direction=+1`` varies with row + col (every gradient
    at 45 degrees), ``-1`` with row - col (135 degrees). Neighbouring pixels of a 2 x 2 block
    differ, so a permutation of the cells inside a block changes the vector."""
    g = np.random.default_rng(seed).integers(0, 2, h + w) * 255
    yy, xx = np.mgrid[:h, :w]
    return g[yy + xx if direction > 0 else yy - xx + w].astype(np.uint8)


@pytest.mark.parametrize("orient", [2, 6, 18])
@pytest.mark.parametrize("cpb", [(2, 2), (3, 2), (2, 3)])
@pytest.mark.parametrize("direction", [1, -1])
def test_equals_skimage_element_wise_where_both_are_defined_alike(orient, cpb, direction):
    """Element by element against ``skimage.feature.hog`` (same layout: block row, block
    col, cell row, cell col, orientation; L2-Hys), in the cases where the two HOGs compute
    the same numbers:

    * 1-pixel cells: OpenCV's trilinear vote (each pixel shared between the 4 nearest cell
      centres) puts a pixel entirely into its own cell when cells are one pixel, which is
      scikit-image's vote; with larger cells the values differ (see the correlation tests).
    * every gradient exactly on an orientation-bin centre (45 or 135 degrees; centres of
      bins of ``180 / orient`` degrees when ``orient = 4k + 2``), so OpenCV's vote between
      the 2 nearest bins gives the whole weight to one bin, as scikit-image's hard binning.
    * blocks touching the image border are left out: there scikit-image zeroes the
      gradient component across the border and OpenCV mirrors the image, which turns the
      remaining border gradients horizontal or vertical (between two bins).

    What remains is OpenCV's normalisation epsilon (``0.1 x block length`` added to the
    first L2 norm, 1e-3 to the second), below 0.01 on these 0/255 images, against block
    values of 0.2-1. Any other ordering of blocks, cells or bins differs by far more.
    """
    h, w = 14, 18
    im = diagonal_image(h, w, direction, seed=orient)
    ours = HOG(orientations=orient, pixels_per_cell=(1, 1), cells_per_block=cpb, size=None).transform([im])[0]
    ref = sk_hog(im, orient, (1, 1), cpb, "L2-Hys")
    assert ours.shape == ref.shape == ((h - cpb[0] + 1) * (w - cpb[1] + 1) * cpb[0] * cpb[1] * orient,)
    shape = (h - cpb[0] + 1, w - cpb[1] + 1, cpb[0], cpb[1], orient)
    inner = (slice(1, -1), slice(1, -1))
    a, b = ours.reshape(shape)[inner], ref.reshape(shape)[inner]
    np.testing.assert_allclose(a, b, atol=0.01, rtol=0)
    assert b.max() > 0.2 and (b > 0.1).sum() > a.size // (4 * orient)   # not a comparison of zeros
    # only the bin of the gradient direction is filled
    k = (orient // 4) if direction > 0 else orient - 1 - orient // 4
    assert np.abs(b[..., k]).sum() > 0 and np.abs(np.delete(b, k, axis=-1)).max() == 0


@pytest.mark.parametrize("size, ppc, cpb, orient", [((64, 64), (8, 8), (2, 2), 9),
                                                   ((64, 96), (8, 16), (2, 1), 6),
                                                   ((60, 70), (6, 7), (3, 2), 12)])
def test_strongly_correlated_with_skimage(size, ppc, cpb, orient):
    """Same layout as skimage; values differ only by OpenCV's trilinear voting and borders."""
    e = HOG(orientations=orient, pixels_per_cell=ppc, cells_per_block=cpb, size=size)
    images = [textured(*size, s) for s in range(4)]
    X = e.transform(images)
    corr = [np.corrcoef(x, sk_hog(im, orient, ppc, cpb, "L2-Hys"))[0, 1] for x, im in zip(X, images)]
    # measured: mean 0.95 for square 8x8 cells, 0.90 for 8x16 cells / 6 orientations
    assert min(corr) > 0.8 and np.mean(corr) > 0.85, corr
    # a shuffled layout would not correlate
    shuffled = np.corrcoef(np.random.default_rng(0).permutation(X[0]),
                           sk_hog(images[0], orient, ppc, cpb, "L2-Hys"))[0, 1]
    assert shuffled < 0.6


def test_correlated_with_skimage_on_natural_image():
    from skimage import data
    im = data.camera()
    x = HOG(size=(64, 64)).transform([im])[0]
    ref = sk_hog(resize(to_gray_u8(im), (64, 64)), 9, (8, 8), (2, 2), "L2-Hys")
    assert np.corrcoef(x, ref)[0, 1] > 0.85
    # OpenCV's Gaussian block window moves it further from skimage (documented)
    x_win = HOG(size=(64, 64), win_sigma="opencv").transform([im])[0]
    assert np.corrcoef(x_win, ref)[0, 1] < np.corrcoef(x, ref)[0, 1]


@pytest.mark.parametrize("k", [0, 2, 4, 7])
def test_dominant_orientation_agrees_with_skimage(k):
    """A grating whose gradient points at the centre of bin k fills bin k in both."""
    theta = np.deg2rad(10 + 20 * k)
    yy, xx = np.mgrid[:64, :64]
    img = (127 + 100 * np.sin(0.5 * (np.cos(theta) * xx + np.sin(theta) * yy))).astype(np.uint8)
    ours = HOG(size=(64, 64)).transform([img])[0].reshape(-1, 9).sum(0)
    ref = sk_hog(img, 9, (8, 8), (2, 2), "L2-Hys").reshape(-1, 9).sum(0)
    assert ours.argmax() == ref.argmax() == k


def test_inputs_of_any_kind_and_size():
    rng = np.random.default_rng(0)
    images = [textured(50, 70, 0),                                              # gray uint8
              np.dstack([textured(80, 60, s) for s in (1, 2, 3)]),              # RGB uint8
              (textured(64, 64, 4).astype(np.uint16) * 257),                    # uint16
              textured(40, 40, 5) / 255.0,                                      # float in [0, 1]
              (700 + 300 * rng.random((96, 96))).astype(np.float32)]            # depth map
    for color in (False, True):
        X = HOG(color=color).transform(images)
        assert X.shape == (5, 1764) and X.dtype == np.float32 and np.isfinite(X).all()
    assert HOG().transform([]).shape == (0, 1764)


def test_color_uses_the_strongest_channel_like_skimage():
    im = np.dstack([textured(64, 64, s) for s in (7, 8, 9)])
    x = HOG(color=True).transform([im])[0]
    ref = sk_hog(im, 9, (8, 8), (2, 2), "L2-Hys", channel_axis=-1)
    assert np.corrcoef(x, ref)[0, 1] > 0.85


def test_errors():
    with pytest.raises(DataError):
        HOG(size=None).transform([textured(64, 64, 0), textured(72, 64, 1)])
    with pytest.raises(DataError):
        HOG(size=None).transform([textured(10, 10, 0)])
    with pytest.raises(ConfigError):
        HOG(block_norm="L1").transform([textured(64, 64, 0)])
    with pytest.raises(ConfigError):
        HOG(size=(8, 8)).transform([textured(64, 64, 0)])
    assert HOG(size=None).transform([textured(64, 64, 0)]).shape == (1, 1764)


def test_sklearn_contract_and_registry():
    e = FEATURES.create("hog", orientations=6, size=[32, 48])
    assert isinstance(e, HOG) and e.family == "handcrafted"
    c = clone(e)
    assert c.get_params() == e.get_params() and c is not e
    im = textured(40, 40, 0)
    np.testing.assert_array_equal(c.fit([im]).transform([im]), e.transform([im]))
    assert "orientations" in e.cache_key() and e.cache_key() != HOG().cache_key()
    # L2 norm variant: blocks are unit vectors, no clipping at 0.2
    x = HOG(block_norm="L2").transform([im])[0].reshape(-1, 36)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=5e-3)  # OpenCV's epsilon
    assert x.max() > 0.2


def test_transform_sqrt_matches_skimage_gamma():
    images = [textured(64, 64, s) for s in range(4)]
    X = HOG(transform_sqrt=True).transform(images)
    with_sqrt = [np.corrcoef(x, sk_hog(im, 9, (8, 8), (2, 2), "L2-Hys", transform_sqrt=True))[0, 1]
                 for x, im in zip(X, images)]
    without = [np.corrcoef(x, sk_hog(im, 9, (8, 8), (2, 2), "L2-Hys"))[0, 1] for x, im in zip(X, images)]
    assert min(with_sqrt) > 0.9 and np.mean(with_sqrt) > np.mean(without)

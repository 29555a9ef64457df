"""SIFT bag of visual words, split into a per-image and a per-fold stage.

* :class:`SiftDescriptors` (per image, cached by the engine): OpenCV SIFT
  (``cv2.SIFT_create``) descriptors on a dense grid of upright keypoints
  (``keypoints="dense"``: centres every ``step`` pixels, descriptor window ``size``
  pixels wide, see :func:`dense_keypoints`) or on
  detected keypoints (``keypoints="detect"``, at most ``max_keypoints`` if > 0),
  optionally RootSIFT (L1-normalise, then square root: Arandjelovic & Zisserman 2012).
  Output: an object array of length ``n`` whose items are ``(k_i, 128)`` float32
  arrays (``(0, 128)`` when an image yields no keypoint).
* :class:`BoVWEncoder` (per fold, inside the scikit-learn Pipeline): fits a
  ``MiniBatchKMeans`` codebook on the descriptors of the training images only
  (subsampled to ``max_descriptors`` with a fixed seed) and encodes each image as a
  word histogram, L1-normalised (``power="l1"``, the default) or its square root
  (``power="sqrt"``, Hellinger, often better with linear classifiers).

:class:`SiftBoVW` (registered ``sift_bovw``) ties them together: the engine calls
:meth:`SiftBoVW.stages`; used alone it is an ordinary fitted transformer
(``fit(images)`` computes descriptors and the codebook, ``transform`` encodes).
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import MiniBatchKMeans
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from ..errors import ConfigError, DataError
from ..imaging import resize, to_gray_u8
from ..registry import FEATURES
from .base import Extractor

log = logging.getLogger(__name__)

DESCRIPTOR_DIM = 128


def _object_array(items: list) -> np.ndarray:
    """1-D object array holding ``items`` as they are (no broadcasting into 3-D)."""
    out = np.empty(len(items), dtype=object)
    for i, it in enumerate(items):
        out[i] = it
    return out


def dense_centres(shape, step: float, size: float) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)``: the grid's centres along x and y, every ``step`` pixels.

    Centres start half a window (``size / 2``) from the border; an axis shorter than one
    window gets one centre, in its middle.
    """
    h, w = shape[:2]
    half = size / 2.0

    def centres(n):
        c = np.arange(half, n - half + 1e-6, step)
        return c if c.size else np.array([(n - 1) / 2.0])

    return centres(w), centres(h)


def dense_keypoints(shape, step: float, size: float) -> list:
    """Upright keypoints every ``step`` pixels whose descriptor window is ``size`` pixels wide.

    OpenCV's SIFT descriptor spans 4 x 4 cells of ``3 * kp.size / 2`` pixels, i.e.
    ``6 * kp.size`` pixels, so ``kp.size = size / 6`` (``size=16``: 4-pixel cells, as
    vlfeat's dense SIFT with ``binSize=4``). Row-major: all of the first row of centres
    (:func:`dense_centres`), then the next.
    """
    xs, ys = dense_centres(shape, step, size)
    kp_size = float(size) / 6.0
    return [cv2.KeyPoint(float(x), float(y), kp_size, 0.0) for y in ys for x in xs]


# --- dense SIFT, the whole grid at once ------------------------------------------------
# OpenCV's ``SIFT.compute`` on upright keypoints of one size builds, for every keypoint,
# the gradients of its 29 x 29 window and spreads them over 4 x 4 x 8 bins (trilinear
# interpolation, Gaussian window): ~6 us per keypoint, the same pixels over and over on a
# dense grid. With angle 0 every keypoint's weights are one function of the offset from
# its (rounded) centre, separable in x and y, so the descriptors of a whole grid are two
# matrix products of the 8 orientation channels with banded matrices, as in vlfeat's
# dsift. The arithmetic follows OpenCV's calcSIFTDescriptor step by step (same blur, same
# fastAtan2 through cv2.cartToPolar, same weights, clipping at 0.2, scaling by 512 and
# rounding), so the values equal OpenCV's (tests/test_features_sift.py compares them).
_D, _N = 4, 8  # 4 x 4 spatial bins, 8 orientations
_FLOAT_NOISE = 1e-3  # gradient magnitudes below this (gray levels) are float rounding


@lru_cache(maxsize=64)
def _bin_weights(size: float, diagonal: int) -> tuple[np.ndarray, int]:
    """``(weights, radius)``: ``weights[b, radius + j]``, the share of the gradient at
    offset ``j`` (along x or y) from a keypoint's centre that goes to spatial bin ``b``,
    Gaussian window included (OpenCV's calcSIFTDescriptor, angle 0)."""
    scl = np.float32(float(size) / 6.0) * np.float32(0.5)  # kp.size * 0.5, in float32
    hist_width = np.float32(3.0) * scl
    radius = int(np.rint(hist_width * np.float32(1.4142135623730951) * np.float32((_D + 1) * 0.5)))
    radius = min(radius, diagonal)
    t = np.arange(-radius, radius + 1, dtype=np.float32) * (np.float32(1.0) / hist_width)
    pos = t + np.float32(_D // 2 - 0.5)
    inside = (pos > -1) & (pos < _D)
    gauss = np.exp(t * t * np.float32(-1.0 / (_D * _D * 0.5)))
    tri = np.maximum(np.float32(0), 1 - np.abs(pos[None, :] - np.arange(_D, dtype=np.float32)[:, None]))
    w = (tri * gauss * inside).astype(np.float32)
    w.setflags(write=False)
    return w, radius


@lru_cache(maxsize=64)
def _band(n: int, centres: tuple, size: float, diagonal: int) -> np.ndarray:
    """``(n, 4 * len(centres))``: column ``4 i + b`` holds bin ``b``'s weights around
    centre ``i`` (rows outside the image dropped, as OpenCV skips those pixels)."""
    w, radius = _bin_weights(size, diagonal)
    band = np.zeros((n, len(centres), _D), np.float32)
    for i, c in enumerate(centres):
        lo, hi = max(c - radius, 0), min(c + radius + 1, n)
        if lo < hi:
            band[lo:hi, i, :] = w[:, lo - c + radius:hi - c + radius].T
    band = band.reshape(n, -1)
    band.setflags(write=False)
    return band


def _groups(centres: tuple, radius: int, n: int, span: int):
    """``(i, j, lo, hi)``: runs of consecutive centres ``i:j`` whose windows, clipped to
    ``0..n``, cover rows ``lo:hi``, at most ``span`` rows (one run when ``n <= span``)."""
    i = 0
    while i < len(centres):
        j = i + 1
        while j < len(centres) and (n <= span or centres[j] - centres[i] + 2 * radius + 1 <= span):
            j += 1
        yield i, j, max(centres[i] - radius, 0), min(centres[j - 1] + radius + 1, n)
        i = j


def _banded_product(a: np.ndarray, band: np.ndarray, centres: tuple, radius: int,
                    span: int) -> np.ndarray:
    """``a @ band`` for a :func:`_band` matrix, whose 4 columns per centre are nonzero on
    that centre's window only, one run of centres (:func:`_groups`) at a time, so the work
    grows with the image's size, not with its square."""
    n = band.shape[0]
    if n <= span:
        return a @ band
    out = np.zeros(a.shape[:-1] + (band.shape[1],), np.float32)
    for i, j, lo, hi in _groups(centres, radius, n, span):
        if lo < hi:
            out[..., _D * i:_D * j] = a[..., lo:hi] @ band[lo:hi, _D * i:_D * j]
    return out


def dense_sift(gray: np.ndarray, step: float, size: float, sigma: float = 1.6,
               span: int = 64) -> np.ndarray:
    """OpenCV's SIFT descriptors (``(k, 128)`` float32, values 0..255) of the dense grid of
    :func:`dense_keypoints` on a uint8 gray image, for the whole grid at once (in strips of
    at most ``span`` rows, so that the orientation channels stay in the CPU's cache)."""
    h, w = gray.shape
    sig = float(np.float32(np.sqrt(max(sigma * sigma - 0.25, 0.01))))  # SIFT_INIT_SIGMA 0.5
    base = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), sig, sig)
    dx = np.zeros((h, w), np.float32)
    dy = np.zeros((h, w), np.float32)
    dx[1:-1, 1:-1] = base[1:-1, 2:] - base[1:-1, :-2]  # border pixels count for nothing
    dy[1:-1, 1:-1] = base[:-2, 1:-1] - base[2:, 1:-1]
    mag, ori = cv2.cartToPolar(dx, dy, angleInDegrees=True)
    # A flat area's blur is not exactly flat in float32 (77 blurs to 77 or 77.00001): its
    # gradients are rounding noise, which the 512 scaling would blow up into a random
    # descriptor. The smallest real gradient of a uint8 image after the blur is ~0.1.
    mag[mag < _FLOAT_NOISE] = 0
    obin = ori * np.float32(_N / 360.0)
    o0 = np.floor(obin)
    upper = mag * (obin - o0)  # the share of the next orientation bin
    lower = mag - upper
    o0 = o0.astype(np.int32)
    o1 = o0 + 1
    o0[o0 == _N] = 0  # ori 360 (rounding)
    o1[o1 >= _N] -= _N
    xs, ys = dense_centres(gray.shape, step, size)
    cx = tuple(int(v) for v in np.rint(xs.astype(np.float32)))
    cy = tuple(int(v) for v in np.rint(ys.astype(np.float32)))
    diagonal = int(np.sqrt(float(w) * w + float(h) * h))
    radius = _bin_weights(float(size), diagonal)[1]
    band_x, band_y = _band(w, cx, float(size), diagonal), _band(h, cy, float(size), diagonal)
    out = np.zeros((len(cy), len(cx), _D * _D * _N), np.float32)  # (Y, X, r c o)
    for i, j, lo, hi in _groups(cy, radius, h, span):
        rows = hi - lo
        if rows <= 0:
            continue
        chans = np.zeros(_N * rows * w, np.float32)  # (o, y, x) of the strip
        pix = np.arange(rows * w, dtype=np.int32)
        chans[o0[lo:hi].ravel() * np.int32(rows * w) + pix] = lower[lo:hi].ravel()
        chans[o1[lo:hi].ravel() * np.int32(rows * w) + pix] = upper[lo:hi].ravel()
        along_x = _banded_product(chans.reshape(_N * rows, w), band_x, cx, radius, span)
        along_x = np.ascontiguousarray(along_x.reshape(_N, rows, -1).transpose(0, 2, 1))
        hist = along_x.reshape(-1, rows) @ band_y[lo:hi, _D * i:_D * j]  # (o X c, Y r)
        hist = hist.reshape(_N, len(cx), _D, j - i, _D).transpose(3, 1, 4, 2, 0)
        out[i:j] = hist.reshape(j - i, len(cx), -1)
    desc = out.reshape(len(cy) * len(cx), -1)
    thr = np.sqrt(np.einsum("ij,ij->i", desc, desc)) * np.float32(0.2)
    desc = np.minimum(desc, thr[:, None])
    norm = np.sqrt(np.einsum("ij,ij->i", desc, desc))
    scale = np.float32(512.0) / np.maximum(norm, np.finfo(np.float32).eps)
    return np.clip(np.rint(desc * scale[:, None]), 0, 255).astype(np.float32)


def rootsift(desc: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """RootSIFT: L1-normalise each descriptor, then take the square root."""
    d = desc.astype(np.float32, copy=False)
    return np.sqrt(d / (np.abs(d).sum(axis=1, keepdims=True) + eps)).astype(np.float32)


class SiftDescriptors(Extractor):
    """Per-image stage: OpenCV SIFT descriptors, one ``(k_i, 128)`` array per image.

    Parameters
    ----------
    keypoints: ``"dense"`` (grid) or ``"detect"`` (SIFT's detector).
    step, size: grid spacing and descriptor window width in pixels (dense only).
    rootsift: apply RootSIFT to the descriptors.
    max_keypoints: keep the strongest detected keypoints (0 = all; detect only).
    contrast_threshold: OpenCV's detector threshold (detect only).
    max_side: downscale images whose longer side exceeds this (``None``: never).
    """

    family = "handcrafted"
    version = "2"  # 2: dense grid computed at once (dense_sift), values as OpenCV's

    def __init__(self, keypoints="dense", step=8, size=16, rootsift=True, max_keypoints=0,
                 contrast_threshold=0.04, max_side=None):
        self.keypoints = keypoints
        self.step = step
        self.size = size
        self.rootsift = rootsift
        self.max_keypoints = max_keypoints
        self.contrast_threshold = contrast_threshold
        self.max_side = max_side

    def _check(self):
        if self.keypoints not in ("dense", "detect"):
            raise ConfigError(f"sift: keypoints must be 'dense' or 'detect', got {self.keypoints!r}",
                              "dense: a grid of step/size; detect: SIFT's own detector")
        if self.keypoints == "dense" and not (float(self.step) > 0 and float(self.size) > 0):
            raise ConfigError(f"sift: step {self.step!r} and size {self.size!r} must be > 0",
                              "e.g. step: 8, size: 16")
        if self.max_side is not None and int(self.max_side) < 8:
            raise ConfigError(f"sift: max_side {self.max_side!r} is too small", "use null or e.g. 256")

    def _sift(self):
        return cv2.SIFT_create(nfeatures=int(self.max_keypoints or 0),
                               contrastThreshold=float(self.contrast_threshold))

    def _gray(self, image: np.ndarray) -> np.ndarray:
        gray = to_gray_u8(image)
        if self.max_side is not None and max(gray.shape) > int(self.max_side):
            scale = int(self.max_side) / max(gray.shape)
            gray = resize(gray, (max(1, round(gray.shape[0] * scale)), max(1, round(gray.shape[1] * scale))))
        return np.ascontiguousarray(gray)

    def _finish(self, desc) -> np.ndarray:
        if desc is None or len(desc) == 0:
            return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
        desc = desc.astype(np.float32, copy=False)
        return rootsift(desc) if self.rootsift else desc

    def keypoints_and_descriptors(self, image: np.ndarray, sift=None):
        """``(gray, keypoints, descriptors)``: the gray image SIFT ran on (after
        ``max_side``), its keypoints and their ``(k, 128)`` float32 descriptors, row ``j``
        belonging to keypoint ``j`` (for pictures of where each visual word sits)."""
        gray = self._gray(image)
        if self.keypoints == "dense":
            kps = dense_keypoints(gray.shape, float(self.step), float(self.size))
            return gray, kps, self._finish(dense_sift(gray, float(self.step), float(self.size)))
        sift = sift if sift is not None else self._sift()
        kps, desc = sift.detectAndCompute(gray, None)
        return gray, list(kps or []), self._finish(desc)

    def extract_one(self, image: np.ndarray, sift=None) -> np.ndarray:
        if self.keypoints == "dense":  # no cv2.KeyPoint objects needed
            return self._finish(dense_sift(self._gray(image), float(self.step), float(self.size)))
        return self.keypoints_and_descriptors(image, sift)[2]

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self._check()
        sift = self._sift()
        return _object_array([self.extract_one(im, sift) for im in images])


def _as_descriptor_sets(X) -> list:
    """One float32 ``(k_i, d)`` array per image from an object array (or a 1-column one)."""
    if not isinstance(X, np.ndarray):
        X = _object_array(list(X))
    if X.ndim == 2 and X.shape[1] == 1 and X.dtype == object:
        X = X[:, 0]
    if X.ndim != 1:
        raise DataError("BoVWEncoder expects one descriptor array per image, "
                        f"got an array of shape {X.shape}", "pass the output of SiftDescriptors.transform")
    sets = [np.asarray(d, dtype=np.float32) for d in X]
    return [d if d.size else np.zeros((0, DESCRIPTOR_DIM), np.float32) for d in sets]


class BoVWEncoder(BaseEstimator, TransformerMixin):
    """Fold stage: k-means codebook on training descriptors, word histograms out.

    Parameters
    ----------
    n_words: codebook size.
    max_descriptors: at most this many training descriptors (sampled with
        ``random_state``) are clustered; ``None`` uses all.
    power: ``"l1"`` (histogram sums to 1) or ``"sqrt"`` (Hellinger: square root of it).
    random_state, batch_size, n_init: passed to ``MiniBatchKMeans``.
    n_threads: OpenMP/BLAS threads for k-means (``None``: the libraries' default).
        1 by default: the engine runs folds and cells in parallel, and MiniBatchKMeans'
        small batches with several threads on a busy machine were measured up to 70x
        slower than one thread.

    Learned attributes: ``kmeans_``, ``cluster_centers_``, ``n_images_seen_``,
    ``n_descriptors_seen_`` (descriptors of the training images) and
    ``n_descriptors_fit_`` (those actually clustered).
    """

    def __init__(self, n_words=100, max_descriptors=100_000, power="l1", random_state=0,
                 batch_size=1024, n_init=3, n_threads=1):
        self.n_words = n_words
        self.max_descriptors = max_descriptors
        self.power = power
        self.random_state = random_state
        self.batch_size = batch_size
        self.n_init = n_init
        self.n_threads = n_threads

    def fit(self, X, y=None):
        if self.power not in ("l1", "sqrt"):
            raise ConfigError(f"BoVWEncoder: power must be 'l1' or 'sqrt', got {self.power!r}",
                              "l1: word frequencies; sqrt: Hellinger (often better with linear classifiers)")
        sets = _as_descriptor_sets(X)
        nonempty = [d for d in sets if len(d)]
        D = np.concatenate(nonempty) if nonempty else np.zeros((0, DESCRIPTOR_DIM), np.float32)
        n_words = int(self.n_words)
        if len(D) < n_words:
            raise DataError(f"BoVWEncoder: {len(D)} training descriptors for {n_words} visual words",
                            "reduce n_words, use keypoints: dense, or a smaller step")
        self.n_images_seen_ = len(sets)
        self.n_descriptors_seen_ = int(len(D))
        if self.max_descriptors is not None and len(D) > int(self.max_descriptors):
            rng = np.random.default_rng(self.random_state)
            D = D[np.sort(rng.choice(len(D), int(self.max_descriptors), replace=False))]
        self.n_descriptors_fit_ = int(len(D))
        with threadpool_limits(limits=self.n_threads):
            self.kmeans_ = MiniBatchKMeans(n_clusters=n_words, batch_size=int(self.batch_size),
                                           n_init=self.n_init, random_state=self.random_state).fit(D)
        self.cluster_centers_ = self.kmeans_.cluster_centers_
        self.n_features_out_ = n_words
        log.debug("BoVW codebook: %d words from %d of %d descriptors (%d images)", n_words,
                  self.n_descriptors_fit_, self.n_descriptors_seen_, self.n_images_seen_)
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "kmeans_")
        sets = _as_descriptor_sets(X)
        n_words = self.cluster_centers_.shape[0]
        out = np.zeros((len(sets), n_words), dtype=np.float64)
        lengths = np.array([len(d) for d in sets])
        if lengths.sum():
            with threadpool_limits(limits=self.n_threads):
                words = self.kmeans_.predict(np.concatenate([d for d in sets if len(d)]))
            owner = np.repeat(np.arange(len(sets)), lengths)
            out = np.bincount(owner * n_words + words, minlength=len(sets) * n_words) \
                .reshape(len(sets), n_words).astype(np.float64)
            out /= np.maximum(lengths, 1)[:, None]
        if self.power == "sqrt":
            out = np.sqrt(out)
        return out.astype(np.float32)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "kmeans_")
        return np.array([f"word{i}" for i in range(self.cluster_centers_.shape[0])], dtype=object)


@FEATURES.register("sift_bovw",
                   "SIFT (OpenCV, dense or detected, RootSIFT) + bag of visual words fitted per fold",
                   family="handcrafted")
class SiftBoVW(Extractor):
    """SIFT descriptors encoded by a codebook fitted on training images only.

    Per-image parameters: ``keypoints`` (``dense``/``detect``), ``step``, ``size``,
    ``rootsift``, ``max_keypoints``, ``contrast_threshold``, ``max_side`` (see
    :class:`SiftDescriptors`). Fold parameters: ``n_words``, ``max_descriptors``,
    ``power``, ``random_state``, ``batch_size`` (see :class:`BoVWEncoder`).
    """

    family = "handcrafted"
    version = "2"  # 2: dense grid computed at once (dense_sift), values as OpenCV's

    def __init__(self, keypoints="dense", step=8, size=16, rootsift=True, max_keypoints=0,
                 contrast_threshold=0.04, max_side=None, n_words=100, max_descriptors=100_000,
                 power="l1", random_state=0, batch_size=1024):
        self.keypoints = keypoints
        self.step = step
        self.size = size
        self.rootsift = rootsift
        self.max_keypoints = max_keypoints
        self.contrast_threshold = contrast_threshold
        self.max_side = max_side
        self.n_words = n_words
        self.max_descriptors = max_descriptors
        self.power = power
        self.random_state = random_state
        self.batch_size = batch_size

    def stages(self):
        per_image = SiftDescriptors(keypoints=self.keypoints, step=self.step, size=self.size,
                                    rootsift=self.rootsift, max_keypoints=self.max_keypoints,
                                    contrast_threshold=self.contrast_threshold, max_side=self.max_side)
        encoder = BoVWEncoder(n_words=self.n_words, max_descriptors=self.max_descriptors,
                              power=self.power, random_state=self.random_state,
                              batch_size=self.batch_size)
        return per_image, encoder

    def fit(self, images, y=None):
        per_image, encoder = self.stages()
        self.encoder_ = encoder.fit(per_image.transform(images), y)
        return self

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        check_is_fitted(self, "encoder_")
        return self.encoder_.transform(self.stages()[0].transform(images))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags

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


def dense_keypoints(shape, step: float, size: float) -> list:
    """Upright keypoints every ``step`` pixels whose descriptor window is ``size`` pixels wide.

    OpenCV's SIFT descriptor spans 4 x 4 cells of ``3 * kp.size / 2`` pixels, i.e.
    ``6 * kp.size`` pixels, so ``kp.size = size / 6`` (``size=16``: 4-pixel cells, as
    vlfeat's dense SIFT with ``binSize=4``). Centres start half a window from the
    border; an image smaller than one window gets one keypoint at its centre.
    """
    h, w = shape[:2]
    half = size / 2.0

    def centres(n):
        c = np.arange(half, n - half + 1e-6, step)
        return c if c.size else np.array([(n - 1) / 2.0])

    kp_size = float(size) / 6.0
    return [cv2.KeyPoint(float(x), float(y), kp_size, 0.0) for y in centres(h) for x in centres(w)]


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
    version = "1"

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

    def keypoints_and_descriptors(self, image: np.ndarray, sift=None):
        """``(gray, keypoints, descriptors)``: the gray image SIFT ran on (after
        ``max_side``), its keypoints and their ``(k, 128)`` float32 descriptors, row ``j``
        belonging to keypoint ``j`` (for pictures of where each visual word sits)."""
        sift = sift if sift is not None else self._sift()
        gray = to_gray_u8(image)
        if self.max_side is not None and max(gray.shape) > int(self.max_side):
            scale = int(self.max_side) / max(gray.shape)
            gray = resize(gray, (max(1, round(gray.shape[0] * scale)), max(1, round(gray.shape[1] * scale))))
        gray = np.ascontiguousarray(gray)
        if self.keypoints == "dense":
            kps, desc = sift.compute(gray, dense_keypoints(gray.shape, float(self.step), float(self.size)))
        else:
            kps, desc = sift.detectAndCompute(gray, None)
        if desc is None or len(desc) == 0:
            return gray, list(kps or []), np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
        desc = desc.astype(np.float32, copy=False)
        return gray, list(kps), (rootsift(desc) if self.rootsift else desc)

    def extract_one(self, image: np.ndarray, sift=None) -> np.ndarray:
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
    version = "1"

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

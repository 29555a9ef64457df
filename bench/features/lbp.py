"""Multi-radius local binary pattern (LBP) histograms.

The codes are bit-for-bit those of :func:`skimage.feature.local_binary_pattern`
(tested), computed for a whole batch of same-size images at once with numpy:

* neighbour ``i`` of ``P`` sits at ``(-R sin(2 pi i / P), R cos(2 pi i / P))``
  rounded to 5 decimals, and is bilinearly interpolated with zero padding outside
  the image, exactly as scikit-image does (same float64 operations in the same
  order, including the per-row/per-column fractional weights that float rounding
  makes vary in the last bit; ``R`` is rounded to float32 as scikit-image's Cython
  signature does);
* the horizontal interpolation is shared by all neighbours with the same column
  offset, so a diagonal neighbour costs three array operations;
* ``uniform`` codes come from running counts of ones and of 0/1 changes, the other
  methods from the plain code through a lookup table.

``method`` is scikit-image's: ``uniform`` (alias ``riu2``: rotation-invariant
uniform patterns, ``P + 2`` bins), ``nri_uniform`` (``P (P - 1) + 3`` bins), ``ror``
(rotation-invariant; one bin per distinct rotation-invariant code, 36 for ``P = 8``)
and ``default`` (``2 ** P`` bins). Each radius gives one histogram normalised to sum 1;
the feature vector is their concatenation.

Images are converted with :func:`bench.imaging.to_gray_u8` first (uint16 scaled to 8
bit, float depth maps min-max scaled), so codes never depend on float noise.
"""
from __future__ import annotations

import functools
import logging
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from ..imaging import to_gray_u8
from ..registry import FEATURES
from .base import Extractor

log = logging.getLogger(__name__)

METHODS = ("uniform", "nri_uniform", "ror", "default")
_ALIASES = {"riu2": "uniform"}
_MAX_LUT_POINTS = 16
_BATCH_PIXELS = 1 << 16  # same-size images stacked up to ~64k pixels per batch (cache-sized)


def _canonical_method(method: str) -> str:
    m = _ALIASES.get(str(method).lower(), str(method).lower())
    if m not in METHODS:
        raise ConfigError(f"lbp: unknown method {method!r}",
                          f"use one of {', '.join(METHODS)} (or 'riu2' = 'uniform')")
    return m


def neighbour_offsets(P: int, R: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the ``P`` circular neighbours, as scikit-image."""
    R = float(np.float32(R))  # skimage's Cython signature takes ``float R``
    angle = 2 * np.pi * np.arange(P, dtype=np.float64) / P
    return np.round(-R * np.sin(angle), 5), np.round(R * np.cos(angle), 5)


def n_bins(P: int, method: str) -> int:
    """Length of one histogram for ``P`` points and ``method``."""
    method = _canonical_method(method)
    if method == "uniform":
        return P + 2
    if method == "nri_uniform":
        return P * (P - 1) + 3
    if method == "ror":
        return len(_ror_values(P))
    return 2 ** P


# -- lookup tables for methods derived from the plain code ----------------------
@functools.lru_cache(maxsize=None)
def _ror_lut(P: int) -> np.ndarray:
    """Minimum over cyclic right rotations of each ``P``-bit code."""
    codes = np.arange(2 ** P, dtype=np.int64)
    best, cur = codes.copy(), codes.copy()
    for _ in range(1, P):
        cur = (cur >> 1) | ((cur & 1) << (P - 1))
        np.minimum(best, cur, out=best)
    return best


@functools.lru_cache(maxsize=None)
def _ror_values(P: int) -> np.ndarray:
    return np.unique(_ror_lut(P))


@functools.lru_cache(maxsize=None)
def _ror_index_lut(P: int) -> np.ndarray:
    return np.searchsorted(_ror_values(P), _ror_lut(P)).astype(np.int64)


@functools.lru_cache(maxsize=None)
def _nri_lut(P: int) -> np.ndarray:
    """scikit-image's non-rotation-invariant uniform code of every ``P``-bit code."""
    codes = np.arange(2 ** P, dtype=np.int64)
    bits = (codes[:, None] >> np.arange(P)) & 1                     # bit i = neighbour i
    changes = np.abs(np.diff(bits, axis=1)).sum(1)                   # linear, as skimage
    n_ones = bits.sum(1)
    first_one = np.where(bits.any(1), bits.argmax(1), -1)
    first_zero = np.where((1 - bits).any(1), (1 - bits).argmax(1), -1)
    rot = np.where(first_one == 0, n_ones - first_zero, P - first_one)
    out = 1 + (n_ones - 1) * P + rot
    out = np.where(n_ones == 0, 0, out)
    out = np.where(n_ones == P, P * (P - 1) + 1, out)
    return np.where(changes <= 2, out, P * (P - 1) + 2).astype(np.int64)


# -- the batched core ---------------------------------------------------------------
def _neighbour_bits(batch: np.ndarray, P: int, R: float) -> Iterable[np.ndarray]:
    """Yield, for each neighbour ``i``, the boolean map ``texture_i >= centre``.

    ``batch`` is ``(n, h, w)`` (any real dtype). The yielded array is a reused buffer.
    """
    n, h, w = batch.shape
    rp, cp = neighbour_offsets(P, R)
    pad = int(np.ceil(max(np.abs(rp).max(), np.abs(cp).max()))) + 1
    X = np.zeros((n, h + 2 * pad, w + 2 * pad), dtype=np.float64)
    X[:, pad:pad + h, pad:pad + w] = batch
    centre = X[:, pad:pad + h, pad:pad + w]
    rows = np.arange(h, dtype=np.float64)
    cols = np.arange(w, dtype=np.float64)
    t1 = np.empty((n, h, w))
    t2 = np.empty((n, h, w))
    bit = np.empty((n, h, w), dtype=bool)
    horizontal: dict[float, np.ndarray] = {}
    for r, c in zip(rp, cp):
        fr, fc = np.floor(r), np.floor(c)
        H = horizontal.get(c)
        if H is None:  # column interpolation over all padded rows, shared by neighbours
            c0 = pad + int(fc)
            if fc == c:
                H = X[:, :, c0:c0 + w]
            else:
                cc = cols + c
                dc = cc - np.floor(cc)  # varies in the last bit with the column, as in skimage
                H = np.multiply(1 - dc, X[:, :, c0:c0 + w])
                H += dc * X[:, :, c0 + 1:c0 + 1 + w]
            horizontal[c] = H
        r0 = pad + int(fr)
        top = H[:, r0:r0 + h]
        if fr == r:
            val = top  # (1 - 0) * top + 0 * bottom == top exactly
        else:
            rr = rows + r
            dr = (rr - np.floor(rr))[:, None]
            np.multiply(1 - dr, top, out=t1)
            np.multiply(dr, H[:, r0 + 1:r0 + 1 + h], out=t2)
            val = np.add(t1, t2, out=t1)
        # skimage tests ``texture - centre >= 0``; identical to ``>=`` for finite floats
        np.greater_equal(val, centre, out=bit)
        yield bit


def _lbp_index_batch(batch: np.ndarray, P: int, R: float, method: str) -> np.ndarray:
    """Histogram-bin index of every pixel, ``(n, h, w)`` int64."""
    shape = batch.shape
    if method == "uniform":
        n_ones = np.zeros(shape, dtype=np.uint8 if P < 255 else np.int64)
        changes = np.zeros_like(n_ones)
        prev = np.empty(shape, dtype=bool)
        diff = np.empty(shape, dtype=bool)
        for i, bit in enumerate(_neighbour_bits(batch, P, R)):
            np.add(n_ones, bit, out=n_ones, casting="unsafe")
            if i:
                np.not_equal(bit, prev, out=diff)
                np.add(changes, diff, out=changes, casting="unsafe")
            np.copyto(prev, bit)
        return np.where(changes <= 2, n_ones, P + 1).astype(np.int64)
    code = np.zeros(shape, dtype=np.int64)
    tmp = np.empty(shape, dtype=np.int64)
    for i, bit in enumerate(_neighbour_bits(batch, P, R)):
        np.multiply(bit, 1 << i, out=tmp, casting="unsafe")
        np.bitwise_or(code, tmp, out=code)
    if method == "default":
        return code
    if method == "ror":
        return _ror_index_lut(P)[code]
    return _nri_lut(P)[code]


def _check_points(P: int, method: str) -> None:
    if method != "uniform" and P > _MAX_LUT_POINTS:
        raise ConfigError(f"lbp: method {method!r} supports at most {_MAX_LUT_POINTS} points, got {P}",
                          "use method 'uniform' for more points, or fewer points")


def lbp_codes(image: np.ndarray, P: int, R: float, method: str = "uniform") -> np.ndarray:
    """LBP image equal to ``skimage.feature.local_binary_pattern(image, P, R, method)``.

    ``image`` is a 2-D gray image (any real dtype; compared in float64 as skimage).
    Returns float64 like scikit-image. Method ``var`` is not supported.
    """
    method = _canonical_method(method)
    P = int(P)
    _check_points(P, method)
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"lbp_codes expects a 2-D image, got shape {img.shape}")
    idx = _lbp_index_batch(img[None], P, R, method)[0]
    if method == "ror":
        idx = _ror_values(P)[idx]
    return idx.astype(np.float64)


def _iter_batches(images: Iterable[np.ndarray], max_pixels: int = _BATCH_PIXELS):
    """Group consecutive images of the same shape into stacks, keeping order."""
    batch: list[np.ndarray] = []
    for im in images:
        if batch and (im.shape != batch[0].shape or (len(batch) + 1) * im.size > max_pixels):
            yield np.stack(batch)
            batch = []
        batch.append(im)
    if batch:
        yield np.stack(batch)


def _radius_points(radii, points) -> list[tuple[float, int]]:
    radii_seq = [radii] if np.isscalar(radii) else list(radii)
    if not radii_seq:
        raise ConfigError("lbp: radii is empty", "give at least one radius, e.g. radii: [1, 2, 3]")
    if np.isscalar(points):
        pts = [points] * len(radii_seq)
    else:
        pts = list(points)
        if len(pts) != len(radii_seq):
            raise ConfigError(f"lbp: points {points!r} must be one integer or one per radius "
                              f"({len(radii_seq)} radii)", "e.g. radii: [1, 2, 3], points: [8, 16, 24]")
    out = []
    for r, p in zip(radii_seq, pts):
        if isinstance(r, bool) or not isinstance(r, (int, float, np.integer, np.floating)):
            raise ConfigError(f"lbp: radius {r!r} is not a number", "e.g. radii: [1, 2, 3]")
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
            raise ConfigError(f"lbp: points {p!r} is not a number", "e.g. points: 8")
        if not (float(r) > 0):
            raise ConfigError(f"lbp: radius {r!r} must be > 0", "e.g. radii: [1, 2, 3]")
        if int(p) != p or int(p) < 1:
            raise ConfigError(f"lbp: points {p!r} must be a positive integer", "e.g. points: 8")
        out.append((float(r), int(p)))
    return out


@FEATURES.register("lbp", "Multi-radius local binary pattern histograms (equal to scikit-image's codes)",
                   family="handcrafted")
class LBPHistogram(Extractor):
    """Concatenated per-radius LBP histograms, each summing to 1.

    Parameters
    ----------
    radii: radius or radii of the neighbour circles, e.g. ``(1, 2, 3)``.
    points: neighbours per circle, one integer for all radii or one per radius
        (``[8, 16, 24]`` is the classic ``8 r`` choice).
    method: ``uniform`` (= ``riu2``), ``nri_uniform``, ``ror`` or ``default``, as in
        :func:`skimage.feature.local_binary_pattern`.
    """

    family = "handcrafted"
    version = "1"

    def __init__(self, radii=(1, 2, 3), points=8, method="uniform"):
        self.radii = radii
        self.points = points
        self.method = method

    def _config(self):
        method = _canonical_method(self.method)
        rp = _radius_points(self.radii, self.points)
        for _, p in rp:
            _check_points(p, method)
        return method, rp

    def check_params(self) -> None:
        self._config()

    def n_features(self) -> int:
        method, rp = self._config()
        return sum(n_bins(p, method) for _, p in rp)

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        method, rp = self._config()
        sizes = [n_bins(p, method) for _, p in rp]
        chunks = []
        for batch in _iter_batches(to_gray_u8(im) for im in images):
            n = batch.shape[0]
            hists = []
            for (r, p), nb in zip(rp, sizes):
                idx = _lbp_index_batch(batch, p, r, method)
                idx += (np.arange(n, dtype=np.int64) * nb)[:, None, None]
                counts = np.bincount(idx.ravel(), minlength=n * nb).reshape(n, nb)
                hists.append(counts / float(batch.shape[1] * batch.shape[2]))
            chunks.append(np.hstack(hists))
        if not chunks:
            return np.zeros((0, sum(sizes)), dtype=np.float32)
        return np.vstack(chunks).astype(np.float32)

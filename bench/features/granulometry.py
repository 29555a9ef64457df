"""Granulometry: pattern spectrum of gray-level openings (and closings) by disks.

For disk radii ``r_1 < ... < r_K`` (footprints :func:`skimage.morphology.disk`), with
``V(r)`` the sum of the gray image opened by a disk of radius ``r`` and
``V(0)`` the sum of the image itself, the opening spectrum is

    ``PS_open[k] = (V(r_{k-1}) - V(r_k)) / V(0)``

the fraction of the image "volume" held by bright structures that a disk of radius
``r_{k-1}`` fits into but one of radius ``r_k`` does not (``V(r)`` is taken on the
pointwise minimum of the openings up to ``r``, see :func:`pattern_spectrum`). The closing spectrum is
the same on the complement ``255 - image`` (closing is the dual of opening), so it
measures dark structures. Values lie in [0, 1]; an all-black image (or all-white,
for closings) gives zeros.

Openings run in OpenCV (``cv2.morphologyEx`` with the disk as kernel; pixels outside
the image are ignored, which for these symmetric footprints equals scikit-image's
reflected border: tested equal to :func:`skimage.morphology.opening`).
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import cv2
import numpy as np
from skimage.morphology import disk

from ..errors import ConfigError
from ..imaging import resize, to_gray_u8
from ..registry import FEATURES
from .base import Extractor

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def disk_kernel(radius: int) -> np.ndarray:
    """scikit-image's ``disk(radius)`` as an OpenCV kernel."""
    return disk(int(radius)).astype(np.uint8)


def opening(image: np.ndarray, radius: int) -> np.ndarray:
    """Gray opening by ``disk(radius)``; equals ``skimage.morphology.opening``."""
    return cv2.morphologyEx(image, cv2.MORPH_OPEN, disk_kernel(radius))


def closing(image: np.ndarray, radius: int) -> np.ndarray:
    """Gray closing by ``disk(radius)``; equals ``skimage.morphology.closing``."""
    return cv2.morphologyEx(image, cv2.MORPH_CLOSE, disk_kernel(radius))


def pattern_spectrum(gray_u8: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """Opening pattern spectrum of a uint8 image for increasing ``radii``.

    Digital disks are not nested under opening (the one-pixel tips of ``disk(3)``
    survive an opening by ``disk(2)`` but not by ``disk(1)``), so the volume of plain
    openings is not monotone in the radius. The filter used for radius ``r_k`` is
    therefore the pointwise minimum of the openings by ``r_1 .. r_k``: still
    anti-extensive and increasing, and decreasing in ``k``, so every value of the
    spectrum is >= 0 and they sum to at most 1.
    """
    total = float(gray_u8.sum(dtype=np.float64))
    if total <= 0:
        return np.zeros(len(radii))
    volumes = [total]
    current = gray_u8
    for r in radii:
        current = np.minimum(current, opening(gray_u8, r))
        volumes.append(float(current.sum(dtype=np.float64)))
    v = np.asarray(volumes)
    return (v[:-1] - v[1:]) / total


def _radii(radii) -> list[int]:
    seq = list(range(1, int(radii) + 1)) if np.isscalar(radii) else list(radii)
    try:
        out = [int(r) for r in seq]
    except (TypeError, ValueError):
        out = []
    if not out or min(out) < 1 or any(b <= a for a, b in zip(out, out[1:])) or \
            any(int(r) != r for r in seq):
        raise ConfigError(f"granulometry: radii {radii!r} must be a positive integer R (radii 1..R) "
                          "or an increasing list of positive integers",
                          "e.g. radii: 8 or radii: [1, 2, 4, 8]")
    return out


@FEATURES.register("granulometry", "Morphological pattern spectrum (openings and closings by growing disks)",
                   family="handcrafted")
class Granulometry(Extractor):
    """Opening (and closing) pattern spectra of the gray image.

    Parameters
    ----------
    radii: ``R`` (radii ``1..R``) or an increasing list of disk radii.
    closings: also append the closing spectrum (dark structures).
    size: optional ``(h, w)`` to resize to first (granulometry is scale-dependent,
        so resizing makes images of different sizes comparable); ``None`` keeps the size.
    """

    family = "handcrafted"
    version = "1"

    def __init__(self, radii=8, closings=True, size=None):
        self.radii = radii
        self.closings = closings
        self.size = size

    def n_features(self) -> int:
        return len(_radii(self.radii)) * (2 if self.closings else 1)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """One name per value: ``"bright size 2-3 px"`` is the share of the image volume
        an opening by ``disk(3)`` removes but one by ``disk(2)`` keeps (bright structures
        of that radius); ``"dark ..."`` the same for closings (dark structures)."""
        radii = _radii(self.radii)
        lows = [0] + radii[:-1]
        names = [f"bright size {a}-{r} px" for a, r in zip(lows, radii)]
        if self.closings:
            names += [f"dark size {a}-{r} px" for a, r in zip(lows, radii)]
        return np.asarray(names, dtype=object)

    def extract_one(self, image: np.ndarray) -> np.ndarray:
        radii = _radii(self.radii)
        g = to_gray_u8(image)
        if self.size is not None:
            g = resize(g, self.size, "area")
        g = np.ascontiguousarray(g)
        parts = [pattern_spectrum(g, radii)]
        if self.closings:
            parts.append(pattern_spectrum(255 - g, radii))  # closing(f) = 255 - opening(255 - f)
        return np.concatenate(parts)

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        radii = _radii(self.radii)
        if self.size is not None and (np.isscalar(self.size) or len(self.size) != 2):
            raise ConfigError(f"granulometry: size {self.size!r} must be null or [h, w]",
                              "e.g. size: [128, 128]")
        rows = [self.extract_one(im) for im in images]
        if not rows:
            return np.zeros((0, len(radii) * (2 if self.closings else 1)), dtype=np.float32)
        return np.stack(rows).astype(np.float32)

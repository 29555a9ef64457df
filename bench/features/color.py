"""HSV colour histograms.

Images are converted to 8-bit RGB (:func:`bench.imaging.to_rgb_u8`) and to HSV with
OpenCV (``H`` in 0..179, ``S`` and ``V`` in 0..255); histograms use uniform bins
over those ranges (``cv2.calcHist``).

* ``mode="joint"``: one 3-D histogram of ``bins_h * bins_s * bins_v`` cells, summing
  to 1 (``H`` slowest, ``V`` fastest, as ``np.histogramdd``).
* ``mode="separate"``: the ``H``, ``S`` and ``V`` histograms concatenated, each
  summing to 1.

Gray images (2-D, or depth maps) have no hue and no saturation. In ``separate`` mode
their ``H`` and ``S`` blocks are all zero and the ``V`` block is the intensity
histogram, so the length is unchanged and no false colour is claimed. In ``joint``
mode a gray pixel is an achromatic colour (``H = S = 0``, as OpenCV converts it),
so all the mass lies in the first hue and saturation bins: exactly the histogram of
the same image stored as RGB.
"""
from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from ..errors import ConfigError
from ..imaging import to_gray_u8, to_rgb_u8
from ..registry import FEATURES
from .base import Extractor

log = logging.getLogger(__name__)

_RANGES = ((0, 180), (0, 256), (0, 256))


def _bins3(bins) -> tuple[int, int, int]:
    b = (bins,) * 3 if np.isscalar(bins) else tuple(bins)
    try:
        b = tuple(int(v) for v in b)
    except (TypeError, ValueError):
        b = ()
    if len(b) != 3 or min(b) < 1 or b[0] > 180 or max(b[1:]) > 256:
        raise ConfigError(f"color_hist: bins {bins!r} must be one integer or three (h, s, v), "
                          "with at most 180 hue and 256 saturation/value bins", "e.g. bins: [8, 4, 4]")
    return b


def _is_gray(img: np.ndarray) -> bool:
    return img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1)


@FEATURES.register("color_hist", "HSV colour histogram (joint or per channel); gray images handled",
                   family="handcrafted")
class ColorHistogram(Extractor):
    """HSV histogram of each image (see the module docstring).

    Parameters
    ----------
    bins: bins per channel, one integer or ``(h, s, v)``.
    mode: ``"joint"`` (3-D histogram) or ``"separate"`` (per-channel histograms).
    """

    family = "handcrafted"
    version = "1"

    def __init__(self, bins=(8, 4, 4), mode="joint"):
        self.bins = bins
        self.mode = mode

    def _check(self):
        if self.mode not in ("joint", "separate"):
            raise ConfigError(f"color_hist: mode must be 'joint' or 'separate', got {self.mode!r}",
                              "joint: one 3-D histogram; separate: H, S and V histograms")
        return _bins3(self.bins)

    def n_features(self) -> int:
        b = self._check()
        return int(np.prod(b)) if self.mode == "joint" else int(sum(b))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """One name per bin, in output order, with the bin's range: hue in degrees
        (0-360, OpenCV's 0-180 doubled), saturation and value in 0-255, e.g.
        ``"hue 0-45° sat 0-64 val 128-192"`` (joint) or ``"sat 64-128"`` (separate)."""
        b = self._check()

        def edges(c):
            lo, hi = _RANGES[c]
            e = np.linspace(lo, hi, b[c] + 1) * (2 if c == 0 else 1)
            unit = "°" if c == 0 else ""
            return [f"{e[k]:g}-{e[k + 1]:g}{unit}" for k in range(b[c])]
        h, sat, v = edges(0), edges(1), edges(2)
        if self.mode == "joint":
            return np.asarray([f"hue {a} sat {c} val {d}" for a in h for c in sat for d in v], dtype=object)
        return np.asarray([f"hue {a}" for a in h] + [f"sat {c}" for c in sat] + [f"val {d}" for d in v],
                          dtype=object)

    def extract_one(self, image: np.ndarray) -> np.ndarray:
        b = self._check()
        img = np.asarray(image)
        gray = _is_gray(img)
        if self.mode == "separate" and gray:
            v = to_gray_u8(img)
            hv = cv2.calcHist([v], [0], None, [b[2]], list(_RANGES[2])).ravel()
            return np.concatenate([np.zeros(b[0] + b[1]), hv / max(v.size, 1)])
        hsv = cv2.cvtColor(to_rgb_u8(img), cv2.COLOR_RGB2HSV)
        n = max(hsv.shape[0] * hsv.shape[1], 1)
        if self.mode == "joint":
            h = cv2.calcHist([hsv], [0, 1, 2], None, list(b), [r for rng in _RANGES for r in rng])
            return h.ravel() / n
        return np.concatenate([cv2.calcHist([hsv], [c], None, [b[c]], list(_RANGES[c])).ravel() / n
                               for c in range(3)])

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self._check()
        return super().transform(images)

"""Physical shape and height features of top-view depth maps (parcels on a belt).

Input: a depth/height map (float, ``0`` or non-finite = no measurement, as in
:mod:`bench.imaging`); uint8/uint16/gray images are read as heights in their own
units and RGB is reduced to gray. Heights are never rescaled: lengths are in pixels,
heights in the input's units (mm for the synthetic parcels).

1. **Ground**: heights are taken relative to ``base``: ``"plane"`` (default) fits a
   plane ``z = a + b x + c y`` to the valid pixels of the 2-pixel border ring (robustly:
   starting from their median level, refitted on the pixels within 3 robust sigmas, so
   an object cut by the border does not tilt it), which follows a tilted belt;
   ``"border"`` uses the median of that ring, ``"min"`` the lowest valid value, a
   number that constant (``0`` for maps already relative to the ground). When no
   border pixel is valid (an object on a missing background) the ground is 0.
2. **Object**: valid pixels higher than ``max(threshold, 4 sigma)`` above the ground
   (``sigma``: robust noise of the border ring about the ground, so a noisy belt does
   not leak into the object); the largest 8-connected component, with its holes
   (dropouts) filled, is the object's footprint.
3. **Features** (:meth:`ParcelShape.feature_names` gives the order): valid-pixel
   fraction and count; object area (pixels of the footprint) and fraction; mean, max,
   std and median height and volume (sum of heights) over the valid footprint pixels;
   top flatness (fraction of those within 10 % of the top height, the 99th
   percentile: ~1 for a flat box, lower for a dome); outline perimeter; compactness
   ``4 pi A / P^2`` (1 for a disk, pi/4 for a square); solidity (area / convex hull
   area); axis-aligned bounding-box diagonal; minimum-area rectangle
   (``cv2.minAreaRect``) long side, short side, diagonal, elongation (short / long)
   and fill ratio (area / rectangle area); then a ``hist_bins`` histogram of the
   object's heights (summing to 1), over ``(0, top]`` (``hist_range=None``: shape of
   the height profile, scale-free) or over a fixed ``(lo, hi)`` range in input units.

Geometry conventions: the outline is the OpenCV contour through boundary pixel
centres, smoothed by Douglas-Peucker with 1 pixel tolerance (removes the pixel
staircase, which would inflate the perimeter of a disk by ~6 %); perimeter and the
compactness/solidity areas use that polygon. Rectangle sides are measured between
pixel centres and get +1 pixel so that an axis-aligned ``w x h`` block reads
``w x h``; the bounding box counts pixels. Empty maps and maps without an object
give zeros (never NaN).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..errors import ConfigError
from ..imaging import to_gray
from ..registry import FEATURES
from .base import Extractor

log = logging.getLogger(__name__)

SCALAR_FEATURES = (
    "valid_frac", "valid_area", "object_area", "object_frac",
    "height_mean", "height_max", "height_std", "height_median", "volume", "top_flatness",
    "perimeter", "compactness", "solidity", "bbox_diag",
    "rect_long", "rect_short", "rect_diag", "elongation", "rect_fill",
)
DESCRIPTIONS = {
    "valid_frac": "share of pixels with a depth reading",
    "valid_area": "pixels with a depth reading",
    "object_area": "footprint area (pixels)",
    "object_frac": "footprint share of the image",
    "height_mean": "mean height above the ground",
    "height_max": "maximum height",
    "height_std": "spread of the heights",
    "height_median": "median height",
    "volume": "volume (sum of heights)",
    "top_flatness": "share of the top within 10% of its height",
    "perimeter": "outline length",
    "compactness": "compactness 4 pi A / P^2",
    "solidity": "area / convex hull area",
    "bbox_diag": "bounding-box diagonal",
    "rect_long": "min-area rectangle long side",
    "rect_short": "min-area rectangle short side",
    "rect_diag": "min-area rectangle diagonal",
    "elongation": "rectangle short / long side",
    "rect_fill": "footprint / rectangle area",
}
_RING = 2
_DP_EPSILON = 1.0
_TOP_TOLERANCE = 0.10
_NOISE_SIGMAS = 4.0


def _ground(z: np.ndarray, valid: np.ndarray, base) -> tuple[np.ndarray | float, float]:
    """Ground height (per-pixel array or constant) and the ground noise sigma (0 if unknown)."""
    if not isinstance(base, str):
        return float(base), 0.0
    if base == "min":
        return float(z[valid].min()), 0.0
    h, w = z.shape
    ring = np.zeros_like(valid)
    k = min(_RING, max(1, min(h, w) // 2))
    ring[:k, :] = ring[-k:, :] = ring[:, :k] = ring[:, -k:] = True
    ring &= valid
    zs = z[ring]
    if zs.size == 0:  # no measured border (object on a missing background): absolute heights
        return 0.0, 0.0
    med = float(np.median(zs))
    sigma = 1.4826 * float(np.median(np.abs(zs - med)))
    if base == "border" or zs.size < 10:
        return med, sigma
    # robust plane: start from the median level, refit on inliers (the ground is the
    # majority of the border; objects cut by the border sit above it)
    ys, xs = np.nonzero(ring)
    A = np.column_stack([np.ones(zs.size), xs, ys]).astype(np.float64)
    coef = np.array([med, 0.0, 0.0])
    for _ in range(5):
        res = zs - A @ coef
        sigma = max(1.4826 * float(np.median(np.abs(res - np.median(res)))), 1e-6)
        keep = np.abs(res) <= 3.0 * sigma
        if keep.sum() < 3:
            break
        coef = np.linalg.lstsq(A[keep], zs[keep], rcond=None)[0]
    res = zs - A @ coef
    sigma = 1.4826 * float(np.median(np.abs(res - np.median(res))))
    yy, xx = np.mgrid[0:h, 0:w]
    return coef[0] + coef[1] * xx + coef[2] * yy, sigma


@dataclass
class ParcelGeometry:
    """What :func:`parcel_features` measures on one depth map (for pictures and tests).

    ``valid``: measured pixels; ``height``: heights above the ground (0 where not
    valid); ``footprint``: the object's largest component with its holes filled
    (``None`` when no object); ``contour``: its OpenCV outline (``(k, 1, 2)`` x, y);
    ``polygon``: the Douglas-Peucker outline used for the perimeter; ``rect``: the
    ``cv2.minAreaRect`` ``((cx, cy), (w, h), angle)``; ``threshold``: the height
    threshold actually used (``max(threshold, 4 sigma)``).
    """

    valid: np.ndarray
    height: np.ndarray
    threshold: float
    footprint: np.ndarray | None = None
    contour: np.ndarray | None = None
    polygon: np.ndarray | None = None
    rect: tuple | None = None


def parcel_geometry(depth: np.ndarray, base="plane", threshold: float = 2.0) -> ParcelGeometry:
    """Ground, object footprint, outline and minimum-area rectangle of one depth map."""
    z = np.asarray(to_gray(np.asarray(depth)), dtype=np.float64)
    valid = np.isfinite(z) & (z != 0)
    if not valid.any():
        return ParcelGeometry(valid, np.zeros(z.shape), float(threshold))
    ground, sigma = _ground(np.where(valid, z, 0.0), valid, base)
    height = np.where(valid, z - ground, 0.0)
    thr = max(float(threshold), _NOISE_SIGMAS * sigma)
    geo = ParcelGeometry(valid, height, thr)
    mask = (valid & (height > thr)).astype(np.uint8)
    n_lab, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n_lab <= 1:
        return geo
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=len)
    footprint = np.zeros(mask.shape, np.uint8)  # the component with its holes (dropouts) filled
    cv2.drawContours(footprint, [contour], -1, 1, thickness=cv2.FILLED)
    geo.footprint = footprint.astype(bool)
    geo.contour = contour
    geo.polygon = cv2.approxPolyDP(contour, _DP_EPSILON, True)
    geo.rect = cv2.minAreaRect(contour)
    return geo


def parcel_features(depth: np.ndarray, base="plane", threshold: float = 2.0, hist_bins: int = 8,
                    hist_range=None) -> np.ndarray:
    """Feature vector of one depth map (see the module docstring), float64."""
    geo = parcel_geometry(depth, base, threshold)
    n_pix = geo.valid.size
    out = dict.fromkeys(SCALAR_FEATURES, 0.0)
    hist = np.zeros(int(hist_bins))
    n_valid = int(geo.valid.sum())
    out["valid_area"] = float(n_valid)
    out["valid_frac"] = n_valid / max(n_pix, 1)
    if geo.footprint is None:
        return np.concatenate([[out[k] for k in SCALAR_FEATURES], hist])
    footprint, contour, height = geo.footprint, geo.contour, geo.height
    hs = height[footprint & geo.valid]
    area = float(footprint.sum())
    top = float(np.percentile(hs, 99)) if hs.size else 0.0
    out.update(object_area=area, object_frac=area / n_pix, height_mean=float(hs.mean()),
               height_max=float(hs.max()), height_std=float(hs.std()), height_median=float(np.median(hs)),
               volume=float(hs.sum()), top_flatness=float(np.mean(hs >= (1.0 - _TOP_TOLERANCE) * top)))
    # outline geometry
    poly = geo.polygon
    perimeter = float(cv2.arcLength(poly, True))
    poly_area = float(cv2.contourArea(poly))
    hull_area = float(cv2.contourArea(cv2.convexHull(contour)))
    _, _, bw, bh = cv2.boundingRect(contour)
    (_, _), (rw, rh), _ = geo.rect
    rl, rs = max(rw, rh) + 1.0, min(rw, rh) + 1.0
    out.update(perimeter=perimeter,
               compactness=4 * math.pi * poly_area / perimeter ** 2 if perimeter > 0 else 0.0,
               solidity=poly_area / hull_area if hull_area > 0 else 1.0,
               bbox_diag=math.hypot(bw, bh), rect_long=rl, rect_short=rs, rect_diag=math.hypot(rl, rs),
               elongation=rs / rl, rect_fill=area / (rl * rs))
    # height histogram
    if hist_range is None:
        rel = np.clip(hs / top, 0.0, 1.0) if top > 0 else np.zeros_like(hs)
        hist = np.histogram(rel, bins=int(hist_bins), range=(0.0, 1.0))[0]
    else:
        lo, hi = float(hist_range[0]), float(hist_range[1])
        hist = np.histogram(np.clip(hs, lo, hi), bins=int(hist_bins), range=(lo, hi))[0]
    hist = hist / max(hs.size, 1)
    return np.concatenate([[out[k] for k in SCALAR_FEATURES], hist])


@FEATURES.register("parcel_shape", "Height and outline features of top-view depth maps (area, heights, "
                                   "min-area rectangle, compactness)",
                   family="handcrafted")
class ParcelShape(Extractor):
    """Physical shape/height features of depth maps (see the module docstring).

    Parameters
    ----------
    base: ground reference: ``"plane"``, ``"border"``, ``"min"`` or a number.
    threshold: minimum height above the ground of object pixels (input units; the
        default 2 suits millimetres: about 3 sigma of the belt noise of the synthetic
        parcels). The noise of the border ring raises it to 4 sigma when larger.
    hist_bins: bins of the object height histogram.
    hist_range: ``None`` (heights divided by the object's top height, its 99th
        percentile) or ``(lo, hi)`` in input units.
    """

    family = "handcrafted"
    version = "1"

    def __init__(self, base="plane", threshold=2.0, hist_bins=8, hist_range=None):
        self.base = base
        self.threshold = threshold
        self.hist_bins = hist_bins
        self.hist_range = hist_range

    def _check(self):
        if isinstance(self.base, str):
            if self.base not in ("plane", "border", "min"):
                raise ConfigError(
                    f"parcel_shape: base {self.base!r} is not 'plane', 'border', 'min' or a number",
                    "plane follows a tilted belt; use 0 for maps already relative to the ground")
        else:
            try:
                float(self.base)
            except (TypeError, ValueError):
                raise ConfigError(f"parcel_shape: base {self.base!r} is not a number",
                                  "e.g. base: 750") from None
        if int(self.hist_bins) < 1:
            raise ConfigError(f"parcel_shape: hist_bins must be >= 1, got {self.hist_bins!r}",
                              "e.g. hist_bins: 8")
        if self.hist_range is not None:
            lo, hi = (float(v) for v in self.hist_range)
            if not hi > lo:
                raise ConfigError(
                    f"parcel_shape: hist_range {self.hist_range!r} must be (lo, hi) with hi > lo",
                    "e.g. hist_range: [0, 300], or null for a range relative to the max height")

    def feature_names(self) -> list[str]:
        return list(SCALAR_FEATURES) + [f"height_hist{i}" for i in range(int(self.hist_bins))]

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names(), dtype=object)

    def feature_descriptions(self) -> list[str]:
        """The features in words, in output order (for charts and tables)."""
        self._check()
        n = int(self.hist_bins)
        if self.hist_range is None:
            hist = [f"heights {i / n:.0%}-{(i + 1) / n:.0%} of the top" for i in range(n)]
        else:
            lo, hi = (float(v) for v in self.hist_range)
            e = np.linspace(lo, hi, n + 1)
            hist = [f"heights {e[i]:g}-{e[i + 1]:g}" for i in range(n)]
        return [DESCRIPTIONS[k] for k in SCALAR_FEATURES] + hist

    def n_features(self) -> int:
        return len(SCALAR_FEATURES) + int(self.hist_bins)

    def extract_one(self, image: np.ndarray) -> np.ndarray:
        return parcel_features(image, self.base, float(self.threshold), int(self.hist_bins), self.hist_range)

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self._check()
        return super().transform(images)

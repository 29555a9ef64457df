"""Image conversions shared by datasets, extractors and the CNN code.

Conventions (documented here once, used everywhere):

* An image is a numpy array ``(h, w)`` (gray or depth) or ``(h, w, 3)`` (RGB).
  RGBA is reduced to RGB by the loaders; palette images are expanded.
* ``uint8`` images are in 0..255; ``uint16`` in 0..65535 (scaled by 1/257 to uint8);
  float images are either intensities in [0, 1] or *depth maps* (any range, 0 meaning
  "no measurement", as a time-of-flight sensor gives).
* Depth to 8 bit: ``depth_range="minmax"`` maps each image's valid (non-zero,
  finite) min..max to 1..255 and keeps 0 for missing pixels; a pair ``(lo, hi)``
  maps that fixed range instead, so absolute heights stay comparable between images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np


def _depth_to_u8(img: np.ndarray, depth_range="minmax") -> np.ndarray:
    x = np.asarray(img, dtype=np.float64)
    valid = np.isfinite(x) & (x != 0)
    out = np.zeros(x.shape, dtype=np.uint8)
    if not valid.any():
        return out
    if depth_range in (None, "minmax"):
        lo, hi = float(x[valid].min()), float(x[valid].max())
    else:
        lo, hi = float(depth_range[0]), float(depth_range[1])
    span = hi - lo if hi > lo else 1.0
    scaled = 1.0 + 254.0 * np.clip((x - lo) / span, 0.0, 1.0)
    out[valid] = np.round(scaled[valid]).astype(np.uint8)
    return out


def to_uint8(img: np.ndarray, depth_range="minmax", is_depth: bool | None = None) -> np.ndarray:
    """Any supported image to uint8, keeping its channels."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.uint32) // 257).astype(np.uint8)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.integer):
        return np.clip(img, 0, 255).astype(np.uint8)
    x = img.astype(np.float64)
    if is_depth is None:
        finite = x[np.isfinite(x)]
        is_depth = finite.size > 0 and (finite.min() < 0 or finite.max() > 1.0)
    if is_depth:
        if x.ndim == 3:
            return np.stack([_depth_to_u8(x[..., c], depth_range) for c in range(x.shape[2])], -1)
        return _depth_to_u8(x, depth_range)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def to_gray(img: np.ndarray) -> np.ndarray:
    """RGB to gray (ITU-R 601 weights as OpenCV), other dtypes kept."""
    img = np.asarray(img)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0]
    if img.ndim == 3 and img.shape[2] >= 3:
        rgb = img[..., :3]
        if rgb.dtype == np.uint8:
            return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        g = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return g.astype(rgb.dtype if np.issubdtype(rgb.dtype, np.floating) else np.float64)
    raise ValueError(f"unsupported image shape {img.shape}")


def to_gray_u8(img: np.ndarray, depth_range="minmax") -> np.ndarray:
    return to_gray(to_uint8(img, depth_range))


def to_rgb_u8(img: np.ndarray, depth_range="minmax") -> np.ndarray:
    u8 = to_uint8(img, depth_range)
    if u8.ndim == 2:
        return np.repeat(u8[..., None], 3, axis=2)
    if u8.shape[2] == 1:
        return np.repeat(u8, 3, axis=2)
    return np.ascontiguousarray(u8[..., :3])


def resize(img: np.ndarray, size: Sequence[int], interpolation: str = "area") -> np.ndarray:
    """Resize to ``(h, w)``; ``area`` for shrinking, ``linear``/``nearest`` on request.

    Depth maps (float) are resized with ``nearest`` by callers who must keep 0 = missing.
    """
    h, w = int(size[0]), int(size[1])
    if img.shape[:2] == (h, w):
        return img
    inter = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
             "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC}[interpolation]
    if inter == cv2.INTER_AREA and (h > img.shape[0] or w > img.shape[1]):
        inter = cv2.INTER_LINEAR
    src = img
    if src.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        src = src.astype(np.float32)
    return cv2.resize(src, (w, h), interpolation=inter)


def network_input(img: np.ndarray, size: Sequence[int], channels: int = 3, depth_range="minmax",
                  is_depth: bool | None = None) -> np.ndarray:
    """The one path from an image to a CNN input, ``(h, w, channels)`` uint8, used by the
    ``cnn`` feature (:mod:`bench.features.deep`) and by fine-tuning / transfer / scratch
    (:mod:`bench.finetune`) alike, so feature rows and end-to-end rows see the same pixels:

    1. to 8 bit with :func:`to_uint8` (float depth: per-image min..max to 1..255 with 0
       kept for missing, or a fixed ``(lo, hi)``; ``is_depth=None``: the automatic rule);
    2. 3 channels: gray repeated (:func:`to_rgb_u8`); 1 channel: RGB to gray (:func:`to_gray`);
    3. resized to ``size`` ``(h, w)`` with OpenCV, aspect ratio not kept: area averaging
       when shrinking by 2x or more, bilinear otherwise (below 2x area equals bilinear to
       the eye and costs ~3x more: 0.47 vs 0.17 ms at 256 -> 224 px) and when enlarging.

    The network's own preprocessing (``preprocess_input`` or a rescaling) follows inside the model.
    """
    u8 = to_uint8(np.asarray(img), depth_range, is_depth=is_depth)
    px = to_rgb_u8(u8) if channels == 3 else to_gray(u8)
    h, w = int(size[0]), int(size[1])
    mild = px.shape[0] < 2 * h and px.shape[1] < 2 * w
    out = resize(px, (h, w), "linear" if mild else "area")
    return out.reshape(h, w, channels)


def center_crop(img: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The central ``(h, w)`` window; reflect-padded first where the image is smaller."""
    h, w = int(size[0]), int(size[1])
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph or pw:
        pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (img.ndim - 2)
        img = np.pad(img, pad, mode="reflect" if min(img.shape[:2]) > 1 else "edge")
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w]


@dataclass(frozen=True)
class Prepare:
    """Explicit image preparation before an extractor sees the image.

    color: ``keep`` | ``gray`` | ``rgb``; size: ``None`` or ``(h, w)``;
    depth_range: ``None`` (keep float depth), ``"minmax"`` or ``(lo, hi)`` (to uint8);
    crop: ``None`` or ``(h, w)``: the central window at native resolution, taken before
    resizing (padded by reflection when the image is smaller). Cropping instead of
    resizing removes object-size cues such as the crop-size leak of the sea-lion chips
    (docs/SEALION.md).
    """

    color: str = "keep"
    size: tuple | None = None
    depth_range: object = None
    interpolation: str = "area"
    crop: tuple | None = None

    def __call__(self, img: np.ndarray) -> np.ndarray:
        out = np.asarray(img)
        if self.crop is not None:
            out = center_crop(out, self.crop)
        if self.depth_range is not None and np.issubdtype(out.dtype, np.floating):
            out = to_uint8(out, self.depth_range, is_depth=True)
        if self.color == "gray":
            out = to_gray(out)
        elif self.color == "rgb":
            out = to_rgb_u8(out) if out.dtype != np.float32 and out.dtype != np.float64 else (
                np.repeat(out[..., None], 3, 2) if out.ndim == 2 else out)
        if self.size is not None:
            interp = self.interpolation
            if np.issubdtype(out.dtype, np.floating) and interp == "area":
                interp = "nearest"  # keep 0 = missing in depth maps
            out = resize(out, self.size, interp)
        return out

    def key(self) -> str:
        key = f"color={self.color};size={self.size};depth={self.depth_range};interp={self.interpolation}"
        return key + (f";crop={tuple(self.crop)}" if self.crop is not None else "")

"""Histogram of oriented gradients through OpenCV's ``cv2.HOGDescriptor``.

Parameters follow :func:`skimage.feature.hog` (orientations, pixels_per_cell,
cells_per_block, block_norm) and the output is laid out as scikit-image's
``(n_blocks_row, n_blocks_col, cells_row, cells_col, orientations)`` flattened, so
the length is ``n_blocks_row * n_blocks_col * prod(cells_per_block) * orientations``
with ``n_blocks = size // pixels_per_cell - cells_per_block + 1``. Every image is
resized to ``size`` first (``None`` keeps the native size, which then must be equal
for all images), so images of different sizes give vectors of the same length.
The default ``size=(64, 64)`` gives 7 x 7 blocks, 1764 values: enough resolution for
the small images of the bundled datasets, and a vector short enough for the
classifiers; use ``(128, 128)`` for larger objects.

Differences from scikit-image (both are Dalal-Triggs HOG; tests check that the two
vectors are equal element by element where both compute the same numbers -- 1-pixel
cells, gradients on bin centres, blocks off the border -- and otherwise strongly
correlated and agreeing on the dominant orientation):

* OpenCV votes with trilinear interpolation (between the 2 nearest orientation bins
  and the 4 nearest cells); scikit-image votes into one bin of one cell.
* OpenCV weights each block by a Gaussian window (``winSigma``). Here ``win_sigma=None``
  (the default) switches it off (sigma = 1e4, a flat window) as scikit-image has no
  window, which raises the correlation with scikit-image from about 0.6-0.9 to
  0.8-0.95 on natural images; ``win_sigma="opencv"`` keeps OpenCV's default
  (block width / 4) and a number sets it.
* OpenCV computes border gradients with reflected pixels; scikit-image sets them to 0.
* OpenCV's block normalisation is L2-Hys only (``L2`` is emulated by disabling the
  clipping).

``transform_sqrt`` maps to OpenCV's gamma correction (square root of the intensities).
``color=True`` passes RGB images and takes, per pixel, the channel with the largest
gradient, as scikit-image does with ``channel_axis=-1``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import cv2
import numpy as np

from ..errors import ConfigError, DataError
from ..imaging import resize, to_gray_u8, to_rgb_u8
from ..registry import FEATURES
from .base import Extractor

log = logging.getLogger(__name__)

_FLAT_SIGMA = 1e4
_NORMS = {"L2-Hys": 0.2, "L2": 1e6}  # L2 = L2-Hys without clipping


def _pair(value, name: str) -> tuple[int, int]:
    if np.isscalar(value):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"hog: {name} must be an integer or a pair of integers, got {value!r}",
                          f"e.g. {name}: [8, 8]") from None
    if a < 1 or b < 1:
        raise ConfigError(f"hog: {name} must be positive, got {value!r}", f"e.g. {name}: [8, 8]")
    return a, b


def hog_length(size, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)) -> int:
    """Length of the HOG vector of an image of ``size = (h, w)``."""
    (h, w), (ch, cw), (bh, bw) = _pair(size, "size"), _pair(pixels_per_cell, "pixels_per_cell"), \
        _pair(cells_per_block, "cells_per_block")
    nbr, nbc = h // ch - bh + 1, w // cw - bw + 1
    return max(nbr, 0) * max(nbc, 0) * bh * bw * int(orientations)


@FEATURES.register("hog", "Histogram of oriented gradients (OpenCV, scikit-image parameters and layout)",
                   family="handcrafted")
class HOG(Extractor):
    """HOG vector of each image resized to ``size`` (see the module docstring).

    Parameters
    ----------
    orientations, pixels_per_cell, cells_per_block, block_norm, transform_sqrt:
        as :func:`skimage.feature.hog` (``block_norm`` is ``L2-Hys`` or ``L2``).
    size: ``(h, w)`` every image is resized to (area interpolation), or ``None``.
    win_sigma: ``None`` (flat block window, like scikit-image), ``"opencv"`` or a float.
    color: ``False`` (gray) or ``True`` (RGB, strongest channel per pixel).
    """

    family = "handcrafted"
    version = "1"

    def __init__(self, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                 block_norm="L2-Hys", size=(64, 64), transform_sqrt=False, win_sigma=None,
                 color=False):
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.size = size
        self.transform_sqrt = transform_sqrt
        self.win_sigma = win_sigma
        self.color = color

    # -- configuration --------------------------------------------------------
    def _check(self):
        cell = _pair(self.pixels_per_cell, "pixels_per_cell")
        block = _pair(self.cells_per_block, "cells_per_block")
        if int(self.orientations) < 1:
            raise ConfigError(f"hog: orientations must be >= 1, got {self.orientations!r}",
                              "e.g. orientations: 9")
        if self.block_norm not in _NORMS:
            raise ConfigError(f"hog: block_norm {self.block_norm!r} is not supported by OpenCV's HOG",
                              f"use one of {', '.join(_NORMS)}")
        if self.win_sigma is None:
            sigma = _FLAT_SIGMA
        elif self.win_sigma == "opencv":
            sigma = -1.0
        else:
            try:
                sigma = float(self.win_sigma)
            except (TypeError, ValueError):
                raise ConfigError(f"hog: win_sigma {self.win_sigma!r} is not a number",
                                  "use null (flat window), 'opencv' or a positive number") from None
        size = None if self.size is None else _pair(self.size, "size")
        if size is not None and hog_length(size, 1, cell, block) == 0:
            raise ConfigError(f"hog: size {tuple(size)} is smaller than one block "
                              f"({block[0] * cell[0]} x {block[1] * cell[1]} pixels)",
                              "increase size or reduce pixels_per_cell / cells_per_block")
        return cell, block, sigma, size

    def n_features(self, image_size=None) -> int:
        """Output length for ``size`` (or ``image_size`` when ``size`` is ``None``)."""
        cell, block, _, size = self._check()
        return hog_length(size if size is not None else image_size, self.orientations, cell, block)

    def skimage_params(self) -> dict:
        """The :func:`skimage.feature.hog` keyword arguments that describe this extractor
        (same cells, blocks, orientations, normalisation and gamma), and ``size`` (the
        image is resized to it first; ``None``: native size) and ``color``. Used to
        draw the HOG glyph picture of exactly what a row measures."""
        cell, block, _, size = self._check()
        return {"orientations": int(self.orientations), "pixels_per_cell": tuple(cell),
                "cells_per_block": tuple(block), "block_norm": str(self.block_norm),
                "transform_sqrt": bool(self.transform_sqrt),
                "size": None if size is None else tuple(size), "color": bool(self.color)}

    def _descriptor(self, win_hw, cell, block, sigma) -> cv2.HOGDescriptor:
        (h, w), (ch, cw), (bh, bw) = win_hw, cell, block
        return cv2.HOGDescriptor((w, h), (bw * cw, bh * ch), (cw, ch), (cw, ch), int(self.orientations),
                                 1, float(sigma), cv2.HOGDESCRIPTOR_L2HYS, _NORMS[self.block_norm],
                                 bool(self.transform_sqrt), 64, False)

    # -- transform --------------------------------------------------------------
    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        cell, block, sigma, size = self._check()
        convert = to_rgb_u8 if self.color else to_gray_u8
        descriptors: dict[tuple, cv2.HOGDescriptor] = {}
        rows = []
        for k, im in enumerate(images):
            u8 = convert(im)
            if size is not None:
                u8 = resize(u8, size, "area")
            h, w = u8.shape[:2]
            nr, nc = h // cell[0], w // cell[1]
            nbr, nbc = nr - block[0] + 1, nc - block[1] + 1
            if nbr < 1 or nbc < 1:
                raise DataError(f"hog: image {k} of size {h}x{w} is smaller than one block",
                                "set a size (e.g. size: [64, 64]) so every image is resized first")
            win = (nr * cell[0], nc * cell[1])
            u8 = np.ascontiguousarray(u8[:win[0], :win[1]])
            desc = descriptors.get(win)
            if desc is None:
                desc = descriptors[win] = self._descriptor(win, cell, block, sigma)
            v = desc.compute(u8)
            # OpenCV orders blocks and the cells within a block column-major; reorder to
            # scikit-image's (block_row, block_col, cell_row, cell_col, orientation).
            v = v.reshape(nbc, nbr, block[1], block[0], int(self.orientations)).transpose(1, 0, 3, 2, 4)
            rows.append(v.ravel())
        if not rows:
            return np.zeros((0, self.n_features() if size is not None else 0), dtype=np.float32)
        if len({r.size for r in rows}) > 1:
            raise DataError("hog: images of different sizes give HOG vectors of different lengths",
                            "set size (e.g. size: [64, 64]) so every image is resized first")
        return np.stack(rows).astype(np.float32, copy=False)

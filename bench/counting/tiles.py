"""Tiles of a scene, their per-class count targets, and the colour switches of the counters.

Tiles
    :func:`tile_grid` cuts a ``height x width`` scene into non-overlapping ``tile x tile``
    squares starting at the top-left corner; the last row and column are padded with
    black (:func:`cut_tile`), so every pixel belongs to exactly one tile and the scene
    count is the sum of the tile counts. Black padding is also what the blacked-out
    regions of a real survey photo look like.

Targets (:func:`tile_targets`)
    ``points``: an animal counts for the tile that contains its annotated point.
    ``density``: each point spreads a unit Gaussian (``sigma`` px) and a tile's target
    is the mass that falls inside it (the grid's outer edges extend to infinity, so
    every point still contributes exactly 1 in total). The density target is smooth
    where an animal lies on a tile edge.

Colour (``normalize``, ``jitter``)
    A new survey photo comes with its own light and colour cast. ``normalize: grayworld``
    scales each channel of a scene so that the channel means are equal (the gray-world
    assumption; black pixels, e.g. blacked-out regions, are ignored).
    ``normalize: histmatch`` maps each channel's histogram onto the pooled histogram of
    the *training* scenes (:class:`HistogramMatcher`; fitted on the training scenes of
    the split only; equal to :func:`skimage.exposure.match_histograms` against those
    pixels). ``jitter: a`` adds colour-jittered copies of the training tiles (each
    channel scaled by ``U(1 - a, 1 + a)``, brightness by ``U(1 - a/2, 1 + a/2)``).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from .. import schema
from ..errors import ConfigError, did_you_mean

NORMALIZE = schema.allowed("count.regression", "normalize")
TARGETS = schema.allowed("count.regression", "target")


# --------------------------------------------------------------------------- tiles

def tile_grid(height: int, width: int, tile: int) -> np.ndarray:
    """Top-left corners ``(x0, y0)`` of the tiles covering the scene, row by row."""
    if int(tile) < 2:
        raise ConfigError(f"counting: tile size must be >= 2 px, got {tile!r}",
                          "e.g. tile: 64 (two patch sizes)")
    xs = np.arange(0, int(width), int(tile))
    ys = np.arange(0, int(height), int(tile))
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64)


def cut_tile(scene: np.ndarray, x0: int, y0: int, tile: int) -> np.ndarray:
    """The ``tile``-pixel square at ``(x0, y0)``; outside the scene it is black."""
    h, w = scene.shape[:2]
    part = scene[y0:min(y0 + tile, h), x0:min(x0 + tile, w)]
    if part.shape[0] == tile and part.shape[1] == tile:
        return np.ascontiguousarray(part)
    out = np.zeros((tile, tile) + scene.shape[2:], dtype=scene.dtype)
    out[:part.shape[0], :part.shape[1]] = part
    return out


def scene_tiles(scene: np.ndarray, tile: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(origins, tiles)`` of one scene."""
    origins = tile_grid(scene.shape[0], scene.shape[1], tile)
    return origins, [cut_tile(scene, int(x), int(y), tile) for x, y in origins]


def tile_targets(points_xy: np.ndarray, labels: np.ndarray, n_classes: int, height: int, width: int,
                 tile: int, target: str = "points", sigma: float = 4.0) -> np.ndarray:
    """Per-tile, per-class count targets ``(n_tiles, n_classes)`` in :func:`tile_grid` order.

    ``labels[i]`` is the class index of point ``i`` (``0 .. n_classes - 1``). ``points``
    targets are integers; ``density`` targets sum to the number of points per class.
    """
    if target not in TARGETS:
        raise ConfigError(f"counting: unknown tile target {target!r}", f"one of {', '.join(TARGETS)}")
    xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    nx, ny = -(-int(width) // tile), -(-int(height) // tile)
    out = np.zeros((ny, nx, n_classes))
    if len(xy) == 0:
        return out.reshape(-1, n_classes)
    if target == "points":
        cx = np.clip(xy[:, 0] // tile, 0, nx - 1).astype(np.int64)
        cy = np.clip(xy[:, 1] // tile, 0, ny - 1).astype(np.int64)
        np.add.at(out, (cy, cx, labels), 1.0)
        return out.reshape(-1, n_classes)
    if not sigma or float(sigma) <= 0:
        raise ConfigError(f"counting: density targets need sigma > 0, got {sigma!r}", "e.g. sigma: 4")
    from scipy.special import ndtr

    ex = np.r_[-np.inf, np.arange(1, nx) * tile, np.inf]
    ey = np.r_[-np.inf, np.arange(1, ny) * tile, np.inf]
    # the centre of pixel x is at x + 0.5
    fx = np.diff(ndtr((ex[None, :] - (xy[:, :1] + 0.5)) / float(sigma)), axis=1)   # (n, nx)
    fy = np.diff(ndtr((ey[None, :] - (xy[:, 1:] + 0.5)) / float(sigma)), axis=1)   # (n, ny)
    for c in range(n_classes):
        sel = labels == c
        if sel.any():
            out[:, :, c] = fy[sel].T @ fx[sel]
    return out.reshape(-1, n_classes)


# --------------------------------------------------------------------------- colour

def _valid(img: np.ndarray) -> np.ndarray:
    """Pixels that are not pure black (padding, blacked-out regions)."""
    return np.asarray(img).reshape(-1, img.shape[-1]).max(1) > 0


def gray_world(img: np.ndarray) -> np.ndarray:
    """Channel gains that equalise the channel means (black pixels ignored), as uint8."""
    arr = np.asarray(img)
    flat = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
    ok = _valid(arr)
    if not ok.any():
        return arr.copy()
    means = flat[ok].mean(0)
    gains = means.mean() / np.maximum(means, 1e-6)
    return np.clip(np.rint(arr.astype(np.float64) * gains), 0, 255).astype(np.uint8)


class HistogramMatcher:
    """Map each channel of a scene onto the pooled histogram of reference (training) scenes.

    ``fit(scenes)`` stores per-channel cumulative histograms of the non-black pixels of
    the reference scenes (``ref_cdf_``, shape ``(channels, 256)``); ``transform(img)``
    maps each channel value through its own CDF onto the reference values, exactly as
    :func:`skimage.exposure.match_histograms` does (``np.interp`` of the quantiles).
    Black pixels stay black.
    """

    def __init__(self):
        pass

    def fit(self, scenes: Sequence[np.ndarray]) -> "HistogramMatcher":
        hist = None
        for s in scenes:
            s = np.asarray(s)
            flat = s.reshape(-1, s.shape[-1])[_valid(s)]
            h = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(flat.shape[1])])
            hist = h if hist is None else hist + h
        if hist is None:
            raise ValueError("HistogramMatcher.fit needs at least one scene")
        self.ref_counts_ = hist.astype(np.float64)
        self.ref_cdf_ = np.cumsum(self.ref_counts_, 1) / np.maximum(self.ref_counts_.sum(1, keepdims=True), 1)
        return self

    def transform(self, img: np.ndarray) -> np.ndarray:
        arr = np.asarray(img)
        out = arr.copy()
        flat = arr.reshape(-1, arr.shape[-1])
        ok = _valid(arr)
        res = out.reshape(-1, arr.shape[-1])
        for c in range(flat.shape[1]):
            vals = flat[ok, c]
            if vals.size == 0:
                continue
            if vals.dtype == np.uint8:  # a 256-entry lookup table (what scikit-image does for uint8)
                counts = np.bincount(vals, minlength=256)
                present = np.flatnonzero(counts)
                src_q = np.cumsum(counts[present]) / vals.size
                lut = np.zeros(256)
                lut[present] = np.interp(src_q, self._ref_q[c], self._ref_vals[c])
                res[ok, c] = np.clip(np.rint(lut[vals]), 0, 255).astype(arr.dtype)
                continue
            src_vals, src_idx, src_counts = np.unique(vals, return_inverse=True, return_counts=True)
            src_q = np.cumsum(src_counts) / vals.size
            mapped = np.interp(src_q, self._ref_q[c], self._ref_vals[c])
            res[ok, c] = np.clip(np.rint(mapped[src_idx]), 0, 255).astype(arr.dtype)
        return out

    @property
    def _ref_vals(self):
        return [np.flatnonzero(row) for row in self.ref_counts_]

    @property
    def _ref_q(self):
        return [cdf[np.flatnonzero(row)] for cdf, row in zip(self.ref_cdf_, self.ref_counts_)]

    def key(self) -> str:
        return hashlib.blake2b(self.ref_counts_.tobytes(), digest_size=8).hexdigest()


def colour_jitter(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Random per-channel gain ``U(1-a, 1+a)`` and brightness ``U(1-a/2, 1+a/2)``; black stays black."""
    gains = rng.uniform(1 - amount, 1 + amount, img.shape[-1]) * rng.uniform(1 - amount / 2, 1 + amount / 2)
    return np.clip(np.rint(np.asarray(img, np.float64) * gains), 0, 255).astype(np.uint8)


def check_normalize(value, where: str = "count.regression.normalize") -> str:
    v = "none" if value in (None, False) else str(value)
    if v not in NORMALIZE:
        raise ConfigError(f"{where}: unknown normalisation {value!r}",
                          did_you_mean(v, NORMALIZE) + f"one of {', '.join(NORMALIZE)}")
    return v


class SceneColour:
    """The per-scene normalisation of one split: ``none``, ``grayworld`` or ``histmatch``
    (fitted on the training scenes given to :meth:`fit`)."""

    def __init__(self, mode: str = "none"):
        self.mode = check_normalize(mode)

    def fit(self, train_images: Sequence[np.ndarray]) -> "SceneColour":
        self.matcher_ = HistogramMatcher().fit(train_images) if self.mode == "histmatch" else None
        return self

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.mode == "grayworld":
            return gray_world(img)
        if self.mode == "histmatch":
            return self.matcher_.transform(img)
        return img

    def key(self) -> str:
        return f"histmatch-{self.matcher_.key()}" if self.mode == "histmatch" else self.mode

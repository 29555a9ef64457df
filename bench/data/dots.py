"""Dotted photos -> point annotations (the NOAA Steller sea lion ``Train`` / ``TrainDotted`` layout).

The NOAA survey data ships every training photo twice: the clean photo
(``Train/42.jpg``) and the same photo with one coloured dot painted on every
animal (``TrainDotted/42.jpg``); the dot colour names the class:

========  ===============  ==================
colour    class            reference RGB
========  ===============  ==================
red       adult_males      (243, 8, 5)
magenta   subadult_males   (244, 8, 242)
brown     adult_females    (87, 46, 10)
blue      juveniles        (32, 56, 167)
green     pups             (38, 174, 21)
========  ===============  ==================

(the brown and blue references are the medians measured on the two shared
photos, the others the usual values of that data set). Some regions of a dotted
photo are blacked out: their animals were not annotated, so they must not be
used as "no animal here" either. :func:`find_dots` turns one pair into points:

1. **difference**: ``max_c |dotted - train|`` per pixel (int16), so a dot of any
   colour stands out against the unchanged photo; JPEG noise stays below
   ``diff_threshold`` (measured: median 2-3, 99.9th percentile below 40 away from
   the dots on the shared photos);
2. **blacked-out mask** (:func:`blacked_out_mask`): dotted pixels with every
   channel at most ``black_level`` in connected regions of at least
   ``min_black_area`` pixels, dilated by ``mask_margin`` (the JPEG ringing at the
   edge of a black region also differs from the photo). Dots inside it are dropped;
   the mask is returned so loaders can black out the same region of the clean
   photo (then neither training nor counting sees the unannotated animals);
3. **blobs**: ``detector="components"`` (default): 8-connected components of the
   thresholded difference with at least ``min_area`` pixels; a component much
   larger than 1.6 median dots, or larger than 1.2 and elongated (principal second
   moments in a ratio of 3 or more: two touching dots), is split by colour and, within a colour, into
   ``round(area / dot_area)`` parts (at least 2 when elongated) by k-means on the
   pixel coordinates. ``detector="log"``: :func:`skimage.feature.blob_log` on the
   difference image (the classic Kaggle recipe), sigma 2-5 px;
4. **colour**: the median colour of the dot's central pixels (within
   ``core_radius`` px of its centre) in the dotted photo, converted to CIE Lab,
   is assigned to the nearest reference colour; a blob farther than
   ``max_colour_distance`` (Delta E 76) from every reference is reported as
   ``unmatched`` (not a dot: an edit artefact) and not kept.

Both detectors were measured on the two shared photos and on painted synthetic
scenes (docs/SEALION.md): ``components`` matches ``counts.csv`` exactly and is the
default; ``log`` finds the same dots but is ~10x slower on a full photo and merges
touching dots of one colour less predictably.

:func:`points_from_dots` runs a whole pair of folders and writes the
``image,x,y,class`` CSV read by the ``points`` dataset; ``python -m bench
points-from-dots TRAIN_DIR DOTTED_DIR --out annotations.csv`` is its command.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

DOT_COLOURS = {
    "adult_males": (243, 8, 5),
    "subadult_males": (244, 8, 242),
    "adult_females": (87, 46, 10),
    "juveniles": (32, 56, 167),
    "pups": (38, 174, 21),
}
DETECTORS = ("components", "log")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass
class DotResult:
    """Points of one photo pair: ``points`` (``x, y, class, area, colour_distance``),
    ``mask`` (bool ``(h, w)``, True where the dotted photo is blacked out) and the
    blobs rejected for their colour (``unmatched``: ``x, y, area, colour_distance``)."""

    points: pd.DataFrame
    mask: np.ndarray
    unmatched: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------- colour

def rgb_to_lab(rgb) -> np.ndarray:
    """CIE Lab (D65) of ``(..., 3)`` RGB values in 0..255 (:func:`skimage.color.rgb2lab`)."""
    from skimage.color import rgb2lab

    arr = np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3) / 255.0
    return rgb2lab(arr).reshape(np.shape(rgb)[:-1] + (3,))


def classify_colours(rgb, colours: Mapping[str, Sequence[int]] = DOT_COLOURS):
    """Nearest reference colour in CIE Lab: ``(class names, Delta E 76 distances)``."""
    names = list(colours)
    ref = rgb_to_lab(np.array([colours[n] for n in names], dtype=np.float64))
    lab = rgb_to_lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))
    d = np.linalg.norm(lab[:, None, :] - ref[None, :, :], axis=2)
    k = d.argmin(1)
    return [names[i] for i in k], d[np.arange(len(k)), k]


# --------------------------------------------------------------------------- masks

def blacked_out_mask(dotted: np.ndarray, black_level: int = 20, min_black_area: int = 2000,
                     mask_margin: int = 8) -> np.ndarray:
    """True where the dotted photo is blacked out (large near-black regions, dilated)."""
    import cv2

    dark = (np.asarray(dotted).max(axis=2) <= black_level).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    big = 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_black_area)
    mask = np.isin(lab, big) if big.size else np.zeros(dark.shape, bool)
    if mask_margin > 0 and mask.any():
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * mask_margin + 1, 2 * mask_margin + 1))
        mask = cv2.dilate(mask.astype(np.uint8), k) > 0
    return mask


def difference(train: np.ndarray, dotted: np.ndarray) -> np.ndarray:
    """``max_c |dotted - train|`` as uint8 ``(h, w)``."""
    import cv2

    return cv2.absdiff(np.ascontiguousarray(dotted), np.ascontiguousarray(train)).max(axis=2)


# --------------------------------------------------------------------------- blobs

def _component_blobs(diff: np.ndarray, dotted: np.ndarray, keep: np.ndarray, threshold: int,
                     min_area: int, colours, core_radius: float, max_colour_distance: float):
    """Blobs ``(x, y, area, rgb)`` from connected components, touching dots split."""
    import cv2

    binary = ((diff > threshold) & keep).astype(np.uint8)
    n, lab, stats, cent = cv2.connectedComponentsWithStats(binary, connectivity=8)
    good = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_area]
    if not good:
        return []
    areas = stats[good, cv2.CC_STAT_AREA].astype(float)
    dot_area = float(np.median(areas))  # most components are one dot
    blobs = []
    for k in good:
        x0, y0, w, h, area = stats[k]
        ys, xs = np.nonzero(lab[y0:y0 + h, x0:x0 + w] == k)
        if area <= 1.6 * dot_area and (area < 1.2 * dot_area or _elongation(xs, ys) < 3.0):
            blobs.append((float(cent[k][0]), float(cent[k][1]), int(area)))
            continue
        # two or more touching dots: split by colour, then by size and shape within a colour
        names, dist = classify_colours(dotted[ys + y0, xs + x0], colours)
        names = np.asarray(names)
        ok = dist <= max_colour_distance
        for cls in np.unique(names[ok]):
            sel = ok & (names == cls)
            m = int(sel.sum())
            if m < min_area // 2:
                continue
            parts = max(1, int(round(m / dot_area)))
            if parts == 1 and m >= 1.2 * dot_area and _elongation(xs[sel], ys[sel]) >= 3.0:
                parts = 2
            pts = np.stack([xs[sel], ys[sel]], 1).astype(np.float32)
            if parts == 1:
                blobs.append((x0 + float(pts[:, 0].mean()), y0 + float(pts[:, 1].mean()), m))
                continue
            from sklearn.cluster import KMeans

            km = KMeans(parts, n_init=4, random_state=0).fit(pts)
            for j in range(parts):
                pj = pts[km.labels_ == j]
                blobs.append((x0 + float(pj[:, 0].mean()), y0 + float(pj[:, 1].mean()), len(pj)))
    return blobs


def _elongation(xs, ys) -> float:
    """Ratio of the principal second moments of a pixel set: about 1 for one round dot, about
    ``1 + (d / r)^2`` for two touching dots of radius ``r`` whose centres are ``d`` apart."""
    if len(xs) < 3:
        return 1.0
    ev = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(np.float64)))
    return float(ev[-1] / max(ev[0], 1e-6))


def _log_blobs(diff: np.ndarray, keep: np.ndarray, threshold: int, min_sigma: float = 2.0,
               max_sigma: float = 5.0):
    """Blobs ``(x, y, area)`` from :func:`skimage.feature.blob_log` on the difference."""
    from skimage.feature import blob_log

    img = np.where(keep, diff, 0).astype(np.float32) / 255.0
    found = blob_log(img, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=4,
                     threshold=threshold / 255.0 / 4, overlap=0.5, exclude_border=False)
    return [(float(c), float(r), int(round(np.pi * 2 * s * s))) for r, c, s in found]


def find_dots(train: np.ndarray, dotted: np.ndarray, *, colours: Mapping = DOT_COLOURS,
              detector: str = "components", diff_threshold: int = 40, min_area: int = 12,
              core_radius: float = 1.5, max_colour_distance: float = 40.0, black_level: int = 20,
              min_black_area: int = 2000, mask_margin: int = 8, name: str = "image") -> DotResult:
    """Points of one ``(train, dotted)`` pair of RGB uint8 arrays (see the module doc)."""
    if detector not in DETECTORS:
        raise ConfigError(f"points-from-dots: unknown detector {detector!r}",
                          f"one of {', '.join(DETECTORS)}")
    train, dotted = np.asarray(train), np.asarray(dotted)
    if train.shape != dotted.shape:
        raise DataError(f"{name}: the photo is {_wh(train)} but its dotted copy is {_wh(dotted)}",
                        "both folders must hold the same photos at the same size")
    mask = blacked_out_mask(dotted, black_level, min_black_area, mask_margin)
    diff = difference(train, dotted)
    if detector == "components":
        blobs = _component_blobs(diff, dotted, ~mask, diff_threshold, min_area, colours,
                                 core_radius, max_colour_distance)
    else:
        blobs = _log_blobs(diff, ~mask, diff_threshold)
    h, w = diff.shape
    rows, rejected = [], []
    r = int(np.ceil(core_radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = np.hypot(xx, yy) <= core_radius
    for x, y, area in blobs:
        xi, yi = int(round(x)), int(round(y))
        cy, cx = np.clip(yi + yy[disc], 0, h - 1), np.clip(xi + xx[disc], 0, w - 1)
        rgb = np.median(dotted[cy, cx].astype(np.float64), axis=0)
        (cls,), (dist,) = classify_colours(rgb[None], colours)
        rec = dict(x=min(max(xi, 0), w - 1), y=min(max(yi, 0), h - 1), area=int(area),
                   colour_distance=float(dist))
        if dist <= max_colour_distance:
            rows.append(dict(rec, **{"class": cls}))
        else:
            rejected.append(rec)
    cols = ["x", "y", "class", "area", "colour_distance"]
    pts = pd.DataFrame(rows, columns=cols).sort_values(["y", "x"], kind="stable").reset_index(drop=True)
    if rejected:
        log.info("%s: %d blobs far from every dot colour were not kept", name, len(rejected))
    return DotResult(pts, mask, pd.DataFrame(rejected, columns=["x", "y", "area", "colour_distance"]))


def _wh(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


# --------------------------------------------------------------------------- folders

def pair_files(train_dir, dotted_dir) -> list[tuple[str, Path, Path]]:
    """``(name, train file, dotted file)`` for every photo; mismatched sets raise DataError."""
    train_dir, dotted_dir = Path(train_dir), Path(dotted_dir)
    for d, what in ((train_dir, "TRAIN_DIR"), (dotted_dir, "DOTTED_DIR")):
        if not d.is_dir():
            raise DataError(f"points-from-dots: {what} {d} is not a folder",
                            "pass the folder of clean photos and the folder of dotted copies")

    def files(d):
        return {p.name: p for p in sorted(d.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}

    a, b = files(train_dir), files(dotted_dir)
    if not a:
        raise DataError(f"points-from-dots: no photos in {train_dir}",
                        f"expected image files ({', '.join(IMAGE_SUFFIXES)})")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"only in {train_dir}: {', '.join(only_a[:5])}{' ...' if len(only_a) > 5 else ''}")
        if only_b:
            parts.append(f"only in {dotted_dir}: {', '.join(only_b[:5])}{' ...' if len(only_b) > 5 else ''}")
        raise DataError("points-from-dots: the two folders do not hold the same photos (" +
                        "; ".join(parts) + ")",
                        "every photo needs its dotted copy under the same file name")
    return [(n, a[n], b[n]) for n in sorted(a, key=_natural)]


def _natural(name: str):
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def read_rgb(path) -> np.ndarray:
    """A photo as RGB uint8; an unreadable file is a DataError naming it."""
    from .points import read_scene

    return read_scene(path)


def points_from_dots(train_dir, dotted_dir, out=None, *, classes: Sequence[str] | None = None,
                     mask_dir=None, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Points of every photo pair: ``(points, summary)``.

    ``points`` has columns ``image, x, y, class`` (the ``points`` dataset CSV) plus
    ``area, colour_distance``; ``summary`` one row per image with the count of each
    class, ``total``, ``masked_%`` (share blacked out) and ``unmatched`` blobs.
    ``out`` writes the CSV (``image,x,y,class`` only); ``mask_dir`` writes each
    blacked-out mask as ``<stem>.png`` (255 = blacked out). ``options`` go to
    :func:`find_dots`.
    """
    import cv2

    colours = options.get("colours", DOT_COLOURS)
    classes = list(classes or colours)
    frames, summary = [], []
    for name, tp, dp in pair_files(train_dir, dotted_dir):
        train, dotted = read_rgb(tp), read_rgb(dp)
        if train.shape != dotted.shape:
            raise DataError(f"points-from-dots: {tp} is {_wh(train)} but {dp} is {_wh(dotted)}",
                            "the dotted copy must be the same photo at the same size")
        res = find_dots(train, dotted, name=name, **options)
        pts = res.points.assign(image=name)
        frames.append(pts)
        counts = pts["class"].value_counts()
        summary.append({"image": name, **{c: int(counts.get(c, 0)) for c in classes},
                        "total": int(len(pts)), "masked_%": round(100 * float(res.mask.mean()), 2),
                        "unmatched": int(len(res.unmatched))})
        if mask_dir is not None:
            Path(mask_dir).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(Path(mask_dir) / f"{Path(name).stem}.png"),
                        res.mask.astype(np.uint8) * 255)
        log.info("%s: %d dots (%s)", name, len(pts),
                 ", ".join(f"{c} {int(counts.get(c, 0))}" for c in classes))
    points = pd.concat(frames, ignore_index=True)[["image", "x", "y", "class", "area",
                                                   "colour_distance"]]
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        points[["image", "x", "y", "class"]].to_csv(tmp, index=False)
        tmp.replace(out)
    return points, pd.DataFrame(summary)


def masked_photo(train: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The clean photo with the blacked-out region of its dotted copy set to black."""
    out = np.array(train, copy=True)
    out[mask] = 0
    return out

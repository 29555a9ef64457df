"""Patches cut around point annotations in large images (the Sea Lion layout).

Layout on disk::

    <path>/
        scene_a.jpg            large images ("scenes"), any format Pillow reads
        scene_b.png
        annotations.csv        one row per annotated animal: image,x,y,class

``image`` is the file name relative to ``<path>`` (the extension may be left out
when exactly one image file has that stem); ``x`` (column) and ``y`` (row) are
pixel coordinates in the image as stored (EXIF orientation is *not* applied, as
in the Kaggle NOAA Steller Sea Lion dot files); ``class`` is any name except
``background``. Only images named in the CSV are scenes.

The dataset is a set of square patches of ``patch_size`` pixels:

* one patch centred on every annotated point, labelled with its class;
* ``background_ratio`` background patches per annotated patch in each image,
  centred at random positions at least ``min_distance`` pixels from *every*
  annotated point of that image (the class ``background``, always the last label);
  a share ``hard_negatives`` of them lies just outside that distance, showing
  part of an animal off-centre (``kind = "near-background"`` in ``meta["patches"]``).

``groups`` holds the scene id of each patch: patches of one photo share light,
terrain and neighbouring animals, so the engine's grouped splitter
(``StratifiedGroupKFold``) keeps a photo's patches in one fold.

Borders: a patch centred near the edge extends outside the image. ``reflect``
(default) fills the outside by mirror reflection without repeating the edge pixel
(``cv2.BORDER_REFLECT_101``, numpy ``mode="reflect"``), which keeps texture
statistics; ``zero`` fills with black (an artificial edge that texture features
see); ``drop`` drops every annotated point whose patch does not fit and samples
background centres only where the patch fits. The counting code slides windows
with the same border rule, so a window centred on an animal equals its patch.

Patches are cut lazily: a small LRU cache holds the last ``cache_images``
decoded scenes, so iterating the patches in order decodes each scene once.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..imaging import to_rgb_u8
from ..registry import DATASETS
from .base import Dataset

log = logging.getLogger(__name__)

BACKGROUND = "background"
BORDERS = ("reflect", "zero", "drop")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
REQUIRED_COLUMNS = ("image", "x", "y", "class")


# --------------------------------------------------------------------------- reading

def read_scene(path) -> np.ndarray:
    """Decode a scene as ``(h, w, 3)`` uint8 RGB (16-bit and float images are scaled)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "PA", "1"):
                arr = np.asarray(im.convert("RGB"))
            else:  # I;16, I, F: scale through the shared conversion rules
                arr = to_rgb_u8(np.asarray(im))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}",
                        "check that the file is a complete image Pillow can open") from exc
    return np.ascontiguousarray(arr)


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}",
                        "check that the file is a complete image Pillow can open") from exc


def file_hash(path, chunk: int = 1 << 20) -> str:
    """blake2b of the file bytes (the cache identity of a scene)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _line(row_index: int) -> int:
    """CSV line number of a data row (line 1 is the header)."""
    return int(row_index) + 2


def read_annotations(csv_path, image_dir=None) -> pd.DataFrame:
    """Read and validate a points CSV; returns columns ``image, x, y, class, path``.

    ``x`` and ``y`` are rounded to integer pixels; ``path`` is the resolved image
    file. Every problem raises :class:`DataError` naming the file, the line and the
    column.
    """
    csv_path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    if not csv_path.is_file():
        raise DataError(f"annotation file {csv_path} not found",
                        "write a CSV with columns image,x,y,class or set `annotations:`")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {csv_path}: {exc}",
                        "expected a comma-separated file with header image,x,y,class") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                        f"(found: {', '.join(df.columns) or 'none'})",
                        "the header must name the columns image,x,y,class")
    if df.empty:
        raise DataError(f"{csv_path} has no annotation rows", "add one row per annotated point")
    df = df[list(REQUIRED_COLUMNS)].copy()
    for col in ("image", "class"):
        df[col] = df[col].str.strip()
        empty = np.flatnonzero((df[col] == "").to_numpy())
        if empty.size:
            raise DataError(f"{csv_path}, line {_line(empty[0])}, column '{col}': empty value",
                            f"every row needs a non-empty {col}")
    bad_bg = np.flatnonzero((df["class"] == BACKGROUND).to_numpy())
    if bad_bg.size:
        raise DataError(f"{csv_path}, line {_line(bad_bg[0])}, column 'class': "
                        f"'{BACKGROUND}' is reserved",
                        "background patches are sampled automatically; remove these rows")
    for col in ("x", "y"):
        raw = df[col]
        num = pd.to_numeric(raw.str.strip(), errors="coerce")
        bad = np.flatnonzero((~np.isfinite(num.to_numpy(dtype=float, na_value=np.nan))))
        if bad.size:
            i = bad[0]
            raise DataError(f"{csv_path}, line {_line(i)}, column '{col}': "
                            f"{raw.iloc[i]!r} is not a number",
                            "coordinates are pixel positions (x = column, y = row)")
        neg = np.flatnonzero((num < -0.5).to_numpy())
        if neg.size:
            i = neg[0]
            raise DataError(f"{csv_path}, line {_line(i)}, column '{col}': "
                            f"{raw.iloc[i]!r} is negative", "coordinates start at 0")
        df[col] = np.rint(num.to_numpy(dtype=float)).astype(np.int64)

    # resolve image files once per distinct name
    resolved: dict[str, Path] = {}
    first_row = {name: i for i, name in reversed(list(enumerate(df["image"])))}
    for name, i in first_row.items():
        resolved[name] = _resolve_image(name, image_dir, csv_path, _line(i))
    df["path"] = df["image"].map(lambda n: str(resolved[n]))

    # coordinates inside their image
    for name, path in resolved.items():
        w, h = image_size(path)
        rows = np.flatnonzero((df["image"] == name).to_numpy())
        for col, limit in (("x", w), ("y", h)):
            vals = df[col].to_numpy()[rows]
            out = np.flatnonzero(vals >= limit)
            if out.size:
                i = rows[out[0]]
                raise DataError(f"{csv_path}, line {_line(i)}, column '{col}': {vals[out[0]]} "
                                f"is outside image {name} ({w}x{h} pixels)",
                                "x must be < width and y < height; are x and y swapped?")
    return df.reset_index(drop=True)


def _resolve_image(name: str, image_dir: Path, csv_path: Path, line: int) -> Path:
    cand = image_dir / name
    if cand.is_file():
        return cand
    if not Path(name).suffix:
        matches = sorted(p for p in image_dir.glob(f"{name}.*")
                         if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DataError(f"{csv_path}, line {line}, column 'image': {name!r} matches "
                            f"{len(matches)} files ({', '.join(p.name for p in matches)})",
                            "write the file name with its extension")
    raise DataError(f"{csv_path}, line {line}, column 'image': image {name!r} not found "
                    f"in {image_dir}", "names are relative to the dataset folder")


# --------------------------------------------------------------------------- geometry

def _reflect101(idx: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index into ``[0, n)`` as ``cv2.BORDER_REFLECT_101`` does."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    i = np.abs(idx) % period
    return np.where(i >= n, period - i, i)


def patch_fits(x: int, y: int, size: int, width: int, height: int) -> bool:
    half = size // 2
    return x - half >= 0 and y - half >= 0 and x - half + size <= width and y - half + size <= height


def cut_patch(scene: np.ndarray, x: int, y: int, size: int, border: str = "reflect") -> np.ndarray:
    """The ``size``-pixel square whose centre pixel is ``(x, y)``.

    The patch covers columns ``x - size//2 .. x - size//2 + size - 1`` (same for
    rows). Outside pixels follow ``border`` (``reflect`` or ``zero``; ``drop``
    raises when the patch does not fit).
    """
    h, w = scene.shape[:2]
    half = size // 2
    x0, y0 = int(x) - half, int(y) - half
    if x0 >= 0 and y0 >= 0 and x0 + size <= w and y0 + size <= h:
        return scene[y0:y0 + size, x0:x0 + size].copy()
    if border == "drop":
        raise ValueError(f"patch at ({x}, {y}) does not fit a {w}x{h} image")
    xi = np.arange(x0, x0 + size)
    yi = np.arange(y0, y0 + size)
    if border == "reflect":
        return scene[np.ix_(_reflect101(yi, h), _reflect101(xi, w))]
    if border == "zero":
        out = np.zeros((size, size) + scene.shape[2:], dtype=scene.dtype)
        vx, vy = (xi >= 0) & (xi < w), (yi >= 0) & (yi < h)
        out[np.ix_(vy, vx)] = scene[np.ix_(yi[vy], xi[vx])]
        return out
    raise ValueError(f"unknown border {border!r}")


def sample_background(points: np.ndarray, width: int, height: int, n: int, min_distance: float,
                      size: int, border: str, rng: np.random.Generator, near: int = 0,
                      ring: float | None = None, max_rounds: int = 50) -> np.ndarray:
    """``n`` distinct integer centres ``(x, y)`` at least ``min_distance`` from every point.

    The first ``near`` of them ("hard negatives") lie in the ring ``min_distance ..
    min_distance + ring`` (default ``ring = size / 2``) around a random annotated
    point, so the window shows part of an animal off-centre; the rest are uniform
    over the image. Rejection sampling against a KD-tree of the points; returns
    fewer centres when the image has no room (the caller logs it).
    """
    from scipy.spatial import cKDTree

    if n <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    half = size // 2
    if border == "drop":
        lo_x, hi_x = half, width - size + half
        lo_y, hi_y = half, height - size + half
    else:
        lo_x, hi_x, lo_y, hi_y = 0, width - 1, 0, height - 1
    if hi_x < lo_x or hi_y < lo_y:
        return np.zeros((0, 2), dtype=np.int64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    tree = cKDTree(points) if len(points) else None
    near = min(int(near), n) if len(points) else 0
    ring = float(size / 2 if ring is None else ring)
    chosen: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()

    def take(cand, target):
        inside = (cand[:, 0] >= lo_x) & (cand[:, 0] <= hi_x) & (cand[:, 1] >= lo_y) & (cand[:, 1] <= hi_y)
        cand = cand[inside]
        if tree is not None and len(cand):
            d, _ = tree.query(cand, k=1)
            cand = cand[d >= min_distance]
        for cx, cy in cand.tolist():
            if (cx, cy) not in seen:
                seen.add((cx, cy))
                chosen.append((cx, cy))
                if len(chosen) == target:
                    return True
        return False

    for target, hard in ((near, True), (n, False)):
        for _ in range(max_rounds):
            if len(chosen) >= target:
                break
            m = max(4 * (target - len(chosen)), 16)
            if hard:
                anchor = points[rng.integers(len(points), size=m)]
                ang = rng.uniform(0, 2 * np.pi, m)
                rad = rng.uniform(min_distance, min_distance + ring, m)
                cand = np.rint(anchor + np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1))
                cand = cand.astype(np.int64)
            else:
                cand = np.stack([rng.integers(lo_x, hi_x + 1, m), rng.integers(lo_y, hi_y + 1, m)], 1)
            if take(cand, target):
                break
    return np.asarray(chosen, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------- loader

class PatchLoader:
    """``loader(i)`` of the patch dataset: cuts patch ``i`` from its (cached) scene.

    Picklable (the scene cache is dropped), so process-based backends can ship it.
    """

    def __init__(self, scene_paths: Sequence[str], scene_index, xs, ys, size: int, border: str,
                 cache_images: int = 2):
        self.scene_paths = [str(p) for p in scene_paths]
        self.scene_index = np.asarray(scene_index, dtype=np.int64)
        self.xs = np.asarray(xs, dtype=np.int64)
        self.ys = np.asarray(ys, dtype=np.int64)
        self.size = int(size)
        self.border = border
        self.cache_images = max(1, int(cache_images))
        self._init_cache()

    def _init_cache(self):
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_cache", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    def scene(self, j: int) -> np.ndarray:
        with self._lock:
            img = self._cache.get(j)
            if img is not None:
                self._cache.move_to_end(j)
                return img
        img = read_scene(self.scene_paths[j])
        img.setflags(write=False)
        with self._lock:
            self._cache[j] = img
            self._cache.move_to_end(j)
            while len(self._cache) > self.cache_images:
                self._cache.popitem(last=False)
        return img

    def __call__(self, i: int) -> np.ndarray:
        scene = self.scene(int(self.scene_index[i]))
        return cut_patch(scene, int(self.xs[i]), int(self.ys[i]), self.size, self.border)


def _patch_key(scene_key: str, x: int, y: int, size: int, border: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"points:{scene_key}:{x}:{y}:{size}:{border}".encode())
    return h.hexdigest()


def _stable_seed(*parts) -> int:
    h = hashlib.blake2b("\0".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _check_params(patch_size, background_ratio, min_distance, border, max_per_class, classes):
    if not isinstance(patch_size, (int, np.integer)) or isinstance(patch_size, bool) or patch_size < 2:
        raise ConfigError(f"points: patch_size must be an integer >= 2, got {patch_size!r}",
                          "e.g. patch_size: 32")
    if background_ratio is None or float(background_ratio) < 0:
        raise ConfigError(f"points: background_ratio must be >= 0, got {background_ratio!r}",
                          "background patches per annotated patch, e.g. 1.0")
    if min_distance is not None and float(min_distance) < 0:
        raise ConfigError(f"points: min_distance must be >= 0, got {min_distance!r}",
                          "pixels between a background centre and every annotated point")
    if border == "pad":
        border = "reflect"
    if border not in BORDERS:
        raise ConfigError(f"points: unknown border {border!r}", f"one of {', '.join(BORDERS)}")
    if max_per_class is not None and (int(max_per_class) < 1):
        raise ConfigError(f"points: max_per_class must be >= 1, got {max_per_class!r}",
                          "leave it out to keep every patch")
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ConfigError(f"points: duplicate names in classes {classes}", "list each class once")
        if BACKGROUND in classes:
            raise ConfigError(f"points: '{BACKGROUND}' must not be listed in classes",
                              "it is appended as the last class automatically")
    return border, classes


def _class_list(df, classes, csv_path) -> list:
    """The annotated classes in label order: ``classes`` when given (each annotation's class
    must be one of them), else the sorted classes of the CSV."""
    found = sorted(df["class"].unique())
    if classes is None:
        return found
    unknown = df.index[~df["class"].isin(classes)]
    if len(unknown):
        i = unknown[0]
        raise DataError(f"{csv_path}, line {_line(i)}, column 'class': {df['class'].iloc[i]!r} "
                        f"is not in classes {classes}",
                        "add it to `classes:` or remove those rows")
    absent = [c for c in classes if c not in found]
    if absent:
        log.warning("points: classes %s have no annotation in %s", absent, csv_path)
    return list(classes)


def _patch_rows(df, scene_ids, label_of, bg_label, patch_size, border, background_ratio, hard_negatives,
                min_dist, seed):
    """Per scene: its record (size, file hash) and the patch rows ``(scene_j, x, y, label, kind)``
    of its annotated points and of the background sampled around them."""
    scenes = []
    rows = []  # (scene_j, x, y, label, kind)
    dropped = 0
    short = 0
    for j, sid in enumerate(scene_ids):
        sub = df[df["image"] == sid]
        spath = sub["path"].iloc[0]
        w, h = image_size(spath)
        scenes.append({"id": sid, "path": spath, "width": w, "height": h, "key": file_hash(spath)})
        pts = sub[["x", "y"]].to_numpy(dtype=np.int64)
        labs = sub["class"].map(label_of).to_numpy()
        keep = np.ones(len(pts), dtype=bool)
        if border == "drop":
            keep = np.array([patch_fits(x, y, patch_size, w, h) for x, y in pts], dtype=bool)
            dropped += int((~keep).sum())
        for (x, y), lab in zip(pts[keep], labs[keep]):
            rows.append((j, int(x), int(y), int(lab), "point"))
        n_bg = int(round(float(background_ratio) * int(keep.sum())))
        n_hard = int(round(float(hard_negatives) * n_bg))
        rng = np.random.default_rng(_stable_seed(seed, sid, "background"))
        bg = sample_background(pts, w, h, n_bg, min_dist, patch_size, border, rng, near=n_hard)
        short += n_bg - len(bg)
        for k, (x, y) in enumerate(bg):
            rows.append((j, int(x), int(y), bg_label, "near-background" if k < n_hard else "background"))
    if dropped:
        log.info("points: border='drop' dropped %d annotated points whose patch leaves the image",
                 dropped)
    if short:
        log.warning("points: %d background patches could not be placed %g px away from every "
                    "annotated point; lower min_distance or background_ratio", short, min_dist)
    return scenes, rows


def _cap_per_class(table, n_labels: int, max_per_class: int, seed: int):
    """At most ``max_per_class`` rows per label (a seeded random pick), in their order."""
    rng = np.random.default_rng(_stable_seed(seed, "max_per_class"))
    keep_idx = []
    for lab in range(n_labels):
        idx = np.flatnonzero(table["label"].to_numpy() == lab)
        if len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, max_per_class, replace=False))
        keep_idx.append(idx)
    return table.iloc[np.sort(np.concatenate(keep_idx))].reset_index(drop=True)


@DATASETS.register("points", "Patches around point annotations (image,x,y,class CSV) in large "
                             "images, plus background patches; grouped by source image")
def load_points(path, annotations=None, patch_size: int = 32, classes=None,
                background_ratio: float = 1.0, min_distance=None, hard_negatives: float = 0.0,
                border: str = "reflect", max_per_class=None, seed: int = 0, cache_images: int = 2,
                name: str = "points") -> Dataset:
    """Build the patch dataset from a folder of scenes and a points CSV (see module doc).

    Parameters: ``annotations`` defaults to ``<path>/annotations.csv``; ``classes``
    fixes the label order (default: sorted class names of the CSV) and
    ``background`` is appended last; ``min_distance`` defaults to ``patch_size``;
    ``hard_negatives`` is the share of the background patches drawn just outside
    ``min_distance`` of an animal (``min_distance .. min_distance + patch_size/2``):
    windows showing an animal off-centre, which a sliding-window counter must call
    background; ``border`` is ``reflect`` (alias ``pad``), ``zero`` or ``drop``;
    ``max_per_class`` caps patches per class (random, seeded) — counting still
    uses every annotated point.
    """
    border, classes = _check_params(patch_size, background_ratio, min_distance, border,
                                    max_per_class, classes)
    if hard_negatives is None or not 0.0 <= float(hard_negatives) <= 1.0:
        raise ConfigError(f"points: hard_negatives must be in [0, 1], got {hard_negatives!r}",
                          "the share of background patches drawn next to animals, e.g. 0.5")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"points: dataset folder {root} not found", "set `path:` to the scenes folder")
    csv_path = Path(annotations).expanduser() if annotations else root / "annotations.csv"
    if annotations and not csv_path.is_absolute() and not csv_path.exists():
        csv_path = root / annotations
    df = read_annotations(csv_path, root)

    classes = _class_list(df, classes, csv_path)
    class_names = list(classes) + [BACKGROUND]
    label_of = {c: i for i, c in enumerate(class_names)}
    bg_label = len(class_names) - 1
    min_dist = float(patch_size if min_distance is None else min_distance)

    scene_ids = list(dict.fromkeys(df["image"]))  # order of first appearance
    scenes, rows = _patch_rows(df, scene_ids, label_of, bg_label, patch_size, border, background_ratio,
                               hard_negatives, min_dist, seed)
    if not rows:
        raise DataError(f"points: no patch could be cut from {root}",
                        "check the annotations and the border setting")

    table = pd.DataFrame(rows, columns=["scene_index", "x", "y", "label", "kind"])
    if max_per_class is not None:
        table = _cap_per_class(table, len(class_names), int(max_per_class), seed)
    sj = table["scene_index"].to_numpy()
    table.insert(0, "scene", [scene_ids[j] for j in sj])
    table["class"] = [class_names[lab] for lab in table["label"]]
    keys = [_patch_key(scenes[j]["key"], x, y, patch_size, border)
            for j, x, y in zip(sj, table["x"], table["y"])]
    ids = [f"{scene_ids[j]}@{x},{y}" for j, x, y in zip(sj, table["x"], table["y"])]
    loader = PatchLoader([s["path"] for s in scenes], sj, table["x"], table["y"], patch_size,
                         border, cache_images)
    points_df = df[["image", "x", "y", "class"]].copy()
    meta = {"scenes": scenes, "points": points_df, "patches": table, "patch_size": int(patch_size),
            "classes": class_names, "background": BACKGROUND, "background_index": bg_label,
            "border": border, "min_distance": min_dist, "annotations": str(csv_path)}
    log.info("points: %d patches (%d background) from %d scenes, %d classes",
             len(table), int((table["label"] == bg_label).sum()), len(scenes), len(class_names))
    return Dataset(name=name, loader=loader, labels=table["label"].to_numpy(),
                   class_names=class_names, keys=keys, groups=np.asarray(table["scene"].tolist(), dtype=str),
                   ids=ids, modality="rgb", meta=meta)

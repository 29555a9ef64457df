"""Helpers that write small image trees for the dataset tests (no downloads)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rng_image(shape, dtype=np.uint8, seed=0):
    """A random image of ``shape`` and ``dtype`` (floats in [0, 1))."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.random(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype)


def write(path, arr, **save_kwargs) -> Path:
    """Write ``arr`` with Pillow (format from the extension); ``.npy`` with numpy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, arr)
    else:
        Image.fromarray(arr).save(path, **save_kwargs)
    return path


def write_cv2(path, arr_rgb_or_gray) -> Path:
    """Write with OpenCV (16-bit colour PNG/TIFF, float colour TIFF); input is RGB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = arr_rgb_or_gray[..., ::-1] if arr_rgb_or_gray.ndim == 3 else arr_rgb_or_gray
    assert cv2.imwrite(str(path), np.ascontiguousarray(arr))
    return path


def write_palette_gif(path, index_img, palette_rgb) -> Path:
    """A palette GIF: ``index_img`` (h, w) uint8 indices into ``palette_rgb`` (n, 3)."""
    im = Image.fromarray(index_img.astype(np.uint8), mode="P")
    im.putpalette(np.asarray(palette_rgb, dtype=np.uint8).ravel().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def make_tree(root, classes=("a", "b"), n=3, shape=(12, 10), ext=".png", seed=0, name="img{k}") -> dict:
    """``root/<class>/<name>.<ext>`` random uint8 images; returns {relpath: array}."""
    out = {}
    for ci, c in enumerate(classes):
        for k in range(n):
            arr = rng_image(shape, seed=seed * 1000 + ci * 100 + k)
            rel = f"{c}/{name.format(k=k, c=c)}{ext}"
            write(Path(root) / rel, arr)
            out[rel] = arr
    return out

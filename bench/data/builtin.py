"""Small datasets that ship inside the dependencies (nothing is downloaded).

* ``digits``: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``),
  1797 gray 8x8 images, 10 classes. The 0..16 counts are scaled to ``uint8``
  0..255 (``round(v * 255 / 16)``).
* ``faces``: scikit-image's LFW subset (``skimage.data.lfw_subset()``), 200 gray
  25x25 images: the first 100 are faces, the last 100 background patches
  (``non-face``). scikit-image ships it as ``float64`` in [0, 1] (the file is inside
  the wheel, ``skimage/data/lfw_subset.npy``; no ``pooch`` download); it is delivered
  as ``uint8`` (``round(x * 255)``, error <= 0.5/255) like every other gray dataset.

Both arrays are small and held in memory; ``loader(i)`` returns a copy of image ``i``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from .base import Dataset, array_key
from .folder import check_max_per_class, subsample_per_class


@dataclass(frozen=True, eq=False)
class ArrayLoader:
    """Picklable ``loader(i)`` over an in-memory ``(n, h, w[, c])`` array."""

    images: np.ndarray

    def __call__(self, i: int) -> np.ndarray:
        return self.images[i].copy()


def array_dataset(name: str, images: np.ndarray, labels, class_names, modality: str,
                  max_per_class=None, seed: int = 0, meta: dict | None = None) -> Dataset:
    """A :class:`Dataset` over an in-memory image array, optionally subsampled per class."""
    max_per_class = check_max_per_class(max_per_class)
    labels = np.asarray(labels, dtype=np.int64)
    keep = subsample_per_class(labels, max_per_class, seed)
    images = np.ascontiguousarray(images[keep])
    labels = labels[keep]
    keys = [array_key(im, salt=name) for im in images]
    return Dataset(name=name, loader=ArrayLoader(images), labels=labels,
                   class_names=list(class_names), keys=keys, groups=None,
                   ids=[f"{name}/{int(i)}" for i in keep], modality=modality,
                   meta={"kind": name, "max_per_class": max_per_class, "seed": seed,
                         "class_counts": np.bincount(labels, minlength=len(class_names)).tolist(),
                         **(meta or {})})


@DATASETS.register("digits", "scikit-learn handwritten digits: 1797 gray 8x8 images, 10 classes")
def digits(max_per_class: int | None = None, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits as ``uint8`` 0..255 (see the module docstring)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return array_dataset("digits", images, bunch.target, [str(d) for d in range(10)], "gray",
                         max_per_class, seed, {"source": "sklearn.datasets.load_digits"})


@DATASETS.register("faces", "scikit-image LFW subset: 100 faces vs 100 non-faces, gray 25x25")
def faces(max_per_class: int | None = None, seed: int = 0) -> Dataset:
    """scikit-image's bundled LFW subset as ``uint8`` (see the module docstring)."""
    try:
        from skimage.data import lfw_subset

        raw = np.asarray(lfw_subset())
    except Exception as exc:  # noqa: BLE001 - missing file, pooch absent, no network ...
        raise DataError(f"scikit-image's LFW subset (skimage.data.lfw_subset) cannot be loaded: {exc}",
                        "it ships inside scikit-image (skimage/data/lfw_subset.npy); reinstall "
                        "scikit-image, or use the 'digits' dataset") from exc
    if raw.shape != (200, 25, 25):
        raise DataError(f"skimage.data.lfw_subset() returned shape {raw.shape}, expected (200, 25, 25)",
                        "this scikit-image version changed the dataset; use the 'digits' dataset")
    if np.issubdtype(raw.dtype, np.floating):
        images = np.rint(np.clip(raw, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        images = raw.astype(np.uint8)
    labels = np.repeat([0, 1], 100)
    return array_dataset("faces", images, labels, ["face", "non-face"], "gray", max_per_class, seed,
                         {"source": "skimage.data.lfw_subset"})

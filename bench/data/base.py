"""The dataset protocol.

A dataset is a list of images loaded lazily, with integer labels, class names,
optional groups (e.g. the source photo a patch was cut from) and metadata.

* ``modality``: ``"gray"``, ``"rgb"`` or ``"depth"`` (float heights, 0 = missing).
* ``keys[i]``: a content hash of image ``i`` (file bytes, or generator seed and
  parameters) used by the feature cache: same key, same pixels.
* ``bad``: files skipped with ``on_bad_image: skip``, as ``(path, reason)``.
* ``split``: the dataset's own split of each image (``"train"``, ``"val"`` or
  ``"test"``; an npz's key prefixes, a manifest's ``split`` column), or None. Only
  ``protocol: {kind: predefined}`` uses it; k-fold and holdout pool every image.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class Dataset:
    name: str
    loader: Callable[[int], np.ndarray]
    labels: np.ndarray
    class_names: list
    keys: list
    groups: np.ndarray | None = None
    ids: list | None = None
    modality: str = "rgb"
    meta: dict = field(default_factory=dict)
    bad: list = field(default_factory=list)
    split: np.ndarray | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.groups is not None:
            self.groups = np.asarray(self.groups)
        if self.split is not None:
            self.split = np.asarray(self.split, dtype=object)
            if len(self.split) != len(self.labels):
                raise ValueError(f"dataset {self.name}: {len(self.split)} split names for "
                                 f"{len(self.labels)} images")
        if self.ids is None:
            self.ids = [str(k) for k in self.keys]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> np.ndarray:
        return self.loader(int(i))

    def images(self, indices: Sequence[int] | None = None) -> "LazyImages":
        return LazyImages(self, np.arange(len(self)) if indices is None else np.asarray(indices))

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for k in self.keys:
            h.update(str(k).encode())
            h.update(b"\0")
        return h.hexdigest()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


class LazyImages:
    """A sequence view that loads images on access (extractors iterate it)."""

    def __init__(self, dataset: Dataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyImages(self.dataset, self.indices[i])
        return self.dataset.load(self.indices[i])

    def __iter__(self):
        for i in self.indices:
            yield self.dataset.load(i)


def array_key(arr: np.ndarray, salt: str = "") -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(salt.encode())
    h.update(str(arr.shape).encode() + str(arr.dtype).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


SPLIT_NAMES = ("train", "val", "test")
SMALL_SIDE = 32  # below this, CNN rows upscale to the backbone's input (one warning per extractor)


def suggest_prepare(dataset: Dataset, sample: int = 64, budget_s: float = 2.0) -> dict:
    """A ``prepare.size`` suggestion from the data, recorded in ``dataset.json``.

    Looks at up to ``sample`` images spread over the dataset, for at most ``budget_s``
    seconds (patches cut from large scenes decode a scene each). Same size everywhere: hand-crafted
    features run at native size (``size: null``); images under 32 px are also noted,
    because the CNN rows upscale them to the backbone's input with one warning.
    Mixed sizes: the median size, so every extractor sees the same input. Nothing is
    applied automatically; the config decides.
    """
    n = len(dataset)
    if n == 0:
        return {"size": None, "reason": "no images"}
    idx = np.unique(np.linspace(0, n - 1, num=min(n, sample)).round().astype(np.int64))
    t0 = time.perf_counter()
    shapes = []
    for i in idx:
        shapes.append(np.shape(dataset.load(int(i)))[:2])
        if time.perf_counter() - t0 > budget_s:
            break
    shapes = np.array(shapes, dtype=np.int64)
    idx = idx[:len(shapes)]
    lo, hi = shapes.min(axis=0), shapes.max(axis=0)
    out: dict = {"sampled": int(len(idx)), "min_hw": lo.tolist(), "max_hw": hi.tolist()}
    if (lo == hi).all():
        h, w = (int(v) for v in lo)
        out.update(size=None, native=[h, w],
                   reason=f"every sampled image is {h}x{w}: hand-crafted features at native size "
                          "(prepare.size: null)")
        if min(h, w) < SMALL_SIDE:
            out["reason"] += ("; the CNN rows upscale these small images to their backbone's input "
                              "(one warning per extractor)")
    else:
        med = np.median(shapes, axis=0).round().astype(int)
        out.update(size=[int(med[0]), int(med[1])],
                   reason=f"sizes vary from {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}: prepare.size "
                          f"[{med[0]}, {med[1]}] (the median) gives every extractor the same input")
    return out

"""The dataset protocol.

A dataset is a list of images loaded lazily, with integer labels, class names,
optional groups (e.g. the source photo a patch was cut from) and metadata.

* ``modality``: ``"gray"``, ``"rgb"`` or ``"depth"`` (float heights, 0 = missing).
* ``keys[i]``: a content hash of image ``i`` (file bytes, or generator seed and
  parameters) used by the feature cache: same key, same pixels.
* ``bad``: files skipped with ``on_bad_image: skip``, as ``(path, reason)``.
"""
from __future__ import annotations

import hashlib
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

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.groups is not None:
            self.groups = np.asarray(self.groups)
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

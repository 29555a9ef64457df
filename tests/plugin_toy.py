"""A plugin as a student would write it: one dataset and one feature.

Used by tests/test_engine.py through `plugins: [tests/plugin_toy.py]`.
"""
import numpy as np

from bench.data.base import Dataset, array_key
from bench.features.base import Extractor
from bench.registry import DATASETS, FEATURES


@DATASETS.register("toy-blobs", "Tiny gray images: bright blob left, right or centre")
def toy_blobs(n_per_class: int = 10, size: int = 16, n_groups: int = 0, seed: int = 0,
              nan_every: int = 0):
    classes = ["left", "right", "centre"]
    labels = np.repeat(np.arange(3), n_per_class)

    def load(i):
        rng = np.random.default_rng([seed, i])
        img = rng.normal(0.3, 0.05, (size, size))
        c = {0: size // 4, 1: 3 * size // 4, 2: size // 2}[int(labels[i])]
        img[size // 3: 2 * size // 3, max(0, c - 2): c + 2] += 0.5
        img = np.clip(img, 0, 1).astype(np.float32)
        if nan_every and i % nan_every == 0:
            img[0, 0] = np.nan
        return img

    keys = [f"toy-{seed}-{size}-{nan_every}-{i}" for i in range(len(labels))]
    groups = (np.arange(len(labels)) % n_groups) if n_groups else None
    return Dataset("toy-blobs", load, labels, classes, keys, groups=groups, modality="gray")


@FEATURES.register("column_profile", "Mean of each image column (a plugin feature)")
class ColumnProfile(Extractor):
    def __init__(self, bins: int = 8):
        self.bins = bins

    def extract_one(self, image):
        prof = np.asarray(image, dtype=np.float64).mean(axis=0)
        return np.interp(np.linspace(0, len(prof) - 1, self.bins), np.arange(len(prof)), prof)


from bench.registry import CLASSIFIERS  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402


class _SleepyKNN(KNeighborsClassifier):
    def __init__(self, n_neighbors=3, sleep=0.2):
        super().__init__(n_neighbors=n_neighbors)
        self.sleep = sleep

    def fit(self, X, y):
        import time
        time.sleep(self.sleep)
        return super().fit(X, y)


@CLASSIFIERS.register("sleepy_knn", "kNN that sleeps in fit (for the kill/resume test)")
def sleepy_knn(n_neighbors: int = 3, sleep: float = 0.2):
    return _SleepyKNN(n_neighbors=n_neighbors, sleep=sleep)

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


# --------------------------------------------------------------------------- spies for the tests
# They hook only what a user can plug in (a dataset, a classifier): what they record is written
# by the process that ran the work, so a test can tell where and how often cells were computed
# (tests/run_helpers.py: read_spy_log). Do not import this module from a test: the engine loads
# it as a plugin, and a second import would register its components twice.
import json as _json  # noqa: E402
import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
import uuid as _uuid  # noqa: E402

from sklearn.linear_model import LogisticRegression  # noqa: E402


def _dask_worker_address():
    """Address of the Dask worker running this code, or None outside a Dask worker."""
    if "distributed" not in _sys.modules:
        return None
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return None


def spy_log(log_dir, event: str, **fields) -> None:
    """Append one JSON line to ``log_dir/spy-<pid>.jsonl`` (one file per process: no interleaving)."""
    if not log_dir:
        return
    _os.makedirs(log_dir, exist_ok=True)
    line = _json.dumps({"event": event, "pid": _os.getpid(), "worker": _dask_worker_address(),
                        "id": _uuid.uuid4().hex, **fields}) + "\n"
    with open(_os.path.join(log_dir, f"spy-{_os.getpid()}.jsonl"), "a") as fh:
        fh.write(line)


class _SpyLogReg(LogisticRegression):
    """Logistic regression that logs every fit (process id, Dask worker, training size)."""

    def __init__(self, C=1.0, max_iter=3000, log_dir=None):
        super().__init__(C=C, max_iter=max_iter)
        self.log_dir = log_dir

    def fit(self, X, y, sample_weight=None):
        spy_log(self.log_dir, "fit", n=int(len(X)), C=float(self.C))
        return super().fit(X, y, sample_weight=sample_weight)


@CLASSIFIERS.register("spy_logreg", "Logistic regression that logs each fit to log_dir (tests)")
def spy_logreg(C: float = 1.0, max_iter: int = 3000, log_dir: str | None = None):
    return _SpyLogReg(C=C, max_iter=max_iter, log_dir=log_dir)


@DATASETS.register("toy-points", "Two classes that only a weakly regularised linear model separates")
def toy_points(n_per_class: int = 20, n_groups: int = 0, seed: int = 0, gap: float = 0.12):
    """Images 4 x 2 px whose two columns are the point ``(x1, x2)``: class 0 lies on the
    diagonal ``x2 = x1``, class 1 on ``x2 = x1 - gap``, with ``x1`` spread over [0.2, 0.8].

    The class means differ by ``gap`` along x1 only, far less than the spread of x1, so a
    strongly regularised logistic regression (tiny C: the weights follow the class-mean
    difference) is near chance, while a weakly regularised one (large C) finds the
    direction ``x1 - x2`` and separates the classes. ``column_profile`` with ``bins: 2``
    returns the point exactly.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(2), n_per_class)
    x1 = rng.uniform(0.2, 0.8, len(labels))
    x2 = x1 - gap * labels + rng.normal(0, gap / 20, len(labels))
    points = np.stack([x1, x2], 1).astype(np.float32)

    def load(i):
        return np.repeat(points[i][None, :], 4, axis=0)

    keys = [f"points-{seed}-{gap}-{i}" for i in range(len(labels))]
    groups = (np.arange(len(labels)) % n_groups) if n_groups else None
    return Dataset("toy-points", load, labels, ["diagonal", "below"], keys, groups=groups,
                   modality="gray")


@FEATURES.register("spy_pid", "Mean intensity and the id of the process that computed it (tests)")
class _SpyPid(Extractor):
    """Column 0: the process id of whoever extracted the image (tests/test_parallel_extraction.py)."""

    def extract_one(self, image):
        return np.array([_os.getpid(), float(np.asarray(image, dtype=np.float64).mean())])


@FEATURES.register("fails_on_bright", "Mean intensity; raises on a bright image (tests)")
class _FailsOnBright(Extractor):
    def extract_one(self, image):
        m = float(np.asarray(image, dtype=np.float64).mean())
        if m > 150:
            raise RuntimeError(f"bright image (mean {m:.0f})")
        return np.array([m])

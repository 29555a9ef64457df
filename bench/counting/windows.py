"""Per-image counts from a patch classifier: sliding windows, then NMS or aggregation.

The Sea Lion task is not patch accuracy but *how many animals of each class are
in each photo*, scored by the root-mean-square error of the per-image counts
(the Kaggle NOAA metric is the mean over classes of the per-class RMSE). A patch
classifier trained on patches centred on annotated points (plus background) is
turned into a counter by sliding a ``patch_size`` window over the whole scene with
a ``stride`` and classifying every window:

``method="nms"`` (detection)
    Windows whose probability of *some* animal, ``1 - p(background)``, is at least
    ``threshold`` are candidate detections, scored by that probability and
    labelled with their most probable animal class (deciding "animal or not" and
    "which animal" separately is more robust than requiring one of five animal
    classes to beat 0.5 on its own, which a random forest rarely does). Greedy
    non-maximum suppression keeps the best candidate and drops every other
    candidate (of any class) within ``min_distance`` pixels of it (a number, or a
    per-class mapping where a pair uses the mean of its two radii; default
    ``patch_size / 2``): one animal lights up several neighbouring windows, and
    the classes of those windows may disagree. The count of a class is its number
    of kept detections. Two animals closer than the radius are counted once (pups
    lying against their mother are the usual victims), so the radius trades
    double counts against merges; per-class radii of about half the body length
    of each class are the natural choice.

``method="aggregate"`` (density)
    The expected number of windows that "see" one animal of class ``c`` is
    ``windows_per_animal[c]``; the count is ``sum_w p(c | w) / windows_per_animal[c]``.
    No threshold, no suppression, fractional counts. The divisor depends on the
    classifier and the stride, so it is calibrated on scenes with known counts
    (:func:`calibrate_windows_per_animal`: total probability mass per true
    animal). :func:`run_counting` calibrates on the training scenes; the classifier
    has seen their patches, so it is more confident there and the divisor tends to
    be too large (counts on new scenes too low). Without calibration the
    geometric guess ``pi * (patch_size / 4 / stride) ** 2`` is used.

Training patches hold one background patch per animal while a scene has
thousands of windows, so :func:`run_counting` can add the false detections of the
training scenes as background and refit (``mine_negatives``,
:func:`mine_hard_negatives`) and pick the NMS threshold on the training scenes
(``threshold: auto``, :func:`calibrate_threshold`). Held-out scenes are never used
for either.

Windows are cut with the same border rule as the training patches
(:func:`bench.data.points.cut_patch`), so the window centred on an annotated
point equals that point's training patch.
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError

log = logging.getLogger(__name__)

WINDOW_METHODS = ("nms", "aggregate")


@dataclass(frozen=True)
class Detection:
    x: int
    y: int
    label: int
    cls: str
    score: float


@dataclass
class SceneCount:
    """Result of :func:`count_scene`: ``counts`` maps every non-background class to a
    count (int for NMS, float for aggregation); ``detections`` is empty for
    aggregation; ``centres``/``proba`` are the per-window inputs."""

    counts: dict
    detections: list = field(default_factory=list)
    centres: np.ndarray | None = None
    proba: np.ndarray | None = None


# --------------------------------------------------------------------------- windows

def window_centres(height: int, width: int, stride: int, offset: int | None = None) -> np.ndarray:
    """Grid of window centres ``(x, y)`` covering the image, ``stride`` apart.

    By default the grid is centred (``ceil(size / stride)`` centres per axis), so
    every pixel is within ``stride / 2`` of a centre along each axis (within
    ``stride / sqrt(2)`` in distance); ``offset`` fixes the first centre instead.
    """
    if stride < 1:
        raise ConfigError(f"counting: stride must be >= 1, got {stride}", "e.g. patch_size // 4")

    def axis(n):
        if offset is not None:
            return np.arange(min(int(offset), n - 1), n, stride)
        k = -(-n // stride)
        return (n - 1 - (k - 1) * stride) // 2 + stride * np.arange(k)

    gx, gy = np.meshgrid(axis(width), axis(height))
    return np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64)


def sliding_windows(image: np.ndarray, patch_size: int, stride: int, border: str = "reflect",
                    centres: np.ndarray | None = None):
    """``(centres, patches)``: views of ``patch_size`` squares centred on a grid.

    The image is padded once (``reflect`` = ``cv2.BORDER_REFLECT_101``, ``zero``);
    ``drop`` is treated as ``reflect`` here, since a counter must look at every
    part of the scene. Patches are read-only views into the padded copy.
    """
    import cv2

    img = np.asarray(image)
    h, w = img.shape[:2]
    half = patch_size // 2
    mode = cv2.BORDER_CONSTANT if border == "zero" else cv2.BORDER_REFLECT_101
    # cv2 reflects at most the image size; large windows on tiny images fall back to numpy
    if h > patch_size and w > patch_size:
        padded = cv2.copyMakeBorder(np.ascontiguousarray(img), half, patch_size - half, half,
                                    patch_size - half, mode, value=0)
    else:
        pad = [(half, patch_size - half), (half, patch_size - half)] + [(0, 0)] * (img.ndim - 2)
        padded = np.pad(img, pad, mode="constant" if border == "zero" else "reflect")
    padded.setflags(write=False)
    if centres is None:
        centres = window_centres(h, w, stride)
    patches = [padded[y:y + patch_size, x:x + patch_size] for x, y in centres]
    return centres, patches


def _wants_centres(fn) -> bool:
    try:
        return "centres" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def window_proba(image: np.ndarray, classify_fn: Callable, patch_size: int, stride: int,
                 border: str = "reflect", batch_size: int = 512, n_classes: int | None = None,
                 progress: Callable | None = None):
    """Class probabilities of every window: ``(centres (n, 2), proba (n, n_classes))``.

    ``classify_fn(patches) -> (len(patches), n_classes)`` is called on batches; a
    function with a ``centres`` keyword (e.g. :class:`Oracle`) also gets the
    window centres of the batch.
    """
    centres, patches = sliding_windows(image, patch_size, stride, border)
    pass_centres = _wants_centres(classify_fn)
    out = []
    for start in range(0, len(patches), batch_size):
        batch = patches[start:start + batch_size]
        if pass_centres:
            p = classify_fn(batch, centres=centres[start:start + batch_size])
        else:
            p = classify_fn(batch)
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != len(batch) or (n_classes and p.shape[1] != n_classes):
            raise ValueError(f"classify_fn returned shape {p.shape} for {len(batch)} windows"
                             + (f" and {n_classes} classes" if n_classes else ""))
        out.append(p)
        if progress is not None:
            progress(min(start + batch_size, len(patches)), len(patches))
    proba = np.concatenate(out) if out else np.zeros((0, n_classes or 0))
    return centres, proba


# --------------------------------------------------------------------------- counting

def _radius_per_label(min_distance, classes: Sequence[str], default: float) -> np.ndarray:
    if min_distance is None:
        return np.full(len(classes), float(default))
    if isinstance(min_distance, Mapping):
        unknown = set(min_distance) - set(classes)
        if unknown:
            raise ConfigError(f"counting: min_distance names unknown classes {sorted(unknown)}",
                              f"classes: {', '.join(classes)}")
        return np.array([float(min_distance.get(c, default)) for c in classes])
    return np.full(len(classes), float(min_distance))


def nms_detections(centres: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                   background_index: int, threshold: float = 0.5, min_distance=None,
                   patch_size: int | None = None) -> list[Detection]:
    """Greedy non-maximum suppression across classes (see module doc).

    ``min_distance`` is a radius in pixels, or a mapping class -> radius (classes
    left out get ``patch_size / 2``). A kept detection of class ``a`` suppresses
    every weaker candidate of class ``b`` within ``(r[a] + r[b]) / 2`` pixels: with
    one radius that is the radius; with per-class radii (e.g. about half the body
    length) a pup next to its mother survives a female detection while duplicate
    windows on one animal are merged. Ties are broken by window order.
    """
    from scipy.spatial import cKDTree

    proba = np.asarray(proba)
    if len(proba) == 0:
        return []
    default = (patch_size or 32) / 2
    radius = _radius_per_label(min_distance, classes, default)
    animal = np.delete(np.arange(proba.shape[1]), background_index)
    label = animal[proba[:, animal].argmax(1)]
    score = 1.0 - proba[:, background_index]
    cand = np.flatnonzero(score >= threshold)
    if cand.size == 0:
        return []
    order = cand[np.argsort(-score[cand], kind="stable")]
    pts = np.asarray(centres, dtype=np.float64)[order]
    cand_r = radius[label[order]]
    r_max = float(cand_r.max())
    tree = cKDTree(pts)
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for k, idx in enumerate(order):
        if suppressed[k]:
            continue
        lab = int(label[idx])
        kept.append(Detection(int(centres[idx][0]), int(centres[idx][1]), lab, classes[lab],
                              float(score[idx])))
        near = np.asarray(tree.query_ball_point(pts[k], (radius[lab] + r_max) / 2), dtype=np.int64)
        if near.size:
            d = np.hypot(*(pts[near] - pts[k]).T)
            suppressed[near[d <= (radius[lab] + cand_r[near]) / 2]] = True
    return kept


def default_windows_per_animal(patch_size: int, stride: int) -> float:
    """Geometric guess: windows whose centre is within ``patch_size / 4`` of the animal."""
    return max(1.0, math.pi * (patch_size / 4.0 / stride) ** 2)


def aggregate_counts(proba: np.ndarray, background_index: int, windows_per_animal) -> np.ndarray:
    """``sum_w p(c | w) / windows_per_animal[c]`` per class (background entry is 0)."""
    proba = np.asarray(proba, dtype=np.float64)
    wpa = np.broadcast_to(np.asarray(windows_per_animal, dtype=np.float64), (proba.shape[1],))
    counts = proba.sum(0) / np.where(wpa > 0, wpa, np.inf)
    counts[background_index] = 0.0
    return counts


def calibrate_windows_per_animal(probas: Sequence[np.ndarray], true_counts: np.ndarray,
                                 background_index: int, fallback: float = 1.0) -> np.ndarray:
    """Windows per animal per class from scenes with known counts (ratio of sums).

    ``probas[i]`` are the window probabilities of scene ``i``, ``true_counts[i, c]``
    its animals of class ``c``. Classes absent from every scene get ``fallback``.
    """
    mass = np.sum([np.asarray(p).sum(0) for p in probas], axis=0)
    truth = np.asarray(true_counts, dtype=np.float64).sum(0)
    out = np.where(truth > 0, mass / np.where(truth > 0, truth, 1), fallback)
    out = np.where(out > 0, out, fallback)
    out[background_index] = 1.0
    return out


THRESHOLD_GRID = tuple(np.round(np.arange(0.30, 0.96, 0.05), 2))


def calibrate_threshold(windows: Sequence[tuple], true_counts: np.ndarray, classes: Sequence[str],
                        background_index: int, patch_size: int, min_distance=None,
                        grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The NMS threshold with the lowest mean column-wise RMSE on scenes with known counts.

    ``windows[i] = (centres, proba)`` of scene ``i``; ``true_counts[i, c]`` its
    animals of class ``c``. The first (lowest) threshold wins ties. On training
    scenes the bias is small: the classifier saw only the few windows centred on
    annotated points and the sampled background, not the thousands of others.
    """
    truth = np.asarray(true_counts, dtype=np.float64)
    animal = [i for i in range(len(classes)) if i != background_index]
    best, best_err = float(grid[0]), np.inf
    for t in grid:
        pred = np.zeros_like(truth)
        for i, (centres, proba) in enumerate(windows):
            for d in nms_detections(centres, proba, classes, background_index, float(t),
                                    min_distance, patch_size):
                pred[i, d.label] += 1
        err = float(np.mean(np.sqrt(np.mean((pred - truth)[:, animal] ** 2, axis=0))))
        if err < best_err - 1e-12:
            best, best_err = float(t), err
    return best


def count_scene(image: np.ndarray, classify_fn: Callable, patch_size: int, stride: int | None = None,
                classes: Sequence[str] = (), background_index: int | None = None,
                method: str = "nms", min_distance=None, threshold: float = 0.5,
                windows_per_animal=None, border: str = "reflect", batch_size: int = 512,
                progress: Callable | None = None) -> SceneCount:
    """Count the animals of every class in one scene (see module doc for the methods).

    ``classify_fn(list_of_patches) -> proba (n, len(classes))`` (a function with a
    ``centres`` keyword also receives the window centres, see :class:`Oracle`);
    ``stride`` defaults to ``patch_size // 4``; ``background_index`` defaults to the
    class named ``background`` (else the last class).
    """
    classes = list(classes)
    if not classes:
        raise ConfigError("counting: classes are required", "pass the dataset's class_names")
    if background_index is None:
        background_index = classes.index("background") if "background" in classes else len(classes) - 1
    stride = int(stride or max(1, patch_size // 4))
    centres, proba = window_proba(image, classify_fn, patch_size, stride, border, batch_size,
                                  len(classes), progress)
    return counts_from_proba(centres, proba, classes, background_index, method, patch_size, stride,
                             min_distance, threshold, windows_per_animal)


def counts_from_proba(centres, proba, classes, background_index, method="nms", patch_size=32,
                      stride=8, min_distance=None, threshold=0.5, windows_per_animal=None) -> SceneCount:
    """The counting step of :func:`count_scene` on precomputed window probabilities."""
    animal = [c for i, c in enumerate(classes) if i != background_index]
    if method == "nms":
        dets = nms_detections(centres, proba, classes, background_index, threshold, min_distance,
                              patch_size)
        counts = {c: 0 for c in animal}
        for d in dets:
            counts[d.cls] += 1
        return SceneCount(counts, dets, centres, proba)
    if method == "aggregate":
        wpa = windows_per_animal if windows_per_animal is not None else \
            default_windows_per_animal(patch_size, stride)
        vec = aggregate_counts(proba, background_index, wpa)
        return SceneCount({c: float(vec[i]) for i, c in enumerate(classes) if i != background_index},
                          [], centres, proba)
    raise ConfigError(f"counting: unknown method {method!r}", f"one of {', '.join(WINDOW_METHODS)}")


# --------------------------------------------------------------------------- oracle

class Oracle:
    """A classify_fn that knows where the animals are (tests the counting logic alone).

    A window gets the class of the nearest annotated point whose distance to the
    window centre is at most ``radius`` (probability ``1 - d / (2 radius)``, the rest
    on background, so the best-centred window wins NMS), else background.
    """

    def __init__(self, points, classes: Sequence[str], radius: float,
                 background: str = "background"):
        self.classes = list(classes)
        self.radius = float(radius)
        self.background_index = self.classes.index(background)
        pts = pd.DataFrame(points, columns=None if isinstance(points, pd.DataFrame) else
                           ["x", "y", "class"])
        self.xy = pts[["x", "y"]].to_numpy(dtype=np.float64).reshape(-1, 2)
        self.labels = np.array([self.classes.index(c) for c in pts["class"]], dtype=np.int64)

    def __call__(self, patches, centres=None):
        if centres is None:
            raise ValueError("Oracle needs the window centres")
        from scipy.spatial import cKDTree

        centres = np.asarray(centres, dtype=np.float64)
        out = np.zeros((len(centres), len(self.classes)))
        out[:, self.background_index] = 1.0
        if len(self.xy) == 0:
            return out
        d, j = cKDTree(self.xy).query(centres, k=1)
        hit = d <= self.radius
        p = 1.0 - d[hit] / (2 * self.radius)
        rows = np.flatnonzero(hit)
        out[rows, self.background_index] = 1.0 - p
        out[rows, self.labels[j[hit]]] = p
        return out


def class_scores(fitted, X) -> np.ndarray:
    """``predict_proba`` where the model has it, else the softmax of its decision values
    (SVMs without probability calibration: uncalibrated, so ``threshold`` means less)."""
    from ..protocol import class_scores as _scores
    return _scores(fitted, X)


def _full_proba(pipe, proba: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all dataset classes (a fold may lack some in training)."""
    cls = np.asarray(getattr(pipe, "classes_", np.arange(proba.shape[1])), dtype=np.int64)
    if proba.shape[1] == n_classes and np.array_equal(cls, np.arange(n_classes)):
        return proba
    out = np.zeros((proba.shape[0], n_classes))
    out[:, cls] = proba
    return out


def mine_hard_negatives(image: np.ndarray, points_xy: np.ndarray, extract: Callable,
                        animal_score: Callable, patch_size: int, stride: int, border: str,
                        min_distance: float, threshold: float = 0.5, max_windows: int = 100,
                        batch_size: int = 512):
    """False detections of one annotated scene, as new background examples.

    Slides over the scene, keeps windows whose ``animal_score(extract(patches))``
    (``1 - p(background)``) is at least ``threshold`` although their centre is at
    least ``min_distance`` from every annotated point, and returns the
    ``max_windows`` highest-scoring ones as ``(centres, representation)``
    (bootstrapping, or hard-negative mining, as in Dalal & Triggs 2005). Call it
    on *training* scenes only.
    """
    from scipy.spatial import cKDTree

    centres, patches = sliding_windows(image, patch_size, stride, border)
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if len(pts):
        far = cKDTree(pts).query(centres, k=1)[0] >= min_distance
    else:
        far = np.ones(len(centres), dtype=bool)
    kept_idx, kept_score, kept_rep = [], [], []
    for start in range(0, len(patches), batch_size):
        idx = np.arange(start, min(start + batch_size, len(patches)))
        idx = idx[far[idx]]
        if idx.size == 0:
            continue
        Z = extract([patches[i] for i in idx])
        score = np.asarray(animal_score(Z), dtype=np.float64)
        hit = np.flatnonzero(score >= threshold)
        if hit.size:
            kept_idx.append(idx[hit])
            kept_score.append(score[hit])
            kept_rep.append(_take(Z, hit))
    if not kept_idx:
        return centres[:0], None
    order = np.argsort(-np.concatenate(kept_score), kind="stable")[:max_windows]
    return centres[np.concatenate(kept_idx)[order]], _take(_concat(kept_rep), order)



def count_windows_cell(ctx, ds, feature, clf_label, split_id, train_idx, train_scenes, test_scenes,
                       truth, classes, bg, o, run) -> list[dict]:
    """One (feature, classifier) cell of the sliding-window counters on one split: fit on the
    training patches (+ mined windows), calibrate on the training scenes, count the test scenes
    with every window method of ``o["window_methods"]``. ``run.image(sid)`` reads a scene."""
    from .evaluate import truth_matrix
    n_classes = len(classes)
    ps, stride, border = o["patch_size"], o["stride"], o["border"]
    X = _take(ctx.per_image(feature), train_idx)
    y = np.asarray(ds.labels)[train_idx]
    pipe = ctx.make_pipeline(feature, clf_label)
    pipe.fit(X, y)

    def extract(patches):
        return ctx.extract(feature, patches)

    def proba_of(Z, model):
        return _full_proba(model, class_scores(model, Z), n_classes)

    pts = pd.DataFrame(ds.meta["points"])
    for rnd in range(o["mine_negatives"]):
        mined = []
        for sid in train_scenes:
            xy = pts.loc[pts["image"] == sid, ["x", "y"]].to_numpy()
            _, rep = mine_hard_negatives(run.image(sid), xy, extract,
                                         lambda Z: 1.0 - proba_of(Z, pipe)[:, bg], ps, stride, border,
                                         o["bg_distance"], 0.5, o["mine_per_scene"], o["batch_size"])
            if rep is not None:
                mined.append(rep)
        n_mined = sum(len(m) for m in mined)
        log.info("counting: %s x %s split %s: mining round %d added %d background windows",
                 feature, clf_label, split_id, rnd + 1, n_mined)
        if not n_mined:
            break
        X = _concat([X] + mined)
        y = np.concatenate([y, np.full(n_mined, bg, dtype=y.dtype)])
        pipe = ctx.make_pipeline(feature, clf_label)
        pipe.fit(X, y)

    def classify(patches):
        return proba_of(extract(patches), pipe)

    wpa, thr = None, o["threshold"]
    if o["calibrate"]:
        # calibration on the training scenes (see the module doc for the bias)
        windows = [window_proba(run.image(s), classify, ps, stride, border, o["batch_size"], n_classes)
                   for s in train_scenes]
        tm = truth_matrix(truth, train_scenes, classes, bg)
        if "aggregate" in o["window_methods"]:
            wpa = calibrate_windows_per_animal([p for _, p in windows], tm, bg,
                                               default_windows_per_animal(ps, stride))
        if thr == "auto":
            thr = calibrate_threshold(windows, tm, classes, bg, ps, o["min_distance"])
            log.info("counting: %s x %s split %s: NMS threshold %.2f (training scenes)",
                     feature, clf_label, split_id, thr)
        del windows
    rows = []
    for sid in test_scenes:
        centres, proba = window_proba(run.image(sid), classify, ps, stride, border, o["batch_size"],
                                      n_classes)
        for m in o["window_methods"]:
            res = counts_from_proba(centres, proba, classes, bg, m, ps, stride, o["min_distance"],
                                    thr, wpa)
            for c in truth.columns:
                rows.append(dict(image=sid, **{"class": c}, true=int(truth.at[sid, c]),
                                 predicted=float(res.counts[c]), feature=feature,
                                 classifier=clf_label, split=split_id, method=m,
                                 threshold=thr if m == "nms" else None))
    return rows



def _concat(parts):
    """Stack representations: 2-D arrays, object arrays of per-image arrays, or lists."""
    if all(isinstance(p, (list, tuple)) for p in parts):
        return [x for p in parts for x in p]
    arrs = [p if isinstance(p, np.ndarray) else np.asarray(p) for p in parts]
    if any(a.dtype == object for a in arrs):
        out = np.empty(sum(len(a) for a in arrs), dtype=object)
        for k, x in enumerate(x for a in arrs for x in a):
            out[k] = x
        return out
    return np.concatenate(arrs, axis=0)


def _take(X, idx):
    """Rows ``idx`` of a matrix, an object array or a list of per-image arrays."""
    if isinstance(X, (list, tuple)):
        return [X[i] for i in idx]
    return X[idx]



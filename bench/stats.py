"""Confidence intervals and paired tests for cross-validated scores.

Everything here works on plain arrays so it can be checked against hand
computations and published tables:

* :func:`mean_ci` - mean, sample std and Student-t 95% interval over folds.
* :func:`corrected_ttest` - Nadeau & Bengio (2003) corrected resampled t-test for
  two rows scored on the same splits; for r-times repeated k-fold it is the
  "corrected repeated k-fold cv test" of Bouckaert & Frank (2004) with
  J = k * r and variance factor (1/J + n_test/n_train).
* :func:`mcnemar` - McNemar's test on paired per-image correctness (exact binomial
  when the discordant count is small, chi-square with continuity correction otherwise).
* :func:`friedman_nemenyi` - average ranks, Friedman test and the Nemenyi critical
  difference over several datasets (Demšar 2006).
* :func:`bootstrap_ci` - percentile bootstrap interval of any statistic.
* :func:`paired_bootstrap_diff` - percentile bootstrap interval of the difference of
  two rows' macro-F1 (or accuracy) on the same test images, resampling images (the
  paired test of the ``predefined`` protocol, next to McNemar).

Why the correction: the training sets of different folds overlap, so per-fold
scores are correlated and the plain paired t-test is far too liberal (it
underestimates the variance of the mean difference).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as st


# -- intervals ---------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """Mean with sample std (ddof=1) and a two-sided t-interval over ``n`` values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean, std and Student-t interval of finite ``values`` (NaNs are dropped).

    With one value the std and interval are NaN (no spread can be estimated);
    with identical values the interval collapses to the mean.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan, confidence)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan, confidence)
    std = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, confidence)


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.mean, confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (scipy.stats.bootstrap).

    Percentile (not BCa) because it stays defined for the degenerate samples
    (all folds equal) that small benchmarks produce.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    if np.all(x == x[0]):
        v = float(statistic(x))
        return (v, v)
    res = st.bootstrap((x,), lambda s, axis=-1: statistic(s, axis=axis), vectorized=True,
                       confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                       random_state=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def macro_f1_along(y, p, axis: int = -1, n_classes: int | None = None) -> np.ndarray:
    """Macro-F1 of integer labels ``y`` vs predictions ``p`` along ``axis`` (vectorised).

    Equals ``sklearn.metrics.f1_score(y, p, average="macro", zero_division=0)`` per
    slice: the mean over the classes present in ``y`` or ``p`` of that slice.
    """
    y = np.moveaxis(np.asarray(y), axis, -1)
    p = np.moveaxis(np.asarray(p), axis, -1)
    k = int(max(y.max(initial=0), p.max(initial=0))) + 1 if n_classes is None else n_classes
    f1 = np.zeros(y.shape[:-1] + (k,))
    seen = np.zeros(y.shape[:-1] + (k,), dtype=bool)
    for c in range(k):
        yt, pt = y == c, p == c
        tp = np.sum(yt & pt, axis=-1)
        denom = yt.sum(axis=-1) + pt.sum(axis=-1)  # 2tp + fp + fn
        seen[..., c] = denom > 0
        f1[..., c] = np.divide(2.0 * tp, denom, out=np.zeros(denom.shape), where=denom > 0)
    return f1.sum(axis=-1) / np.maximum(seen.sum(axis=-1), 1)


def _accuracy_along(y, p, axis: int = -1) -> np.ndarray:
    return np.mean(np.asarray(y) == np.asarray(p), axis=axis)


@dataclass(frozen=True)
class BootstrapDiff:
    """Observed ``metric(a) - metric(b)`` on the test set and its percentile interval."""

    diff: float
    ci_low: float
    ci_high: float
    n: int
    n_resamples: int
    metric: str

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap_diff(y_true, pred_a, pred_b, metric: str = "macro_f1", confidence: float = 0.95,
                          n_resamples: int = 2000, seed: int = 0) -> BootstrapDiff:
    """Percentile bootstrap interval of ``metric(a) - metric(b)``, resampling test images.

    The two rows are scored on the same resampled images each time
    (:func:`scipy.stats.bootstrap` with ``paired=True``), so the interval is that of
    the *difference* on this test set: it excludes 0 when one row is better on
    images like these, whatever their shared difficulty. ``metric``: ``macro_f1`` or
    ``accuracy``.
    """
    y = np.asarray(y_true).astype(np.int64).ravel()
    a = np.asarray(pred_a).astype(np.int64).ravel()
    b = np.asarray(pred_b).astype(np.int64).ravel()
    if not (y.shape == a.shape == b.shape):
        raise ValueError(f"paired predictions differ in length: {y.size}, {a.size}, {b.size}")
    if metric == "macro_f1":
        k = int(max(y.max(initial=0), a.max(initial=0), b.max(initial=0))) + 1

        def fn(yy, pp, axis=-1):
            return macro_f1_along(yy, pp, axis, k)
    elif metric == "accuracy":
        fn = _accuracy_along
    else:
        raise ValueError(f"metric must be macro_f1 or accuracy, got {metric!r}")
    if y.size < 2:
        return BootstrapDiff(math.nan, math.nan, math.nan, int(y.size), 0, metric)
    observed = float(fn(y, a) - fn(y, b))
    if np.array_equal(a, b):
        return BootstrapDiff(0.0, 0.0, 0.0, int(y.size), 0, metric)
    res = st.bootstrap((y, a, b), lambda yy, aa, bb, axis=-1: fn(yy, aa, axis) - fn(yy, bb, axis),
                       paired=True, vectorized=True, confidence_level=confidence, n_resamples=n_resamples,
                       method="percentile", random_state=np.random.default_rng(seed), batch=200)
    return BootstrapDiff(observed, float(res.confidence_interval.low), float(res.confidence_interval.high),
                         int(y.size), n_resamples, metric)


# -- corrected resampled t-test ------------------------------------------------

@dataclass(frozen=True)
class TTestResult:
    """Corrected resampled t-test of ``a - b`` (positive ``mean_diff``: a is better)."""

    mean_diff: float
    t: float
    p: float
    df: int
    n_splits: int
    test_train_ratio: float

    def as_dict(self) -> dict:
        return asdict(self)


def corrected_ttest(a: Sequence[float], b: Sequence[float], n_train, n_test) -> TTestResult:
    """Nadeau-Bengio corrected resampled t-test on paired per-split scores.

    ``a[j]`` and ``b[j]`` are the scores of two rows on split ``j`` (same train/test
    indices). ``n_train``/``n_test`` are the training and test set sizes, scalars or
    per-split sequences (their means are used). With J = len(a) splits (k * r for
    r-times repeated k-fold)::

        t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)),   df = J - 1

    Two-sided p-value. J < 2 gives NaN. If every difference is identical the
    variance is zero: p = 1 when the difference is zero, else t = +-inf and p = 0.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.size} vs {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = (a - b)[ok]
    j = int(d.size)
    ratio = float(np.mean(np.asarray(n_test, dtype=np.float64))) / \
        float(np.mean(np.asarray(n_train, dtype=np.float64)))
    if j < 2:
        return TTestResult(float(d.mean()) if j else math.nan, math.nan, math.nan, max(j - 1, 0), j, ratio)
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    df = j - 1
    if var <= 0.0:
        if mean == 0.0:
            return TTestResult(0.0, 0.0, 1.0, df, j, ratio)
        return TTestResult(mean, math.copysign(math.inf, mean), 0.0, df, j, ratio)
    t = mean / math.sqrt((1.0 / j + ratio) * var)
    p = float(2.0 * st.t.sf(abs(t), df))
    return TTestResult(mean, float(t), p, df, j, ratio)


# -- McNemar -------------------------------------------------------------------

@dataclass(frozen=True)
class McNemarResult:
    """``b``: a right and b wrong; ``c``: a wrong and b right; ``n``: paired items."""

    b: int
    c: int
    n: int
    statistic: float
    p: float
    method: str  # "exact" | "chi2-cc" | "none"

    def as_dict(self) -> dict:
        return asdict(self)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], exact: bool | None = None,
            exact_below: int = 25) -> McNemarResult:
    """McNemar's test on paired correctness of two classifiers on the same items.

    ``exact=None`` picks the exact binomial test when ``b + c < exact_below`` (25, the
    usual rule) and the chi-square test with Edwards' continuity correction,
    ``(|b - c| - 1)^2 / (b + c)``, otherwise. No discordant pair gives p = 1.
    """
    ca = np.asarray(correct_a, dtype=bool).ravel()
    cb = np.asarray(correct_b, dtype=bool).ravel()
    if ca.shape != cb.shape:
        raise ValueError(f"paired predictions differ in length: {ca.size} vs {cb.size}")
    b = int(np.sum(ca & ~cb))
    c = int(np.sum(~ca & cb))
    n = b + c
    if n == 0:
        return McNemarResult(b, c, int(ca.size), 0.0, 1.0, "none")
    if exact is None:
        exact = n < exact_below
    if exact:
        p = float(st.binomtest(min(b, c), n, 0.5).pvalue)
        return McNemarResult(b, c, int(ca.size), float(min(b, c)), min(p, 1.0), "exact")
    stat = (abs(b - c) - 1.0) ** 2 / n
    return McNemarResult(b, c, int(ca.size), float(stat), float(st.chi2.sf(stat, 1)), "chi2-cc")


def match_predictions(a: Mapping[int, dict],
                      b: Mapping[int, dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align two rows' out-of-fold predictions on (split, test index).

    ``a`` and ``b`` map split -> ``{"test_index", "y_true", "y_pred"}`` (the arrays of a
    predictions file). Returns ``(y_true, pred_a, pred_b)`` over the items both rows
    predicted, in (split, index) order.
    """
    ys, pa, pb = [], [], []
    for split in sorted(set(a) & set(b)):
        ia = np.asarray(a[split]["test_index"])
        ib = np.asarray(b[split]["test_index"])
        common, xa, xb = np.intersect1d(ia, ib, return_indices=True)
        if common.size == 0:
            continue
        ys.append(np.asarray(a[split]["y_true"])[xa])
        pa.append(np.asarray(a[split]["y_pred"])[xa])
        pb.append(np.asarray(b[split]["y_pred"])[xb])
    if not ys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(ys), np.concatenate(pa), np.concatenate(pb)


# -- Friedman + Nemenyi ----------------------------------------------------------

def average_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Average rank (1 = best, ties share the mean rank) of each column over rows.

    ``scores`` is (n_datasets, k_methods).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError("scores must be (n_datasets, k_methods)")
    ranks = st.rankdata(-s if higher_is_better else s, axis=1)
    return ranks.mean(axis=0)


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks: q_alpha * sqrt(k(k+1) / (6N)).

    q_alpha is the studentized range quantile (infinite df) divided by sqrt(2), as
    tabulated by Demšar (2006): k=4 gives q_0.05 = 2.569.
    """
    if k < 2 or n < 1:
        return math.nan
    q = float(st.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


@dataclass(frozen=True)
class FriedmanResult:
    methods: list
    avg_ranks: list
    statistic: float
    p: float
    cd: float
    alpha: float
    n_datasets: int

    def as_dict(self) -> dict:
        return asdict(self)


def friedman_nemenyi(scores, methods: Sequence[str] | None = None, alpha: float = 0.05,
                     higher_is_better: bool = True) -> FriedmanResult:
    """Friedman test over datasets (rows) and methods (columns) plus the Nemenyi CD.

    ``scores`` is a (n_datasets, k) array or a DataFrame (columns = methods). The
    Friedman statistic comes from :func:`scipy.stats.friedmanchisquare` (k >= 3 and
    N >= 2 required; NaN otherwise).
    """
    if hasattr(scores, "columns"):
        methods = [str(c) for c in scores.columns] if methods is None else list(methods)
        scores = scores.to_numpy(dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n, k = s.shape
    methods = list(methods) if methods is not None else [str(i) for i in range(k)]
    ranks = average_ranks(s, higher_is_better)
    stat = p = math.nan
    if k >= 3 and n >= 2:
        res = st.friedmanchisquare(*[s[:, i] for i in range(k)])
        stat, p = float(res.statistic), float(res.pvalue)
    return FriedmanResult(methods, [float(r) for r in ranks], stat, p, nemenyi_cd(k, n, alpha), alpha, n)


def cd_cliques(avg_ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs of methods (indices into rank-sorted order) whose ranks differ by < CD.

    Returns ``(first, last)`` positions in ascending-rank order; the bars drawn under a
    critical-difference diagram. Runs of a single method are omitted.
    """
    r = np.sort(np.asarray(avg_ranks, dtype=np.float64))
    out: list[tuple[int, int]] = []
    if not np.isfinite(cd):
        return out
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return out

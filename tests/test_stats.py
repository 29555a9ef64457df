"""bench.stats against hand computations, published tables and simulation."""
import math

import numpy as np
import pytest
from scipy import stats as st

from bench import stats


def test_mean_ci_hand_computed():
    x = [0.80, 0.82, 0.78, 0.85, 0.75]
    r = stats.mean_ci(x)
    mean = sum(x) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
    assert r.n == 5
    assert r.mean == pytest.approx(mean)
    assert r.std == pytest.approx(sd)
    assert (r.ci_low, r.ci_high) == pytest.approx((mean - half, mean + half))


def test_mean_ci_degenerate():
    one = stats.mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.std) and math.isnan(one.ci_low)
    none = stats.mean_ci([float("nan")])
    assert none.n == 0 and math.isnan(none.mean)
    same = stats.mean_ci([0.5, 0.5, 0.5])
    assert same.ci_low == same.ci_high == 0.5


def test_t_interval_coverage_on_normal_data():
    rng = np.random.default_rng(0)
    n_sim, hits = 4000, 0
    for _ in range(n_sim):
        r = stats.mean_ci(rng.normal(3.0, 2.0, size=5))
        hits += r.ci_low <= 3.0 <= r.ci_high
    cover = hits / n_sim
    # binomial sd at 95% over 4000 runs is ~0.0034: +-0.015 is > 4 sd
    assert abs(cover - 0.95) < 0.015, cover


def test_corrected_ttest_hand_computation():
    a = np.array([0.81, 0.79, 0.84, 0.80, 0.83])
    b = np.array([0.78, 0.77, 0.80, 0.79, 0.79])
    d = a - b  # 0.03 0.02 0.04 0.01 0.04
    mean = d.mean()
    var = sum((v - mean) ** 2 for v in d) / 4
    n_train, n_test = 240, 60
    t = mean / math.sqrt((1 / 5 + n_test / n_train) * var)
    r = stats.corrected_ttest(a, b, n_train, n_test)
    assert r.t == pytest.approx(t)
    assert r.df == 4 and r.n_splits == 5
    assert r.p == pytest.approx(2 * st.t.sf(abs(t), 4))
    # the correction makes it more conservative than the plain paired t-test
    assert r.p > st.ttest_rel(a, b).pvalue
    # symmetric
    r2 = stats.corrected_ttest(b, a, n_train, n_test)
    assert r2.t == pytest.approx(-t) and r2.p == pytest.approx(r.p)


def test_corrected_ttest_repeated_kfold_uses_J_k_times_r():
    rng = np.random.default_rng(1)
    a = rng.normal(0.8, 0.02, 10)  # 5 folds x 2 repeats
    b = a - rng.normal(0.01, 0.01, 10)
    r = stats.corrected_ttest(a, b, n_train=[80] * 10, n_test=[20] * 10)
    d = a - b
    t = d.mean() / math.sqrt((1 / 10 + 20 / 80) * d.var(ddof=1))
    assert r.n_splits == 10 and r.df == 9
    assert r.t == pytest.approx(t)


def test_corrected_ttest_edge_cases():
    assert stats.corrected_ttest([0.5, 0.6], [0.5, 0.6], 8, 2).p == 1.0
    r = stats.corrected_ttest([0.6, 0.7], [0.5, 0.6], 8, 2)
    assert r.p == 0.0 and math.isinf(r.t)
    assert math.isnan(stats.corrected_ttest([0.6], [0.5], 8, 2).p)
    with pytest.raises(ValueError):
        stats.corrected_ttest([1, 2], [1], 8, 2)


def _pairs(b, c, both_right=50, both_wrong=5):
    ca = [True] * both_right + [True] * b + [False] * c + [False] * both_wrong
    cb = [True] * both_right + [False] * b + [True] * c + [False] * both_wrong
    return ca, cb


def test_mcnemar_chi2_continuity_textbook():
    # b=10, c=25: chi2 = (|10-25| - 1)^2 / 35 = 5.6; p = erfc(sqrt(5.6/2)) for 1 df
    r = stats.mcnemar(*_pairs(10, 25))
    assert r.method == "chi2-cc" and (r.b, r.c) == (10, 25)
    assert r.statistic == pytest.approx(5.6)
    assert r.p == pytest.approx(math.erfc(math.sqrt(5.6 / 2)))
    assert r.p == pytest.approx(0.01796, abs=5e-5)


def test_mcnemar_exact_small_counts():
    # b=2, c=8: two-sided exact binomial p = 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10 = 112/1024
    r = stats.mcnemar(*_pairs(2, 8))
    assert r.method == "exact"
    assert r.p == pytest.approx(112 / 1024)
    # no discordant pairs: no evidence either way
    assert stats.mcnemar([True, False], [True, False]).p == 1.0


def test_match_predictions_aligns_on_test_index():
    a = {0: {"test_index": np.array([3, 1, 2]), "y_true": np.array([1, 0, 1]), "y_pred": np.array([1, 0, 0])},
         1: {"test_index": np.array([0]), "y_true": np.array([0]), "y_pred": np.array([0])}}
    b = {0: {"test_index": np.array([1, 2, 3]), "y_true": np.array([0, 1, 1]), "y_pred": np.array([1, 1, 1])},
         2: {"test_index": np.array([5]), "y_true": np.array([0]), "y_pred": np.array([0])}}
    y, pa, pb = stats.match_predictions(a, b)
    # order of intersect1d: indices 1, 2, 3 of split 0
    np.testing.assert_array_equal(y, [0, 1, 1])
    np.testing.assert_array_equal(pa, [0, 0, 1])
    np.testing.assert_array_equal(pb, [1, 1, 1])


def test_nemenyi_cd_matches_demsar_table():
    # Demšar (2006), Table 5(a): q_0.05 for k = 2..6
    table = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850}
    for k, q in table.items():
        n = 10
        assert stats.nemenyi_cd(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)
    # k = 4, N = 14 (the paper's worked example): CD = 2.569 * sqrt(20/84) = 1.25
    assert stats.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.01)


def test_friedman_ranks_and_scipy_agree():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.6, 0.9, size=(8, 4))
    scores[:, 0] += 0.4  # method 0 always best
    scores[0, 2] = scores[0, 3]  # a tie
    r = stats.friedman_nemenyi(scores, methods=["a", "b", "c", "d"])
    assert r.avg_ranks[0] == 1.0
    ref = st.friedmanchisquare(*scores.T)
    assert r.statistic == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue)
    assert r.cd == pytest.approx(stats.nemenyi_cd(4, 8))
    assert sum(r.avg_ranks) == pytest.approx(4 * 5 / 2)  # ranks 1..k average to (k+1)/2 each
    # ties share the mean rank
    np.testing.assert_allclose(stats.average_ranks([[0.9, 0.5, 0.5]]), [1.0, 2.5, 2.5])


def test_cd_cliques():
    # sorted ranks 1.0 1.2 2.5 2.6 with CD 0.5: {0,1} and {2,3}
    assert stats.cd_cliques([2.6, 1.0, 2.5, 1.2], 0.5) == [(0, 1), (2, 3)]
    assert stats.cd_cliques([1, 2, 3], 5.0) == [(0, 2)]


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(0).normal(0.8, 0.05, 30)
    lo, hi = stats.bootstrap_ci(x, seed=1)
    assert lo < x.mean() < hi
    assert (lo, hi) == stats.bootstrap_ci(x, seed=1)
    assert stats.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)

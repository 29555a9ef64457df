"""bench.retrieval.nearest_neighbours against a brute-force scipy reference."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from bench.retrieval import nearest_neighbours


def _reference(train, query, k, metric):
    d = cdist(query, train, metric=metric)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_bruteforce(metric):
    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(40, 7)), rng.normal(size=(9, 7))
    idx, dist = nearest_neighbours(train, query, k=5, metric=metric)
    ref_idx, ref_dist = _reference(train, query, 5, metric)
    assert idx.shape == (9, 5) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_cosine_ignores_scale_euclidean_does_not():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(30, 5))
    query = train[[3]] * 10.0  # same direction as row 3, far away
    assert nearest_neighbours(train, query, k=1, metric="cosine")[0][0, 0] == 3
    d = nearest_neighbours(train, query, k=1, metric="cosine")[1][0, 0]
    assert d == pytest.approx(0.0, abs=1e-12)
    assert nearest_neighbours(train, query, k=1, metric="euclidean")[1][0, 0] > 1.0


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(50, 4)) * np.array([1.0, 100.0, 0.01, 5.0]) + 3.0
    query = rng.normal(size=(6, 4)) * np.array([1.0, 100.0, 0.01, 5.0]) + 3.0
    mu, sd = train.mean(0), train.std(0)
    ref_idx, ref_dist = _reference((train - mu) / sd, (query - mu) / sd, 4, "euclidean")
    idx, dist = nearest_neighbours(train, query, k=4, metric="euclidean", standardize=True)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-9)
    # without standardising, the large-scale column dominates and the answer differs
    assert not np.array_equal(nearest_neighbours(train, query, k=4, metric="euclidean")[0], idx)


def test_self_query_leaves_each_row_out():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(20, 3))
    idx, dist = nearest_neighbours(train, k=3, metric="euclidean")
    assert idx.shape == (20, 3)
    assert not np.any(idx == np.arange(20)[:, None])
    d = cdist(train, train)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :3])


def test_self_query_with_duplicate_rows():
    train = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    idx, dist = nearest_neighbours(train, k=1, metric="euclidean")
    np.testing.assert_array_equal(idx[:2, 0], [1, 0])  # each duplicate finds the other
    assert dist[0, 0] == 0.0 and dist[1, 0] == 0.0


def test_k_is_capped_and_bad_input_rejected():
    train = np.eye(3)
    idx, _ = nearest_neighbours(train, np.ones((2, 3)), k=10)
    assert idx.shape == (2, 3)
    assert nearest_neighbours(train, k=10)[0].shape == (3, 2)
    with pytest.raises(ValueError, match="metric"):
        nearest_neighbours(train, train, metric="manhattan")
    with pytest.raises(ValueError, match="shape"):
        nearest_neighbours(train, np.ones((2, 4)))
    with pytest.raises(ValueError, match="k="):
        nearest_neighbours(train, train, k=0)

"""Nearest neighbours in a feature space (the report's retrieval gallery).

A thin, checked wrapper of :class:`sklearn.neighbors.NearestNeighbors` (brute force,
which is exact and fast for the few thousand images a gallery shows).
"""
from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

METRICS = ("cosine", "euclidean")


def nearest_neighbours(train_features, query_features=None, k: int = 5, metric: str = "cosine",
                       standardize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` training rows closest to each query row.

    Parameters
    ----------
    train_features : ``(n_train, d)`` array searched in.
    query_features : ``(n_query, d)`` array, or ``None`` to query the training rows
        themselves with each row's own match left out (leave-one-out gallery).
    k : neighbours per query; capped at the number of candidates.
    metric : ``"cosine"`` (1 - cosine similarity) or ``"euclidean"``.
    standardize : z-score every dimension with the training rows' mean and std first
        (a scaler fitted on ``train_features`` only).

    Returns
    -------
    indices : ``(n_query, k)`` int64 indices into ``train_features``, nearest first.
    distances : ``(n_query, k)`` float64 distances, non-decreasing along each row.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {METRICS}")
    train = np.asarray(train_features, dtype=np.float64)
    if train.ndim != 2 or len(train) == 0:
        raise ValueError(f"train_features must be a non-empty 2-D array, got shape {train.shape}")
    self_query = query_features is None
    query = train if self_query else np.asarray(query_features, dtype=np.float64)
    if query.ndim != 2 or query.shape[1] != train.shape[1]:
        raise ValueError(f"query_features shape {query.shape} does not match train {train.shape}")
    if int(k) < 1:
        raise ValueError(f"k={k!r} must be >= 1")
    if standardize:
        scaler = StandardScaler().fit(train)
        train = scaler.transform(train)
        query = train if self_query else scaler.transform(query)
    n_candidates = len(train) - (1 if self_query else 0)
    if n_candidates < 1:
        return (np.zeros((len(query), 0), dtype=np.int64), np.zeros((len(query), 0)))
    k = min(int(k), n_candidates)
    nn = NearestNeighbors(n_neighbors=k + (1 if self_query else 0), metric=metric,
                          algorithm="brute").fit(train)
    dist, idx = nn.kneighbors(query)
    if self_query:
        # drop each row's own match (ties at distance 0 may put it second, so remove by index)
        rows = np.arange(len(query))[:, None]
        keep = idx != rows
        # rows whose own index was not returned (duplicates at distance 0): drop the last column
        no_self = keep.all(axis=1)
        keep[no_self, -1] = False
        idx = idx[keep].reshape(len(query), k)
        dist = dist[keep].reshape(len(query), k)
    return idx.astype(np.int64), dist.astype(np.float64)

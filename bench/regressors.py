"""Count regressor registry (the counters of :mod:`bench.counting.regression`).

Each entry builds an unfitted multi-output scikit-learn regressor (one output per
animal class); single-output models are wrapped in
:class:`sklearn.multioutput.MultiOutputRegressor`. The counter puts it in a Pipeline
``[fold stage] -> StandardScaler -> regressor`` fitted on the tiles of the training
scenes. ``grid`` (registry metadata) is the default hyperparameter grid, searched
with an inner cross-validation grouped by scene inside the training scenes; a
config replaces it with ``search: {alpha: [...]}`` or disables it with
``search: {}``. ``python -m bench list regressors`` shows them.
"""
from __future__ import annotations

from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import PoissonRegressor, Ridge
from sklearn.multioutput import MultiOutputRegressor

from .registry import REGRESSORS


@REGRESSORS.register("ridge", "Ridge regression (L2) of the per-class tile counts",
                     grid={"alpha": [0.1, 1.0, 10.0, 100.0]})
def ridge(alpha: float = 1.0):
    return Ridge(alpha=alpha)


@REGRESSORS.register("poisson", "Poisson GLM (log link, L2) per class: counts are non-negative",
                     grid={"alpha": [1e-3, 1e-2, 1e-1, 1.0]})
def poisson(alpha: float = 1e-2, max_iter: int = 1000):
    return MultiOutputRegressor(PoissonRegressor(alpha=alpha, max_iter=max_iter))


@REGRESSORS.register("random_forest", "Random forest regressor (200 trees, multi-output)",
                     grid={"min_samples_leaf": [1, 5]})
def random_forest(n_estimators: int = 200, min_samples_leaf: int = 1, max_features=0.33,
                  random_state: int = 0, n_jobs: int = 1):
    return RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                                 max_features=max_features, random_state=random_state,
                                 n_jobs=n_jobs)


@REGRESSORS.register("gradient_boosting",
                     "Histogram gradient boosting per class (Poisson loss by default)",
                     grid={"learning_rate": [0.05, 0.1]})
def gradient_boosting(loss: str = "poisson", learning_rate: float = 0.1, max_iter: int = 200,
                      max_leaf_nodes: int = 15, l2_regularization: float = 1.0,
                      random_state: int = 0):
    return MultiOutputRegressor(HistGradientBoostingRegressor(
        loss=loss, learning_rate=learning_rate, max_iter=max_iter, max_leaf_nodes=max_leaf_nodes,
        l2_regularization=l2_regularization, random_state=random_state))

"""Classifier registry. Each entry builds an unfitted estimator; the engine puts it
in a Pipeline ``[fold stage] -> StandardScaler -> classifier`` fitted per fold.

Optional hyperparameter search (``search: {C: [1, 10]}``) is nested inside the
training fold: GridSearchCV over the whole Pipeline with an inner stratified
(grouped when the data has groups) 3-fold split of the training images only.
"""
from __future__ import annotations

from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC, LinearSVC

from .registry import CLASSIFIERS


@CLASSIFIERS.register("svm", "RBF-kernel SVM (C=10, gamma='scale')")
def svm(C: float = 10.0, gamma="scale", class_weight=None, random_state: int = 0):
    """Predictions are the SVM's own. Its confidences in reports are the softmax of the
    one-vs-rest decision values (uncalibrated); use ``svm_calibrated`` for probabilities."""
    return SVC(C=C, gamma=gamma, kernel="rbf", class_weight=class_weight,
               random_state=random_state)


@CLASSIFIERS.register("svm_calibrated", "RBF-kernel SVM with sigmoid-calibrated probabilities (3-fold)")
def svm_calibrated(C: float = 10.0, gamma="scale", class_weight=None, random_state: int = 0):
    from sklearn.calibration import CalibratedClassifierCV
    return CalibratedClassifierCV(SVC(C=C, gamma=gamma, kernel="rbf", class_weight=class_weight,
                                      random_state=random_state),
                                  method="sigmoid", cv=3, ensemble=False)


@CLASSIFIERS.register("linear_svm", "Linear SVM (liblinear, squared hinge)")
def linear_svm(C: float = 1.0, class_weight=None, max_iter: int = 5000, random_state: int = 0):
    return LinearSVC(C=C, class_weight=class_weight, max_iter=max_iter, random_state=random_state)


@CLASSIFIERS.register("random_forest", "Random forest (300 trees)")
def random_forest(n_estimators: int = 300, max_features="sqrt", class_weight=None,
                  min_samples_leaf: int = 1, random_state: int = 0, n_jobs: int = 1):
    return RandomForestClassifier(n_estimators=n_estimators, max_features=max_features,
                                  class_weight=class_weight, min_samples_leaf=min_samples_leaf,
                                  random_state=random_state, n_jobs=n_jobs)


@CLASSIFIERS.register("balanced_random_forest",
                      "Random forest with per-tree balanced class weights, for imbalanced data")
def balanced_random_forest(n_estimators: int = 300, max_features="sqrt", random_state: int = 0,
                           n_jobs: int = 1):
    return RandomForestClassifier(n_estimators=n_estimators, max_features=max_features,
                                  class_weight="balanced_subsample", random_state=random_state,
                                  n_jobs=n_jobs)


@CLASSIFIERS.register("mlp", "Multi-layer perceptron (256 ReLU units, Adam, L2 1e-3)")
def mlp(hidden_layer_sizes=(256,), alpha: float = 1e-3, max_iter: int = 1000,
        early_stopping: bool = False, random_state: int = 0):
    """Early stopping is off by default: on the few hundred images of a typical run its
    10% validation split is too small and stopped training at chance on some folds."""
    return MLPClassifier(hidden_layer_sizes=tuple(hidden_layer_sizes), alpha=alpha,
                         max_iter=max_iter, early_stopping=early_stopping,
                         random_state=random_state)


@CLASSIFIERS.register("knn", "k-nearest neighbours (k=5, Euclidean on standardised features)")
def knn(n_neighbors: int = 5, weights: str = "uniform"):
    return KNeighborsClassifier(n_neighbors=n_neighbors, weights=weights)


@CLASSIFIERS.register("logreg", "Multinomial logistic regression (L2)")
def logreg(C: float = 1.0, class_weight=None, max_iter: int = 3000, random_state: int = 0):
    return LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter,
                              random_state=random_state)

"""Evaluation protocol: splits made once from the seed, metrics.

* ``kfold`` (default): repeated stratified k-fold; when the dataset has groups
  (e.g. patches cut from the same photo) and ``protocol.group`` is ``auto`` or
  ``true``, stratified *group* k-fold, so no group is on both sides of a split.
* ``holdout``: repeated stratified (group) shuffle split with ``test_size``.

Splits are saved to ``splits.json`` and shared by every row of the run, which
makes paired statistics between rows valid.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import (GroupShuffleSplit, StratifiedGroupKFold, StratifiedKFold,
                                     StratifiedShuffleSplit)

from .errors import ConfigError, DataError


@dataclass
class Split:
    index: int
    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray

    def to_json(self) -> dict:
        return {"split": self.index, "repeat": self.repeat, "fold": self.fold,
                "train": self.train.tolist(), "test": self.test.tolist()}


@dataclass
class SplitPlan:
    splitter: str
    grouped: bool
    n_splits: int
    n_repeats: int
    splits: list

    def save(self, path: Path) -> None:
        data = {"splitter": self.splitter, "grouped": self.grouped, "n_splits": self.n_splits,
                "n_repeats": self.n_repeats, "folds": [s.to_json() for s in self.splits]}
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "SplitPlan":
        data = json.loads(Path(path).read_text())
        splits = [Split(f["split"], f["repeat"], f["fold"], np.asarray(f["train"], dtype=np.int64),
                        np.asarray(f["test"], dtype=np.int64)) for f in data["folds"]]
        return cls(data["splitter"], data["grouped"], data["n_splits"], data["n_repeats"], splits)


def use_groups(protocol: dict, groups) -> bool:
    g = protocol.get("group", "auto")
    if g is True and groups is None:
        raise ConfigError("protocol.group: true, but the dataset has no groups",
                          "set dataset.group_pattern (folder datasets) or protocol.group: auto")
    return groups is not None and g in ("auto", True)


def check_dataset_for_protocol(labels: np.ndarray, class_names, protocol: dict, groups=None) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    present = counts > 0
    if present.sum() < 2:
        raise DataError(f"the dataset has only {int(present.sum())} class with images "
                        f"({', '.join(str(class_names[i]) for i in np.flatnonzero(present))})",
                        "a classifier needs at least 2 classes: add a folder per class")
    if protocol["kind"] == "kfold":
        k = protocol["n_splits"]
        small = [(str(class_names[i]), int(c)) for i, c in enumerate(counts) if 0 < c < k]
        if small:
            names = ", ".join(f"{n} ({c})" for n, c in small[:5])
            raise DataError(f"protocol.n_splits={k} but some classes have fewer images: {names}",
                            f"lower protocol.n_splits to {max(2, min(c for _, c in small))} "
                            "or add images to those classes")
        if groups is not None and use_groups(protocol, groups):
            n_groups = len(np.unique(groups))
            if n_groups < k:
                raise DataError(f"grouped splits need at least n_splits={k} groups, "
                                f"the dataset has {n_groups}",
                                f"lower protocol.n_splits to {n_groups} or set protocol.group: false")


def make_splits(labels: np.ndarray, protocol: dict, seed: int, groups=None,
                force_ungrouped: bool = False) -> SplitPlan:
    labels = np.asarray(labels)
    grouped = (not force_ungrouped) and use_groups(protocol, groups)
    n_rep = protocol["n_repeats"]
    splits = []
    idx = np.arange(len(labels))
    if protocol["kind"] == "kfold":
        k = protocol["n_splits"]
        for r in range(n_rep):
            if grouped:
                sp = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + r)
                it = sp.split(idx, labels, groups)
                name = f"StratifiedGroupKFold(n_splits={k})"
            else:
                sp = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + r)
                it = sp.split(idx, labels)
                name = f"StratifiedKFold(n_splits={k})"
            for f, (tr, te) in enumerate(it):
                splits.append(Split(len(splits), r, f, np.sort(tr), np.sort(te)))
        n_splits = k
    else:
        ts = protocol["test_size"]
        if grouped:
            sp = GroupShuffleSplit(n_splits=n_rep, test_size=ts, random_state=seed)
            it = sp.split(idx, labels, groups)
            name = f"GroupShuffleSplit(test_size={ts})"
        else:
            sp = StratifiedShuffleSplit(n_splits=n_rep, test_size=ts, random_state=seed)
            it = sp.split(idx, labels)
            name = f"StratifiedShuffleSplit(test_size={ts})"
        for r, (tr, te) in enumerate(it):
            splits.append(Split(len(splits), r, 0, np.sort(tr), np.sort(te)))
        n_splits = 1
    if n_rep > 1:
        name += f" x {n_rep} repeats"
    return SplitPlan(name, grouped, n_splits, n_rep, splits)


def score(y_true, y_pred) -> dict:
    """Accuracy, balanced accuracy and macro-F1 of one test fold.

    A grouped fold may lack a class in its test images (a rare class seen in few
    photos); balanced accuracy then averages the recall of the classes present, which
    is what scikit-learn computes -- its warning about it is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return {"accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}

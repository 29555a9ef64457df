"""Evaluation protocol: splits made once from the seed, metrics.

* ``kfold`` (default): repeated stratified k-fold; when the dataset has groups
  (e.g. patches cut from the same photo) and ``protocol.group`` is ``auto`` or
  ``true``, stratified *group* k-fold, so no group is on both sides of a split.
* ``holdout``: repeated stratified (group) shuffle split with ``test_size``.
* ``predefined``: the dataset's own split (``dataset.split``: an npz's key prefixes, a
  manifest's ``split`` column). Every row is fitted on ``train`` and scored on
  ``test``; ``val`` (if any) is handed to the end-to-end CNN rows for early stopping
  and to nested search (candidates fitted on train, chosen on val, then the best one
  refitted on train), and never scored. ``n_repeats`` > 1 repeats the *same* split
  with the classifier seed ``seed + repeat``, so the spread is over seeds, not over
  test sets; the report says so.

Splits are saved to ``splits.json`` and shared by every row of the run, which
makes paired statistics between rows valid.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import (GroupShuffleSplit, StratifiedGroupKFold, StratifiedKFold,
                                     StratifiedShuffleSplit)

from .errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One train/test split; ``val`` and ``seed`` are set by the ``predefined`` protocol only."""

    index: int
    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None
    seed: int | None = None

    def to_json(self) -> dict:
        out = {"split": self.index, "repeat": self.repeat, "fold": self.fold,
               "train": self.train.tolist(), "test": self.test.tolist()}
        if self.val is not None:
            out["val"] = self.val.tolist()
        if self.seed is not None:
            out["seed"] = int(self.seed)
        return out

    def seed_or(self, default: int) -> int:
        """The classifier / CNN seed of this split: its own (predefined repeats) or ``default``."""
        return int(self.seed) if self.seed is not None else int(default)


@dataclass
class SplitPlan:
    splitter: str
    grouped: bool
    n_splits: int
    n_repeats: int
    splits: list
    kind: str = ""

    def save(self, path: Path) -> None:
        data = {"splitter": self.splitter, "kind": self.kind, "grouped": self.grouped,
                "n_splits": self.n_splits, "n_repeats": self.n_repeats,
                "folds": [s.to_json() for s in self.splits]}
        if self.kind == "predefined" and self.splits:
            s = self.splits[0]
            data.update(n_train=len(s.train), n_val=0 if s.val is None else len(s.val), n_test=len(s.test),
                        seeds=[int(x.seed) for x in self.splits])
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "SplitPlan":
        data = json.loads(Path(path).read_text())
        splits = [Split(f["split"], f["repeat"], f["fold"], np.asarray(f["train"], dtype=np.int64),
                        np.asarray(f["test"], dtype=np.int64),
                        np.asarray(f["val"], dtype=np.int64) if f.get("val") is not None else None,
                        f.get("seed")) for f in data["folds"]]
        return cls(data["splitter"], data["grouped"], data["n_splits"], data["n_repeats"], splits,
                   data.get("kind", ""))


def use_groups(protocol: dict, groups) -> bool:
    g = protocol.get("group", "auto")
    if g is True and groups is None:
        raise ConfigError("protocol.group: true, but the dataset has no groups",
                          "set dataset.group_pattern (folder datasets) or protocol.group: auto")
    return groups is not None and g in ("auto", True)


def check_dataset_for_protocol(labels: np.ndarray, class_names, protocol: dict, groups=None,
                               split=None) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    present = counts > 0
    if present.sum() < 2:
        raise DataError(f"the dataset has only {int(present.sum())} class with images "
                        f"({', '.join(str(class_names[i]) for i in np.flatnonzero(present))})",
                        "a classifier needs at least 2 classes: add a folder per class")
    if protocol["kind"] == "predefined":
        _check_predefined(labels, class_names, split, groups)
    if protocol["kind"] == "kfold":
        k = protocol["n_splits"]
        small = [(str(class_names[i]), int(c)) for i, c in enumerate(counts) if 0 < c < k]
        if small:
            names = ", ".join(f"{n} ({c})" for n, c in small[:5])
            fewest = min(c for _, c in small)
            raise DataError(f"protocol.n_splits={k} but some classes have fewer images: {names}",
                            f"lower protocol.n_splits to {fewest} or add images to those classes"
                            if fewest >= 2 else  # n_splits is at least 2 already
                            "a class needs at least 2 images (one to train, one to test): add images "
                            "to those classes or remove them from the dataset")
        if groups is not None and use_groups(protocol, groups):
            n_groups = len(np.unique(groups))
            if n_groups < k:
                raise DataError(f"grouped splits need at least n_splits={k} groups, "
                                f"the dataset has {n_groups}",
                                f"lower protocol.n_splits to {n_groups} or set protocol.group: false"
                                if n_groups >= 2 else "set protocol.group: false (one group cannot be split)")


def _check_predefined(labels, class_names, split, groups) -> None:
    if split is None:
        raise ConfigError("protocol.kind: predefined, but the dataset has no split of its own",
                          "use an npz with train_/test_ arrays or a manifest with a 'split' column "
                          "(train / val / test), or set protocol.kind: kfold")
    split = np.asarray(split, dtype=object)
    names = set(split.tolist())
    unknown = sorted(str(n) for n in names - {"train", "val", "test"})
    if unknown:
        raise ConfigError(f"protocol.kind: predefined needs split names train, val, test; the dataset "
                          f"also has {', '.join(unknown)}",
                          "rename those splits (an npz's dataset.splits, a manifest's split column)")
    for need in ("train", "test"):
        if need not in names:
            raise DataError(f"protocol.kind: predefined, but the dataset has no {need!r} images "
                            f"(its splits: {', '.join(sorted(map(str, names)))})",
                            "the official split needs train and test images; or set protocol.kind: kfold")
    train = split == "train"
    n_tr = np.bincount(labels[train], minlength=len(class_names))
    if (n_tr > 0).sum() < 2:
        raise DataError("the official training split has fewer than 2 classes",
                        "a classifier needs at least 2 classes in train")
    unseen = [str(class_names[c]) for c in np.unique(labels[split == "test"]) if n_tr[c] == 0]
    if unseen:
        log.warning("classes %s have test images but no training images: every such image is an error",
                    ", ".join(unseen[:10]))
    if groups is not None:
        g = np.asarray(groups)
        both = set(g[train].tolist()) & set(g[split == "test"].tolist())
        if both:
            log.warning("the official split puts %d group(s) on both sides (e.g. %s); scores may be "
                        "optimistic", len(both), ", ".join(map(str, sorted(both)[:5])))


def predefined_plan(split, n_repeats: int, seed: int) -> SplitPlan:
    """The dataset's own split, ``n_repeats`` times with seeds ``seed .. seed + n_repeats - 1``."""
    split = np.asarray(split, dtype=object)
    train = np.flatnonzero(split == "train")
    test = np.flatnonzero(split == "test")
    val = np.flatnonzero(split == "val")
    splits = [Split(r, r, 0, train, test, val if val.size else None, seed + r) for r in range(n_repeats)]
    name = "predefined (official train/val/test split)"
    if n_repeats > 1:
        name += f" x {n_repeats} seeds"
    return SplitPlan(name, False, 1, n_repeats, splits, kind="predefined")


def make_splits(labels: np.ndarray, protocol: dict, seed: int, groups=None,
                force_ungrouped: bool = False, split=None) -> SplitPlan:
    labels = np.asarray(labels)
    if protocol["kind"] == "predefined":
        if split is None:
            _check_predefined(labels, [], None, None)
        return predefined_plan(split, protocol["n_repeats"], seed)
    if split is not None:
        log.info("the dataset has its own train/val/test split; %s pools every image "
                 "(protocol.kind: predefined scores on the official test split)", protocol["kind"])
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
    return SplitPlan(name, grouped, n_splits, n_rep, splits, kind=protocol["kind"])


# protocol.metric -> the scikit-learn scorer of a classifier's inner search (the same metric)
SEARCH_SCORING = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "macro_f1": "f1_macro"}


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


def _softmax(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:  # binary decision_function: one value per sample
        z = z[:, None]
    if z.shape[1] == 1:
        z = np.hstack([-z, z]) / 2
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_scores(fitted, X) -> np.ndarray:
    """Per-class confidences of a fitted classifier (what the records' predictions store
    beside :func:`score`): ``predict_proba`` where the model has it, else the softmax of
    its decision values (e.g. SVM, linear SVM: uncalibrated scores). Columns follow
    ``fitted.classes_``."""
    if hasattr(fitted, "predict_proba"):
        try:
            return fitted.predict_proba(X)
        except AttributeError:  # e.g. a Pipeline whose last step lacks predict_proba
            pass
    return _softmax(fitted.decision_function(X))

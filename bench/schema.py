"""The run configuration's schema: every key, its default and its allowed values, in one table.

:data:`SCHEMA` maps a section (``""`` for the top level, ``"protocol"``, ``"count.cnn"``,
``"finetune.scratch"`` ...) to its keys, each a :class:`Key` with the default and, for an
enumerated key, the allowed values. Everything else reads from here:

* :mod:`bench.config` builds ``DEFAULTS`` / ``CHOICES`` from it, checks unknown keys
  against it (with :func:`bench.errors.did_you_mean`) and merges overrides key by key;
* :mod:`bench.finetune` completes a ``finetune:`` entry with :func:`defaults` of
  ``finetune`` and ``finetune.<mode>``;
* :mod:`bench.counting` completes ``count:`` / ``count.regression`` / ``count.cnn`` blocks;
* :mod:`bench.analysis` reads the ``report`` defaults and the analysis constants.

A default of :data:`DERIVED` means "computed from the data" (e.g. ``count.stride`` is a
quarter of the patch size); the docstring of the key says from what. This module imports
nothing from bench, so any module may import it without an import cycle.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any



class _Derived:
    """The default of a key computed where it is read (the Key's doc says from what)."""

    def __repr__(self):
        return "DERIVED"


DERIVED = _Derived()


@dataclass(frozen=True)
class Key:
    """One configuration key: default, allowed values (None: checked by type), a line of doc."""

    default: Any = None
    allowed: tuple | None = None
    doc: str = ""


K = Key
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # a record's score columns
FINETUNE_MODES = ("transfer", "finetune", "scratch")
COUNT_METHODS = ("nms", "aggregate", "regression", "cnn")

SCHEMA: dict[str, dict[str, Key]] = {
    "": {
        "name": K("run", doc="run name: results/<name>-<hash>; a plain folder name"),
        "seed": K(0, doc="seed of splits, classifiers and analysis"),
        "plugins": K([], doc="Python files imported before the run (they run code)"),
        "dataset": K({"kind": "synthetic-parcel"}, doc="dataset block: kind + the dataset's params"),
        "datasets": K(None, doc="a suite: a list of dataset blocks (replaces dataset)"),
        "prepare": K(None, doc="image preparation, see the prepare section"),
        "features": K([], doc="feature extractors: names or {name, label, params, prepare}"),
        "classifiers": K([], doc="classifiers: names or {name, label, params, search}"),
        "protocol": K(None, doc="evaluation protocol, see the protocol section"),
        "finetune": K([], doc="end-to-end CNN rows, see the finetune sections"),
        "parallel": K(None, doc="parallel execution, see the parallel section"),
        "cache": K(None, doc="feature cache, see the cache section"),
        "output": K(None, doc="output folders and formats, see the output section"),
        "report": K(None, doc="report and analysis parts, see the report section"),
        "count": K(None, doc="object counting on scenes (points datasets), see the count section"),
        "on_missing_weights": K("random", ("random", "error"), "missing ImageNet file: random init or error"),
        "engine": K("auto", ("auto", "keras", "onnxruntime", "openvino"),
                    "who runs frozen CNNs (bench.features.engines); a cnn's own `engine` wins"),
        "on_bad_image": K(None, (None, "error", "skip"), "unreadable image: dataset default, error or skip"),
        "offline": K(False, doc="never download weights"),
    },
    "prepare": {
        "color": K("keep", ("keep", "gray", "rgb")),
        "size": K(None, doc="null, an int or [height, width]"),
        "depth_range": K(None, doc="null, 'minmax' or [low, high]"),
        "interpolation": K("area", ("area", "linear", "nearest", "cubic")),
        "crop": K(None, doc="null, an int or [height, width] (centre crop)"),
    },
    "protocol": {
        "kind": K("kfold", ("kfold", "holdout", "predefined")),
        "n_splits": K(5, doc="folds (kfold)"),
        "n_repeats": K(1, doc="repeats of the k folds"),
        "test_size": K(0.25, doc="test fraction (holdout)"),
        "group": K("auto", ("auto", True, False), "keep groups on one side of a split"),
        "leak_check": K(False, doc="also score leaky random splits"),
        "metric": K("macro_f1", METRICS, "ranks the rows, scores the inner search, heads the tables"),
    },
    "parallel": {
        "n_jobs": K(-1, doc="-1 = all cores"),
        "backend": K("loky", ("loky", "threading", "sequential", "dask")),
        "address": K(None, doc="dask scheduler, tcp://host:port"),
        "chunk_size": K("auto", doc="images per extraction task: auto (about 0.3 s of work each, "
                                    "at least 4 per worker, from the first tasks' cost) or a number"),
    },
    "cache": {
        "enabled": K(True),
        "dir": K(None, doc="default $BENCH_CACHE_DIR or ~/.cache/bench"),
    },
    "output": {
        "results_dir": K("results"),
        "reports_dir": K("reports"),
        "run_id": K(None, doc="run folder name (default <name>-<config hash>)"),
        "formats": K(["html", "pdf"], ("html", "pdf"), "report formats (a list)"),
    },
    "report": {
        "gallery": K(12, doc="images in the gallery (0 = off)"),
        "tsne": K(True),
        "learning_curves": K(True),
        "retrieval": K(True, doc="true (4 queries), false, or a number of queries"),
        "explain": K(True),
        "analysis_budget_s": K(120, doc="seconds for the analysis parts"),
        "author": K(None, doc="name(s) on summary.pdf"),
        "contribution": K(None, doc="text of summary.pdf's Contribution box (empty box if unset)"),
    },
    "finetune": {  # keys of every mode; the engine reads "folds"
        "label": K(DERIVED, doc="default <backbone>-<mode>, or scratch-cnn"),
        "mode": K(DERIVED, FINETUNE_MODES, "required"),
        "batch_size": K(32), "augment": K("default"), "mixup": K(0.0), "tta": K(0),
        "val_fraction": K(0.15), "class_weight": K(None, (None, "balanced")),
        "depth_range": K("minmax"),
        "folds": K(None, doc="null (all splits) or a list of split indices"),
        "input_size": K(96), "epochs": K(20), "lr": K(1e-3), "dropout": K(0.2), "patience": K(4),
    },
    "finetune.scratch": {
        "input_size": K(64), "epochs": K(30), "lr": K(3e-3), "dropout": K(0.3), "patience": K(8),
        "filters": K([16, 32, 64, 128]),
    },
    "finetune.transfer": {
        "backbone": K(DERIVED, doc="required"), "weights": K("imagenet"),
    },
    "finetune.finetune": {
        "backbone": K(DERIVED, doc="required"), "weights": K("imagenet"), "finetune_epochs": K(10),
        "unfreeze_blocks": K(2, doc="unless unfreeze_layers is given"),
        "unfreeze_layers": K(DERIVED, doc="instead of unfreeze_blocks"),
        "finetune_lr": K(DERIVED, doc="default lr / 10"),
    },
    "count": {
        "features": K(None, doc="feature labels; default the best feature of each family"),
        "classifier": K(None, doc="classifier label; default each feature's best"),
        "splits": K([0]),
        "method": K("nms", COUNT_METHODS, "one method or a list"),
        "stride": K(DERIVED, doc="default a quarter of the patch size"),
        "threshold": K(0.5, doc="a probability or 'auto'"),
        "min_distance": K(None),
        "mine_negatives": K(0), "mine_per_scene": K(100), "batch_size": K(512),
        "metric": K("balanced_accuracy", METRICS, "chooses the best cells"),
        "regression": K(None, doc="a block or a list of blocks, see count.regression"),
        "cnn": K(None, doc="a block or a list of blocks, see count.cnn"),
    },
    "count.regression": {
        "features": K(None, doc="default the run's features"),
        "regressors": K(["ridge", "poisson", "random_forest"]),
        "tile": K(DERIVED, doc="default twice the patch size"),
        "target": K("points", ("points", "density")),
        "sigma": K(DERIVED, doc="default max(1, patch size / 8)"),
        "normalize": K("none", ("none", "grayworld", "histmatch")),
        "jitter": K(0.0), "copies": K(1), "inner_splits": K(3),
    },
    "count.cnn": {
        "label": K("count-cnn"),
        "tile": K(DERIVED, doc="default twice the patch size"),
        "downsample": K(1), "stem": K(2), "filters": K([16, 32, 32]), "steps": K(1000),
        "batch_size": K(32), "lr": K(2e-3), "loss": K("poisson", ("poisson", "mse")),
        "sigma": K(DERIVED, doc="default max(1, patch size / 8)"),
        "normalize": K("none", ("none", "grayworld", "histmatch")),
        "jitter": K(0.1), "augment": K(True), "predict_tile": K(512), "positive": K(0.0),
    },
}

# analysis constants that are not keys (fixed by design, documented in bench.analysis)
ANALYSIS = {"learning_fractions": (0.1, 0.25, 0.5, 0.75, 1.0), "retrieval_queries": 4}


def keys(section: str) -> tuple:
    """The key names of ``section`` (``"finetune"`` includes every mode's keys)."""
    names = list(SCHEMA[section])
    if section == "finetune":
        for mode in FINETUNE_MODES:
            names += [k for k in SCHEMA[f"finetune.{mode}"] if k not in names]
    return tuple(names)


def defaults(section: str) -> dict:
    """A fresh dict of the defaults of ``section`` (DERIVED keys left out)."""
    return {k: copy.deepcopy(v.default) for k, v in SCHEMA[section].items() if v.default is not DERIVED}


def allowed(section: str, key: str) -> tuple | None:
    """The allowed values of an enumerated key, or None."""
    return SCHEMA[section][key].allowed


def finetune_defaults(mode: str) -> dict:
    """A ``finetune:`` entry's defaults for ``mode``: the common keys, then the mode's
    (``folds`` is the engine's; ``unfreeze_blocks`` applies only without ``unfreeze_layers``)."""
    out = defaults("finetune")
    out.pop("folds", None)
    out.update(defaults(f"finetune.{mode}"))
    out.pop("unfreeze_blocks", None)
    return out


def finetune_only() -> dict:
    """``{key: modes}`` for the keys that only some modes use (those not in the common section)."""
    out: dict = {}
    for mode in FINETUNE_MODES:
        for k in SCHEMA[f"finetune.{mode}"]:
            if k not in SCHEMA["finetune"]:
                out.setdefault(k, ())
                out[k] += (mode,)
    return out

"""Result records: one flat row per (dataset, feature, classifier, split) cell.

This module owns the record *schema* (:data:`SCHEMA`, :func:`make_record`,
:func:`cell_id`); where records live and how they are written and read (one JSON
line per record, atomic appends, a torn last line skipped) is
:mod:`bench.runfolder`'s, whose functions are re-exported here. Aggregation is a
separate step (:mod:`bench.aggregate`); reports are rebuilt from the run folder alone.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from .errors import ConfigError
from .runfolder import append_record as append  # noqa: F401  (the record I/O lives there)
from .runfolder import latest_by_cell, load_predictions, save_predictions  # noqa: F401
from .runfolder import read_records as load  # noqa: F401

# field -> description; every record has all of them (None where not applicable)
SCHEMA = {
    "run_id": "run folder name",
    "dataset": "dataset name",
    "feature": "feature label as shown in tables (unique within a run)",
    "family": "handcrafted | deep | hybrid | cnn (end-to-end CNN rows)",
    "classifier": "classifier label (end-to-end CNN rows: 'end-to-end' or 'end-to-end+tta')",
    "split": "split index in splits.json",
    "repeat": "repeat index",
    "fold": "fold index within the repeat",
    "status": "ok | failed",
    "error": "error message when failed",
    "accuracy": "test accuracy",
    "balanced_accuracy": "test balanced accuracy",
    "macro_f1": "test macro-F1",
    "extract_ms_per_image": "feature extraction time per image (ms), cache misses measured at first compute",
    "fit_s": "fit seconds (fold stage + scaler + classifier, or CNN training)",
    "predict_s": "predict seconds on the test fold",
    "n_features": "feature dimension seen by the classifier",
    "n_train": "training images",
    "n_test": "test images",
    "weights": "n/a | imagenet | imagenet (<package> <version>, sha256 <12 hex>) | random-init | file:<path>",
    "variant": "None, or e.g. 'random-split' for the leakage row, 'folds-subset' when only some folds ran",
    "params": "JSON string of the feature and classifier parameters",
    "cell_id": "unique id of the cell (also names its predictions file)",
    "time": "ISO time the record was written",
}

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")



def cell_id(feature: str, classifier: str, split: int, variant: str | None = None) -> str:
    raw = f"{feature}__{classifier}__s{split}" + (f"__{variant}" if variant else "")
    return "".join(c if (c.isalnum() or c in "-_.") else "-" for c in raw)


CELL_VARIANTS = (None, "random-split")


RANDOM_INIT = "random-init"
RANDOM_INIT_TAG = f"[{RANDOM_INIT}]"


def is_random_init(weights) -> bool:
    """True for rows whose CNN weights were randomly initialised (never pretrained)."""
    return isinstance(weights, str) and weights.strip().lower().startswith("random")


def tagged(label, weights) -> str:
    """A row's feature label as recorded and shown: ``"mobilenetv2-gap [random-init]"``
    when its weights are random (the one place the suffix is added)."""
    label = str(label)
    return f"{label} {RANDOM_INIT_TAG}" if is_random_init(weights) and RANDOM_INIT not in label else label


def untagged(label) -> str:
    """The label as configured (without the random-init suffix)."""
    return str(label).replace(f" {RANDOM_INIT_TAG}", "")


def check_cell_ids(features, classifiers, end_to_end=()) -> None:
    """:class:`~bench.errors.ConfigError` naming both labels when two (feature, classifier)
    rows of a config would share a cell id (:func:`cell_id` maps punctuation to ``-``:
    ``"x y"`` and ``"x-y"`` are one id), so no row overwrites another's records and
    predictions. A feature may gain the suffix ``" [random-init]"`` when its weights
    turn out random, so ``"x"`` and ``"x (random-init)"`` collide too. ``end_to_end``: the
    fine-tuning labels (classifier ``end-to-end``; their cell ids never take the suffix)."""
    rows = [(name, f, c) for f in features for name in _label_forms(f) for c in classifiers]
    rows += [(m, m, "end-to-end") for m in end_to_end]
    seen: dict = {}
    for name, f, c in rows:
        for split in (0, 1):
            for variant in CELL_VARIANTS:
                cid = cell_id(name, c, split, variant)
                other = seen.setdefault(cid, (f, c))
                if other != (f, c):
                    raise ConfigError(
                        f"rows ({other[0]!r}, {other[1]!r}) and ({f!r}, {c!r}) map to the same cell id "
                        f"{cid!r}: labels differing only in punctuation, spaces or a '[random-init]' "
                        "suffix collide",
                        "give one of the two entries another 'label', e.g. "
                        "features: [{name: lbp, label: lbp-r1}]")


def _label_forms(label: str) -> tuple[str, ...]:
    """The labels a feature's rows may carry: as given, and with the random-init suffix."""
    return (label,) if RANDOM_INIT in label else (label, tagged(label, RANDOM_INIT))


def now() -> str:
    """The records' ``time`` field: ISO time in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _clean(value):
    if isinstance(value, (np.floating,)):
        value = float(value)
    if isinstance(value, (np.integer,)):
        value = int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_record(**fields) -> dict:
    unknown = set(fields) - set(SCHEMA)
    if unknown:
        raise KeyError(f"unknown record fields: {sorted(unknown)}")
    return {k: _clean(fields.get(k)) for k in SCHEMA}


def to_frame(records: list[dict]):
    import pandas as pd
    rows = list(latest_by_cell(records).values())
    return pd.DataFrame(rows, columns=list(SCHEMA)) if rows else pd.DataFrame(columns=list(SCHEMA))

"""Result records: one flat row per (dataset, feature, classifier, split) cell.

Records are appended to ``results/<run-id>/records.jsonl``, one JSON object per
line, written with a single ``write`` + ``fsync`` under a lock, so a killed run
leaves every finished line intact (a torn last line is ignored on load and the
cell is recomputed). Aggregation is a separate step (:mod:`bench.aggregate`);
reports are rebuilt from these files alone.

Run folder layout (``results/<run-id>/``)::

    config.yaml        resolved config
    env.json           package versions, CPU/GPU, seed, command line, start time
    dataset.json       name, modality, class_names, labels, groups, ids, grouped?
    splits.json        {"splitter", "grouped", "folds": [{"split", "repeat", "fold", "train", "test"}]}
    records.jsonl      the records (schema below)
    predictions/<cell_id>.npz   test_index, y_true, y_pred, proba (n_test, n_classes)
    features.json      per feature: label, family, weights provenance, dimension, ms/image
    analysis/          t-SNE embeddings, learning curves, galleries (see bench.analysis)
    finetune/<model>/<split>/   curves.csv, best checkpoint (CNN alternative)
    summary.csv        aggregated leaderboard
    run.log
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import numpy as np

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

_lock = threading.Lock()


def cell_id(feature: str, classifier: str, split: int, variant: str | None = None) -> str:
    raw = f"{feature}__{classifier}__s{split}" + (f"__{variant}" if variant else "")
    return "".join(c if (c.isalnum() or c in "-_.") else "-" for c in raw)


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


def append(path: Path, record: dict) -> None:
    """Append one record atomically (single write of a whole line, fsync)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    path = Path(path)
    try:
        _append_line(path, line)
    except OSError as exc:
        from .errors import ResultsError
        raise ResultsError(f"cannot write a record to {str(path)!r}: {exc.strerror or exc}",
                           "free disk space or fix permissions, then run the same command again: "
                           "finished records are kept and the run resumes") from None


def _append_line(path: Path, line: bytes) -> None:
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            try:
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_EX)
            except (ImportError, OSError):  # pragma: no cover - non-POSIX
                pass
            # a previous crash may have left a torn line without newline: start a fresh one
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def load(path: Path) -> list[dict]:
    """All complete records; a torn line from a crash is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def latest_by_cell(records: list[dict]) -> dict[str, dict]:
    """Last record per cell id (a failed cell re-run later is replaced by its new record)."""
    out: dict[str, dict] = {}
    for r in records:
        out[r.get("cell_id")] = r
    return out


def to_frame(records: list[dict]):
    import pandas as pd
    rows = list(latest_by_cell(records).values())
    return pd.DataFrame(rows, columns=list(SCHEMA)) if rows else pd.DataFrame(columns=list(SCHEMA))


def save_predictions(run_dir: Path, cid: str, test_index, y_true, y_pred, proba=None) -> Path:
    d = Path(run_dir) / "predictions"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{cid}.npz"
    tmp = d / f".{cid}.tmp.npz"
    arrays = dict(test_index=np.asarray(test_index), y_true=np.asarray(y_true),
                  y_pred=np.asarray(y_pred))
    if proba is not None:
        arrays["proba"] = np.asarray(proba, dtype=np.float32)
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_predictions(run_dir: Path, cid: str) -> dict | None:
    path = Path(run_dir) / "predictions" / f"{cid}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}

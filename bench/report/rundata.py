"""Read a run folder into memory for the report (never touches the feature cache).

Every file is optional except the records (:mod:`bench.runfolder`): a partial run (killed, or analysis
switched off) still yields a report, with the missing parts explained.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import records as rec
from .. import runfolder as rf
from ..aggregate import METRIC_NAMES, csv_unescape, run_metric, summarize
from ..runfolder import RunFolder

log = logging.getLogger(__name__)

RowKey = tuple  # (dataset, feature, classifier, variant)


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return default


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return csv_unescape(pd.read_csv(path))  # written through aggregate.csv_safe
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


@dataclass
class RunData:
    """Everything a report shows, read from ``results/<run-id>/``."""

    run_dir: Path
    run_id: str
    config: dict
    env: dict
    dataset: dict
    splits: dict
    features: dict
    records: list
    summary: pd.DataFrame
    analysis: dict = field(default_factory=dict)
    finetune: pd.DataFrame | None = None
    _pred_cache: dict = field(default_factory=dict, repr=False)

    @property
    def metric(self) -> str:
        """``protocol.metric``: what ranks the leaderboard rows."""
        m = (self.config.get("protocol") or {}).get("metric")
        return m if m in METRIC_NAMES else "macro_f1"

    @classmethod
    def load(cls, run_dir, records: list | None = None) -> "RunData":
        """Read a run folder through :class:`bench.runfolder.RunFolder`; ``records`` (the
        records of the run, when the caller holds them) spares reading them again."""
        folder = RunFolder.open(run_dir)
        run_dir = folder.path
        config = {}
        if folder.file(rf.CONFIG).exists():
            import yaml
            try:
                config = yaml.safe_load(folder.file(rf.CONFIG).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                log.warning("cannot read %s: %s", rf.CONFIG, exc)
        records = folder.latest() if records is None else list(rec.latest_by_cell(records).values())
        rd = cls(run_dir=run_dir, run_id=run_dir.resolve().name, config=config,
                 env=folder.read_json(rf.ENV, {}) or {},
                 dataset=folder.read_json(rf.DATASET, {}) or {},
                 splits=folder.read_json(rf.SPLITS, {}) or {},
                 features=folder.read_json(rf.FEATURES_META, {}) or {},
                 records=records, summary=summarize(records, run_metric(run_dir)))
        rd._load_analysis()
        rd._load_finetune()
        return rd

    # -- analysis artefacts
    def _load_analysis(self) -> None:
        a = self.run_dir / rf.ANALYSIS
        out: dict = {"dir": a, "manifest": _read_json(a / "manifest.json", {}) or {}}
        out["gallery"] = _read_json(a / "gallery.json")
        out["retrieval"] = _read_json(a / "retrieval.json")
        out["learning_curves"] = _read_csv(a / "learning_curves.csv")
        out["counts"] = _read_csv(a / "counts.csv")
        out["count_rmse"] = _read_csv(a / "count_rmse.csv")
        out["explain"] = _read_json(a / "explain" / "explain.json")
        out["tsne"] = None
        if (a / "tsne.npz").exists():
            try:
                with np.load(a / "tsne.npz", allow_pickle=False) as z:
                    out["tsne"] = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                log.warning("cannot read tsne.npz: %s", exc)
        self.analysis = out

    def _load_finetune(self) -> None:
        frames = []
        for path in sorted((self.run_dir / "finetune").glob("*/*/curves.csv")):
            df = _read_csv(path)
            if df is None or df.empty:
                continue
            df = df.assign(model=path.parent.parent.name, split=path.parent.name)
            frames.append(df)
        self.finetune = pd.concat(frames, ignore_index=True) if frames else None

    # -- dataset facts
    @property
    def class_names(self) -> list[str]:
        names = self.dataset.get("class_names")
        if names:
            return [str(c) for c in names]
        n = 0
        for r in self.records:
            p = self.predictions_of(r)
            if p is not None:
                n = max(n, int(np.max(p["y_true"])) + 1, int(np.max(p["y_pred"])) + 1)
        return [str(i) for i in range(n)]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(self.summary["dataset"])) if len(self.summary) else []

    def main_splits(self) -> set[int] | None:
        """Split indices of the first repeat (each image tested once), None if unknown."""
        folds = self.splits.get("folds") or []
        if not folds:
            return None
        first = min(f.get("repeat", 0) for f in folds)
        return {int(f["split"]) for f in folds if f.get("repeat", 0) == first}

    # -- predictions
    def predictions_of(self, record: dict) -> dict | None:
        cid = record.get("cell_id")
        if cid is None or record.get("status") != "ok":
            return None
        if cid not in self._pred_cache:
            try:
                self._pred_cache[cid] = rec.load_predictions(self.run_dir, cid)
            except (OSError, ValueError) as exc:
                log.warning("cannot read predictions of %s: %s", cid, exc)
                self._pred_cache[cid] = None
        return self._pred_cache[cid]

    def row_records(self, key: RowKey) -> list[dict]:
        ds, feat, clf, var = key
        return [r for r in self.records
                if (r.get("dataset") or "") == ds and r.get("feature") == feat
                and r.get("classifier") == clf and (r.get("variant") or "") == var]

    def row_predictions(self, key: RowKey) -> dict[int, dict]:
        """split -> predictions arrays of a row's finished cells."""
        out = {}
        for r in self.row_records(key):
            p = self.predictions_of(r)
            if p is not None:
                out[int(r["split"])] = p
        return out

    def pooled(self, key: RowKey) -> tuple[np.ndarray, np.ndarray] | None:
        """Out-of-fold (y_true, y_pred) over the first repeat's splits (each image once)."""
        preds = self.row_predictions(key)
        main = self.main_splits()
        if main is not None and any(s in main for s in preds):
            preds = {s: p for s, p in preds.items() if s in main}
        if not preds:
            return None
        yt = np.concatenate([preds[s]["y_true"] for s in sorted(preds)])
        yp = np.concatenate([preds[s]["y_pred"] for s in sorted(preds)])
        return yt.astype(np.int64), yp.astype(np.int64)

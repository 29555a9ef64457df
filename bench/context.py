"""The typed state of one run, handed from stage to stage (:mod:`bench.engine`) and to
analysis, counting and explain, which need the features while they are in memory."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sklearn.pipeline import Pipeline

from .cache import FeatureCache
from .cells import build_pipeline
from .extraction import Feature, FeatureMatrix
from .protocol import SplitPlan
from .runfolder import RunFolder

Progress = Callable[[str, int], object]  # (description, total) -> object with update(n), close()


@dataclass
class RunContext:
    """What the stages share: the resolved config, the dataset, the splits, the run
    folder (records loaded once), the cache, and the features built so far."""

    config: dict
    folder: RunFolder
    dataset: Any
    plan: SplitPlan
    cache: FeatureCache
    progress: Progress | None = None
    plugin_paths: list[str] = field(default_factory=list)
    features: dict[str, Feature] = field(default_factory=dict)          # every features: entry
    matrices: dict[str, FeatureMatrix] = field(default_factory=dict)    # those in memory
    features_meta: dict = field(default_factory=dict)                   # features.json
    report_paths: dict = field(default_factory=dict)                    # the report stage's files

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def run_id(self) -> str:
        return self.folder.name

    @property
    def splits(self) -> list:
        return self.plan.splits

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def done(self) -> set[str]:
        """Cells with an ``ok`` record (skipped)."""
        return self.folder.done()

    @property
    def groups(self):
        """The dataset's groups when the splits are grouped, else ``None``."""
        return self.dataset.groups if self.plan.grouped else None

    @property
    def feature_labels(self) -> list[str]:
        """Features whose per-image matrix is in memory, in config order."""
        return [label for label in self.features if label in self.matrices]

    @property
    def classifier_labels(self) -> list[str]:
        return [c["label"] for c in self.config["classifiers"]]

    def per_image(self, label: str):
        return self.matrices[label].X

    def extract(self, label: str, images) -> object:
        f = self.features[label]
        return f.stage.transform([f.prepare(im) for im in images])

    def make_pipeline(self, feature_label: str, classifier_label: str) -> Pipeline:
        f = self.features[feature_label]
        spec = next(c for c in self.config["classifiers"] if c["label"] == classifier_label)
        return build_pipeline(f.fold_stage, spec, self.seed)

    def records(self) -> list[dict]:
        """The last record of each cell (from memory: the file was read once)."""
        return self.folder.latest()

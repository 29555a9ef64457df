"""Fabricate a complete, realistic run folder for report and aggregation tests.

``make_fake_run(root, ...)`` writes everything the engine would: config.yaml,
env.json, dataset.json, splits.json, features.json, records.jsonl, predictions,
finetune curves and (through the real :func:`bench.analysis.run_analysis`, driven by
a small in-memory context) the analysis folder with thumbnails. Scores follow a
per-row "skill" so the leaderboard has a known order; metrics are computed from the
fabricated predictions so tables, confusion matrices and tests agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from bench import records as rec
from bench.data.base import Dataset

EVIL = "<script>alert(1)</script>"

# label, family, weights, skill, reported dim, ms/image, per-image object array?
FEATURES = [
    dict(label="lbp", family="handcrafted", weights="n/a", skill=0.74, dim=54, ms=1.3),
    dict(label="hog", family="handcrafted", weights="n/a", skill=0.66, dim=324, ms=0.9),
    dict(label="sift-bovw", family="handcrafted", weights="n/a", skill=0.62, dim=256, ms=7.5, object=True),
    dict(label="mobilenetv2-gap", family="deep", weights="imagenet", skill=0.86, dim=1280, ms=24.0),
    dict(label="resnet50-gap", family="deep", weights="random-init", skill=0.48, dim=2048, ms=61.0),
]
CNN = dict(label="mobilenetv2-ft", family="cnn", weights="imagenet", skill=0.90, dim=1280, ms=30.0)
CLASSIFIERS = {"svm-rbf": 0.03, "logreg": 0.0, "knn": -0.06}


@dataclass
class _Split:
    index: int
    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray


class MeanPool(BaseEstimator, TransformerMixin):
    """Fold stage of the fake object-array feature: mean of each image's descriptors."""

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X[0]).shape[1]
        return self

    def transform(self, X):
        return np.stack([np.asarray(d).mean(axis=0) for d in X])


class FakeContext:
    """The slice of the engine's RunContext that bench.analysis uses."""

    def __init__(self, run_dir, config, dataset, splits, per_image, seed):
        self.run_dir = Path(run_dir)
        self.config = config
        self.dataset = dataset
        self.splits = splits
        self._X = per_image
        self.seed = seed

    @property
    def feature_labels(self):
        return list(self._X)

    def per_image(self, label):
        return self._X[label]

    def make_pipeline(self, feature_label, classifier_label):
        steps = [("encode", MeanPool())] if self._X[feature_label].dtype == object else []
        return Pipeline(steps + [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=300))])

    def records(self):
        return list(rec.latest_by_cell(rec.load(self.run_dir / "records.jsonl")).values())


def _image(i: int, label: int, n_classes: int, modality: str) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    h = w = 40
    yy, xx = np.mgrid[0:h, 0:w] / h
    freq = 2 + 3 * (label % 5)
    base = 0.5 + 0.4 * np.sin(2 * np.pi * freq * (xx + 0.3 * yy) + i)
    if modality == "depth":
        d = 1.0 + base + 0.1 * rng.normal(size=(h, w))
        d[rng.random((h, w)) < 0.05] = 0.0
        return d.astype(np.float32)
    hue = label / max(1, n_classes)
    rgb = np.stack([base * (0.4 + 0.6 * hue), base * (1 - hue), 0.6 * np.ones_like(base)], -1)
    rgb += 0.05 * rng.normal(size=rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _fake_predictions(rng, y_true, n_classes, p_correct):
    correct = rng.random(len(y_true)) < p_correct
    wrong = (y_true + rng.integers(1, n_classes, len(y_true))) % n_classes
    y_pred = np.where(correct, y_true, wrong)
    proba = rng.dirichlet(np.ones(n_classes), len(y_true)).astype(np.float32)
    top = proba.argmax(1)
    rows = np.arange(len(y_true))
    proba[rows, top], proba[rows, y_pred] = proba[rows, y_pred], proba[rows, top].copy()
    return y_pred, proba


def make_fake_run(root, *, run_id="fake-run", dataset="fake-textures", n_classes=3, per_class=20,
                  class_names=None, features=None, classifiers=None, cnn=True, n_splits=5,
                  n_repeats=1, failed_cell=True, grouped=False, random_split=False, counts=False,
                  analysis=True, modality="rgb", seed=0, skill_shift=0.0, analysis_cfg=None) -> Path:
    """Write a complete run folder ``root/run_id`` and return its path."""
    run_dir = Path(root) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    features = FEATURES if features is None else features
    classifiers = CLASSIFIERS if classifiers is None else classifiers
    if class_names is None:
        base = ["cat", "dog", EVIL, "bird & fish", "cow"]
        class_names = (base + [f"class-{i:03d}" for i in range(len(base), n_classes)])[:n_classes]
    n_classes = len(class_names)
    y = np.repeat(np.arange(n_classes), per_class)
    n = len(y)
    groups = (np.arange(n) // 4) if grouped else None
    ids = [f"img_{i:04d}.png" for i in range(n)]
    rng = np.random.default_rng(seed)

    splits = []
    for r in range(n_repeats):
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed + r)
        for f, (tr, te) in enumerate(skf.split(np.zeros(n), y)):
            splits.append(_Split(len(splits), r, f, np.sort(tr), np.sort(te)))

    # a generous analysis budget: a busy machine must not cut the parts these tests check
    report_cfg = {"analysis_budget_s": 600, "gallery": 12, "tsne": True, "learning_curves": True,
                  "retrieval": True, "formats": ["html", "pdf"], **(analysis_cfg or {})}
    config = {"name": "fake", "seed": seed, "dataset": {"kind": "synthetic", "name": dataset},
              "protocol": {"kind": "kfold", "n_splits": n_splits, "n_repeats": n_repeats},
              "features": [f["label"] for f in features], "classifiers": list(classifiers),
              "report": report_cfg}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"python": "3.11.2", "packages": {"numpy": np.__version__, "scikit-learn": "1.9.1",
                                            "tensorflow": "2.21.0", "keras": "3.15.0"},
           "cpu": "Fake CPU @ 2.0GHz", "n_cores": 2, "gpu": None, "device": "cpu", "seed": seed,
           "command": "python -m bench run --config pipelines/fake.yaml",
           "started": "2025-01-01T10:00:00+00:00", "finished": "2025-01-01T10:03:25+00:00",
           "duration_s": 205.0, "host": "testhost"}
    (run_dir / "env.json").write_text(json.dumps(env))
    (run_dir / "dataset.json").write_text(json.dumps({
        "name": dataset, "kind": "synthetic", "modality": modality, "class_names": class_names,
        "labels": y.tolist(), "groups": None if groups is None else groups.tolist(), "ids": ids,
        "grouped": grouped, "n_images": n}))
    splitter = (f"StratifiedGroupKFold(n_splits={n_splits})" if grouped else
                f"RepeatedStratifiedKFold(n_splits={n_splits}, n_repeats={n_repeats})" if n_repeats > 1
                else f"StratifiedKFold(n_splits={n_splits})")
    (run_dir / "splits.json").write_text(json.dumps({
        "splitter": splitter, "grouped": grouped, "n_splits": n_splits, "n_repeats": n_repeats,
        "folds": [{"split": s.index, "repeat": s.repeat, "fold": s.fold, "train": s.train.tolist(),
                   "test": s.test.tolist()} for s in splits]}))
    feats_meta = {}
    for f in features + ([CNN] if cnn else []):
        feats_meta[f["label"]] = {"name": f["label"].split("-")[0], "family": f["family"],
                                  "weights": f["weights"],
                                  "weights_file": "~/.keras/models/mobilenet_v2_weights.h5"
                                  if f["weights"] == "imagenet" else None,
                                  "n_features": f["dim"], "extract_ms_per_image": f["ms"], "params": {}}
    (run_dir / "features.json").write_text(json.dumps(feats_meta))

    records_path = run_dir / "records.jsonl"
    records_path.unlink(missing_ok=True)

    def add_cell(feat, clf, s, p, variant=None, fail=None):
        cid = rec.cell_id(feat["label"], clf, s.index, variant)
        common = dict(run_id=run_id, dataset=dataset, feature=feat["label"], family=feat["family"],
                      classifier=clf, split=s.index, repeat=s.repeat, fold=s.fold,
                      weights=feat["weights"], variant=variant, cell_id=cid, n_train=len(s.train),
                      n_test=len(s.test), time="2025-01-01T10:01:00+00:00", params="{}")
        if fail:
            rec.append(records_path, rec.make_record(status="failed", error=fail, **common))
            return
        yt = y[s.test]
        y_pred, proba = _fake_predictions(rng, yt, n_classes, p)
        rec.save_predictions(run_dir, cid, s.test, yt, y_pred, proba)
        rec.append(records_path, rec.make_record(
            status="ok", accuracy=accuracy_score(yt, y_pred),
            balanced_accuracy=balanced_accuracy_score(yt, y_pred),
            macro_f1=f1_score(yt, y_pred, average="macro", labels=np.arange(n_classes), zero_division=0),
            extract_ms_per_image=feat["ms"] * (1 + 0.05 * rng.normal()),
            fit_s=0.02 * feat["dim"] ** 0.5 * (1 + 0.1 * rng.random()),
            predict_s=0.001 * feat["dim"] ** 0.5, n_features=feat["dim"], **common))

    for feat in features:
        for clf, off in classifiers.items():
            for s in splits:
                p = float(np.clip(feat["skill"] + off + skill_shift + 0.03 * rng.normal(), 0.05, 0.99))
                fail = None
                if failed_cell and feat["label"] == "sift-bovw" and clf == "knn" and s.index == 2:
                    fail = "ValueError: Expected n_neighbors <= n_samples <b>boom</b>"
                add_cell(feat, clf, s, p, fail=fail)
    if random_split:
        for feat in features[:1] + [f for f in features if f["family"] == "deep"][:1]:
            clf = next(iter(classifiers))
            for s in splits:
                add_cell(feat, clf, s, min(0.99, feat["skill"] + 0.12), variant="random-split")
    if cnn:
        for s in splits:
            add_cell(CNN, "end-to-end", s, float(np.clip(CNN["skill"] + skill_shift, 0.05, 0.99)))
            d = run_dir / "finetune" / CNN["label"] / str(s.index)
            d.mkdir(parents=True, exist_ok=True)
            ep = np.arange(1, 13)
            loss = 1.6 * np.exp(-ep / 4) + 0.1
            lines = ["epoch,loss,accuracy,val_loss,val_accuracy,lr"] + [
                f"{e},{l:.4f},{1 - l / 2:.4f},{l * 1.2 + 0.05:.4f},{1 - l / 1.8:.4f},{1e-3 * 0.9 ** e:.6f}"
                for e, l in zip(ep, loss)]
            (d / "curves.csv").write_text("\n".join(lines) + "\n")

    if counts:
        a = run_dir / "analysis"
        a.mkdir(exist_ok=True)
        rows = ["image,class,true,predicted,feature,classifier"]
        rmse = ["feature,classifier,class,rmse"]
        for img in range(6):
            for c in class_names[:3]:
                t = int(rng.integers(0, 30))
                rows.append(f"scene_{img}.jpg,\"{c}\",{t},{t + int(rng.integers(-3, 4))},lbp,svm-rbf")
        for c in class_names[:3]:
            rmse.append(f"lbp,svm-rbf,\"{c}\",{rng.uniform(0.5, 3):.3f}")
        (a / "counts.csv").write_text("\n".join(rows) + "\n")
        (a / "count_rmse.csv").write_text("\n".join(rmse) + "\n")

    if analysis:
        from bench.analysis import run_analysis
        ds = Dataset(dataset, lambda i: _image(i, int(y[i]), n_classes, modality), y, class_names,
                     keys=ids, groups=groups, ids=ids, modality=modality)
        per_image = {}
        frng = np.random.default_rng(seed + 7)
        centers = frng.normal(size=(n_classes, 16))
        for f in features:
            sep = 0.9 * f["skill"]
            if f.get("object"):
                arr = np.empty(n, dtype=object)
                for i in range(n):
                    arr[i] = (sep * centers[y[i]] + frng.normal(size=(int(frng.integers(3, 9)), 16)))
                per_image[f["label"]] = arr
            else:
                per_image[f["label"]] = (sep * centers[y] + frng.normal(size=(n, 16))).astype(np.float32)
        run_analysis(FakeContext(run_dir, config, ds, splits, per_image, seed))
    return run_dir

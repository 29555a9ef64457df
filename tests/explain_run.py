"""One tiny real run with every kind of row the explain stage draws, shared by test modules.

``tiny_explain_run(root)`` runs :func:`bench.engine.run` once per test session (on
generated parcel depth maps: hand-crafted rows with NON-default parameters, a frozen
MobileNetV3-Small row with GAP and one with GMP, logistic regression and an RBF SVM, a
tiny end-to-end CNN) and returns ``(run_dir, cfg, cache_dir)``.
"""
from __future__ import annotations

from pathlib import Path

from bench import engine
from bench.config import load_config

HOG_PARAMS = {"orientations": 6, "pixels_per_cell": [6, 6], "cells_per_block": [2, 2], "size": [48, 48]}
LBP_PARAMS = {"radii": [1, 3], "points": [8, 12]}

_RUNS: dict = {}


def overrides(root: Path) -> list[str]:
    feats = ("[{name: hog, params: {orientations: 6, pixels_per_cell: [6, 6], cells_per_block: [2, 2], "
             "size: [48, 48]}}, {name: lbp, params: {radii: [1, 3], points: [8, 12]}}, "
             "{name: glcm, params: {levels: 16, distances: [1, 2], angles: [0, 90]}}, "
             "{name: sift_bovw, params: {n_words: 12, step: 6, size: 12}}, "
             "{name: parcel_shape, prepare: {depth_range: null}}, "
             "{name: cnn, label: mnv3-gap, params: {backbone: mobilenetv3small, pooling: avg, "
             "input_size: 48, weights: random, layer: block3}}, "
             "{name: cnn, label: mnv3-gmp, params: {backbone: mobilenetv3small, pooling: max, "
             "input_size: 48, weights: random, layer: block3}}]")
    return ["name=explain-tiny", "dataset.kind=synthetic-parcel", "dataset.n_per_class=8", "dataset.size=48",
            "prepare.depth_range=minmax", f"features={feats}", "classifiers=[logreg, svm]",
            "protocol.n_splits=3",
            "finetune=[{label: tiny-cnn, mode: scratch, input_size: 32, epochs: 2, filters: [8, 16], "
            "batch_size: 16, patience: 2}]",
            "report.gallery=4", "report.tsne=false", "report.learning_curves=false", "report.retrieval=false",
            "report.explain=true", f"output.results_dir={root / 'results'}", f"cache.dir={root / 'cache'}",
            "parallel.n_jobs=1"]


def tiny_explain_run(root: Path):
    if "run" not in _RUNS:
        root = Path(root)
        cfg = load_config(None, overrides(root))
        ctx = engine.run(cfg)
        _RUNS["run"] = (ctx.run_dir, cfg, root / "cache")
    return _RUNS["run"]

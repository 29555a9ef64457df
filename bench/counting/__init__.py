"""Per-image animal counts: the Sea Lion task (docs/SEALION.md).

The engine calls one entry point, :func:`run_counting` (:mod:`.run`), with the
``count:`` section of the config. The counters live in one module each:

``windows``     a patch classifier slid over the scene: NMS detections or
                probability aggregation, calibration, hard-negative mining, the oracle
``tiles``       tile grid, per-tile count targets, colour normalisation and jitter
``regression``  tile features -> count regressor (:data:`bench.registry.REGRESSORS`)
                -> tile sums, hyperparameters nested by scene
``cnn``         an end-to-end convolutional count regressor on tiles
``evaluate``    the truth table and the RMSE / MAE of per-image counts
"""
from .evaluate import count_errors, true_counts, truth_matrix
from .run import BASELINE, METHODS, SPEC_KEYS, _SceneRunner, choose_cells, run_counting
from .windows import (THRESHOLD_GRID, WINDOW_METHODS, Detection, Oracle, SceneCount, _concat,
                      _full_proba, _take, aggregate_counts, calibrate_threshold,
                      calibrate_windows_per_animal, class_scores, count_scene, count_windows_cell,
                      counts_from_proba, default_windows_per_animal, mine_hard_negatives,
                      nms_detections, sliding_windows, window_centres, window_proba)

__all__ = ["run_counting", "choose_cells", "count_errors", "true_counts", "truth_matrix", "Oracle",
           "Detection", "SceneCount", "aggregate_counts", "calibrate_threshold",
           "calibrate_windows_per_animal", "class_scores", "count_scene", "count_windows_cell",
           "counts_from_proba", "default_windows_per_animal", "mine_hard_negatives", "nms_detections",
           "sliding_windows", "window_centres", "window_proba", "METHODS", "WINDOW_METHODS",
           "SPEC_KEYS", "BASELINE", "THRESHOLD_GRID", "_SceneRunner", "_concat", "_full_proba", "_take"]

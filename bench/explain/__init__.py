"""What the features see: pictures and numbers that explain a run's rows.

Plain functions with plain inputs (images, extractors, fitted scikit-learn pipelines,
Keras models), each testable without a run:

* :mod:`.maps` - what a hand-crafted extractor computes on one image, drawn with the
  extractor's own parameters: the HOG glyph picture (``skimage.feature.hog`` with
  ``visualize=True``), the LBP code map, SIFT keypoints coloured by visual word of a
  codebook fitted on a training fold, and the valid-pixel mask, outline and
  minimum-area rectangle that ``parcel_shape`` measures (its own functions).
* :mod:`.cam` - CNN internals: first-convolution filters, the pre-pooling feature map
  of a frozen backbone, the exact class activation map of a GAP + linear classifier
  (the standard scaler folded into the weights), Grad-CAM of an end-to-end Keras
  model and occlusion sensitivity of any image classifier.
* :mod:`.importance` - permutation importance of named feature dimensions on held-out
  folds (equal to :func:`sklearn.inspection.permutation_importance`, batched).
* :mod:`.render` - the PNG panels (one card per image, filter grids).
* :mod:`.stage` - :func:`run_explain`, called once by :mod:`bench.analysis` while the
  run's features are in memory; it writes ``analysis/explain/`` (PNG panels and
  ``explain.json``), from which reports are rebuilt without the feature cache.
"""
from __future__ import annotations

__all__ = ["maps", "cam", "importance", "render", "stage"]

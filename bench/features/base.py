"""Extractor base class and the two-stage contract used by the engine.

Every extractor is a scikit-learn transformer: ``transform(images) -> (n, d) float32``
where ``images`` is any sequence of numpy images (they may differ in size).
Hyperparameters live only in ``__init__`` (stored verbatim); learned state has a
trailing underscore; ``fit`` returns ``self``.

The engine splits each extractor into two stages (see :meth:`Extractor.stages`):

* a **per-image** stage that does not depend on the fold (HOG, LBP, GLCM, SIFT local
  descriptors, frozen-CNN embeddings). It runs once per image and is cached.
* an optional **fold** stage (an unfitted scikit-learn transformer, e.g. the SIFT
  codebook + histogram encoder) that is placed inside the per-fold Pipeline and so
  is fitted on training images only.

For a stateless extractor the per-image stage is the extractor itself and the fold
stage is ``None``. The per-image output is a float32 matrix, or, when a fold stage
follows, an object array of per-image arrays (e.g. variable-length descriptor sets).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class Extractor(BaseEstimator, TransformerMixin):
    """Base class of all feature extractors.

    Subclasses implement :meth:`extract_one` (image -> 1-D vector) or override
    :meth:`transform`. Class attributes:

    * ``family``: ``"handcrafted"`` or ``"deep"`` (reports group rows by it);
    * ``version``: bump when the output of the same parameters changes, so cached
      features are not reused.
    """

    family = "handcrafted"
    version = "1"

    def fit(self, images, y=None):
        return self

    def extract_one(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        rows = [np.asarray(self.extract_one(im), dtype=np.float32).ravel() for im in images]
        if not rows:  # keep the width when the extractor knows it
            width = self.n_features() if hasattr(self, "n_features") else 0
            return np.zeros((0, width), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    # -- engine contract -------------------------------------------------
    @property
    def parallel_safe(self) -> bool:
        """Whether the per-image stage may run in several worker processes.

        Hand-crafted extractors are cheap to ship to workers. A CNN is not: each worker
        would build its own model and TensorFlow already uses every core, so it runs in
        the main process, batched. A subclass may override this (a class attribute
        ``parallel_safe = True`` does)."""
        return self.family == "handcrafted"

    def stages(self):
        """Return ``(per_image_transformer, fold_transformer_or_None)``."""
        return self, None

    def cache_key(self) -> str:
        """Identity of the per-image output: class, version and parameters."""
        params = self.get_params(deep=False)
        return json.dumps({"cls": type(self).__name__, "version": self.version,
                           "params": params}, sort_keys=True, default=str)

    def describe(self) -> dict:
        """Extra provenance recorded with every row (e.g. CNN weights)."""
        return {}

    def check_params(self) -> None:
        """Raise :class:`~bench.errors.ConfigError` for a bad parameter value; called by
        :func:`bench.config.check_components` before a run does any work. Default: nothing."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

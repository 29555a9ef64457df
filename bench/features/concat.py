"""Concatenation of several extractors into one feature vector.

``Concat(parts=[{"name": "lbp", "params": {"radii": [1, 2]}}, "glcm", HOG()])``: a
part is a registry name, a ``{"name", "params"}`` mapping (built with
``FEATURES.create``) or an extractor instance (cloned, so the caller's object is never
fitted). ``family`` is the parts' family, or ``"hybrid"`` when they differ.

Two-stage contract (:meth:`bench.features.base.Extractor.stages`):

* no part has a fold stage: the per-image stage is the ``Concat`` itself and its
  output the horizontal stack of the parts' outputs; no fold stage.
* some part has a fold stage (e.g. ``sift_bovw``): the per-image stage is a
  :class:`ConcatPerImage` whose output is an object array of shape ``(n, n_parts)``
  (cell ``[i, j]`` = part ``j``'s per-image output for image ``i``: a dense row or,
  e.g., a descriptor set); the fold stage is a :class:`ConcatEncoder` that fits each
  part's fold stage on its column (training rows only, inside the per-fold Pipeline;
  a column of equal-length vectors is passed as a 2-D matrix, anything else as an
  object array), passes the other columns through, and concatenates.
"""
from __future__ import annotations

import json
import logging
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..errors import ConfigError, DataError
from ..registry import FEATURES
from .base import Extractor

log = logging.getLogger(__name__)


def build_part(spec, where: str = "concat") -> Extractor:
    """An extractor from a name, a ``{"name", "params"}`` mapping or an instance."""
    # by name: FEATURES holds every built-in extractor, since importing this module
    # imported the bench.features package (also in a fresh worker process)
    if isinstance(spec, str):
        return FEATURES.create(spec, where=where)
    if isinstance(spec, dict):
        extra = set(spec) - {"name", "params"}
        if "name" not in spec or extra:
            raise ConfigError(f"{where}: a part must be {{name: ..., params: {{...}}}}, got {spec!r}",
                              "e.g. parts: [{name: lbp, params: {radii: [1, 2]}}, {name: glcm}]")
        return FEATURES.create(spec["name"], where=where, **dict(spec.get("params") or {}))
    if hasattr(spec, "transform") and hasattr(spec, "get_params"):
        return clone(spec)
    raise ConfigError(f"{where}: cannot build a feature extractor from {spec!r}",
                      "give a registered name, {name: ..., params: {...}} or an extractor instance")


class _Family:
    """``family`` of a concatenation: the parts' family, or ``"hybrid"`` when they differ.

    Read on the class (no parts known) it says ``"hybrid"``.
    """

    def __get__(self, obj, objtype=None) -> str:
        if obj is None:
            return "hybrid"
        parts = obj.built_parts() if isinstance(obj, Concat) else list(obj.parts)
        fams = {getattr(p, "family", "handcrafted") for p in parts}
        return fams.pop() if len(fams) == 1 else "hybrid"


def _key(extractor) -> object:
    """A part's cache key as a JSON value (nested, not a string inside a string)."""
    k = extractor.cache_key()
    try:
        return json.loads(k)
    except (TypeError, ValueError):
        return k


def _column(X: np.ndarray, j: int) -> np.ndarray:
    """Column ``j`` of the per-image output, as its fold stage expects it.

    Cells that are all 1-D vectors (a dense part's rows) become a 2-D float32 matrix;
    anything else (e.g. variable-length descriptor sets) stays a 1-D object array.
    """
    cells = list(X[:, j])
    if cells and all(np.ndim(c) == 1 for c in cells) and len({np.shape(c) for c in cells}) == 1:
        return np.stack([np.asarray(c, dtype=np.float32) for c in cells])
    col = np.empty(len(cells), dtype=object)
    for i, c in enumerate(cells):  # item by item: never broadcast equal-shape arrays into 3-D
        col[i] = c
    return col


def _dense(col: np.ndarray) -> np.ndarray:
    if col.dtype != object:
        return col.astype(np.float32, copy=False)
    return np.stack([np.asarray(v, dtype=np.float32).ravel() for v in col]) if len(col) else \
        np.zeros((0, 0), np.float32)


def _all_parallel_safe(parts) -> bool:
    try:
        return all(getattr(p, "parallel_safe", False) for p in parts)
    except Exception:  # noqa: BLE001 - a part that cannot be built: be conservative
        return False


class ConcatPerImage(Extractor):
    """Per-image stage of a concatenation with a fold stage: ``(n, n_parts)`` objects."""

    version = "1"

    def __init__(self, parts=()):
        self.parts = parts

    family = _Family()

    @property
    def parallel_safe(self) -> bool:
        """Several worker processes only when every part allows it (no CNN part)."""
        return _all_parallel_safe(self.parts)

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        images = list(images)  # load once, whatever the number of parts
        outputs = [p.transform(images) for p in self.parts]
        n = len(images)
        out = np.empty((n, len(self.parts)), dtype=object)
        for j, o in enumerate(outputs):
            if len(o) != n:
                raise DataError(f"concat part {j} returned {len(o)} rows for {n} images",
                                "a part's transform must return one row per image")
            for i in range(n):
                out[i, j] = o[i]
        return out

    def cache_key(self) -> str:
        return json.dumps({"cls": type(self).__name__, "version": self.version,
                           "parts": [_key(p) for p in self.parts]}, sort_keys=True, default=str)

    def describe(self) -> dict:
        return {"parts": [p.describe() for p in self.parts]}


class ConcatEncoder(BaseEstimator, TransformerMixin):
    """Fold stage of a concatenation: column ``j`` through ``encoders[j]`` (or as is)."""

    def __init__(self, encoders=()):
        self.encoders = encoders

    def _check_X(self, X):
        X = np.asarray(X, dtype=object) if not isinstance(X, np.ndarray) else X
        if X.ndim != 2 or X.shape[1] != len(self.encoders):
            raise DataError(f"ConcatEncoder expects an (n, {len(self.encoders)}) object array, got shape "
                            f"{getattr(X, 'shape', None)}", "pass the output of ConcatPerImage.transform")
        return X

    def fit(self, X, y=None):
        X = self._check_X(X)
        self.encoders_ = [None if e is None else clone(e).fit(_column(X, j), y)
                          for j, e in enumerate(self.encoders)]
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "encoders_")
        X = self._check_X(X)
        blocks = [_dense(_column(X, j)) if e is None else np.asarray(e.transform(_column(X, j)))
                  for j, e in enumerate(self.encoders_)]
        if X.shape[0] == 0:
            return np.zeros((0, 0), dtype=np.float32)
        return np.hstack(blocks).astype(np.float32)


@FEATURES.register("concat", "Concatenation of several extractors (handcrafted, deep or both)",
                   family="hybrid")
class Concat(Extractor):
    """Horizontal concatenation of extractors (see the module docstring).

    Parameters
    ----------
    parts: list of registry names, ``{"name": ..., "params": {...}}`` mappings or
        extractor instances.
    """

    version = "1"

    def __init__(self, parts=()):
        self.parts = parts

    def built_parts(self) -> list[Extractor]:
        """The part extractors, built once per parameter set and kept (a CNN part then
        builds its model once, not once per chunk of images)."""
        if isinstance(self.parts, (str, dict)) or not len(self.parts):
            raise ConfigError(f"concat: parts must be a non-empty list, got {self.parts!r}",
                              "e.g. parts: [lbp, {name: glcm, params: {levels: 32}}]")
        sig = json.dumps(self.parts, sort_keys=True, default=repr)
        cached = self.__dict__.get("_built")
        if cached is None or cached[0] != sig:
            cached = (sig, [build_part(p, f"concat part {k}") for k, p in enumerate(self.parts)])
            self._built = cached
        return cached[1]

    # The built parts travel with the concatenation to worker processes (a worker cannot
    # rebuild a plugin's part by name; a CNN part leaves its model behind, see
    # CNNFeatures.__getstate__).

    family = _Family()

    @property
    def parallel_safe(self) -> bool:
        """Several worker processes only when every part allows it (no CNN part)."""
        try:
            parts = self.built_parts()
        except Exception:  # noqa: BLE001 - unknown layout: be conservative
            return False
        return _all_parallel_safe(parts)

    def stages(self):
        parts = self.built_parts()
        pairs = [p.stages() for p in parts]
        if all(fold is None for _, fold in pairs):
            return self, None
        return ConcatPerImage(parts=[per for per, _ in pairs]), ConcatEncoder(encoders=[f for _, f in pairs])

    def cache_key(self) -> str:
        return json.dumps({"cls": type(self).__name__, "version": self.version,
                           "parts": [_key(p) for p in self.built_parts()]}, sort_keys=True, default=str)

    def describe(self) -> dict:
        return {"parts": [p.describe() for p in self.built_parts()]}

    def fit(self, images, y=None):
        per_image, fold = self.stages()
        if fold is not None:
            self.per_image_ = per_image
            self.encoder_ = fold.fit(per_image.transform(images), y)
        return self

    def transform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        per_image, fold = self.stages()
        if fold is not None:
            check_is_fitted(self, "encoder_")
            return self.encoder_.transform(self.per_image_.transform(images))
        images = list(images)  # load once, whatever the number of parts
        blocks = [np.asarray(p.transform(images), dtype=np.float32) for p in self.built_parts()]
        if len(images) == 0:
            return np.zeros((0, sum(b.shape[1] if b.ndim == 2 else 0 for b in blocks)), dtype=np.float32)
        return np.hstack(blocks).astype(np.float32, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.requires_fit = any(fold is not None for _, fold in (p.stages() for p in self.built_parts()))
        except Exception:  # invalid parts: let fit/transform raise the ConfigError
            tags.requires_fit = False
        return tags

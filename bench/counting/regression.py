"""Counting by regression on tiles: registered features -> count regressor -> tile sums.

For one split, every scene is cut into tiles (:mod:`.tiles`); a training tile's
target is its per-class count (point in tile, or Gaussian density integrated over
the tile). Each tile goes through the *same* per-image feature stage and image
preparation as the patches of the run (``ctx.extract``) and the same feature cache
(``ctx.cache``, keyed by the tile's content identity: scene file hash, position,
size, colour normalisation and jitter copy, plus the extractor's own key), so a
tile is extracted once per run folder and cache, whatever the number of splits.

A count regressor from :data:`bench.registry.REGRESSORS` (ridge, Poisson GLM,
random forest, gradient boosting; :mod:`bench.regressors`) is fitted in a Pipeline
``[fold stage] -> StandardScaler -> regressor`` on the training tiles. Its
hyperparameters are chosen inside the training scenes: an inner
:class:`~sklearn.model_selection.GroupKFold` by scene, scored by the mean
column-wise RMSE of the inner held-out *scene* counts (the metric of the task, not
the tile error). With a single training scene (two real photos, two folds) the
inner folds are the four quarters of that scene instead. A held-out scene's count is the sum of its tiles' predictions,
each clipped at zero (and at :func:`tile_cap`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .tiles import SceneColour, colour_jitter, scene_tiles, tile_targets

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- regressors

def regressor_specs(items) -> list[dict]:
    """Normalise ``count.regression.regressors`` entries to ``{name, label, params, search}``."""
    from .. import regressors  # noqa: F401  (fills REGRESSORS)
    from ..registry import REGRESSORS

    out = []
    for item in ([items] if isinstance(items, (str, Mapping)) else list(items or [])):
        spec = {"name": item} if isinstance(item, str) else dict(item)
        unknown = set(spec) - {"name", "label", "params", "search"}
        if unknown or "name" not in spec:
            raise ConfigError(f"count.regression.regressors: bad entry {item!r}",
                              "a regressor name or {name, label, params, search}")
        entry = REGRESSORS.entry(spec["name"], where="count.regression.regressors")
        spec.setdefault("label", spec["name"])
        spec["params"] = dict(spec.get("params") or {})
        spec["search"] = dict(entry.meta.get("grid") or {}) if spec.get("search") is None \
            else dict(spec["search"])
        out.append(spec)
    labels = [s["label"] for s in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"count.regression.regressors: duplicate label(s) {dup}",
                          "give each entry its own `label:`")
    return out


def build_regressor(spec: Mapping, params: Mapping | None = None, seed: int = 0, fold_stage=None):
    """``Pipeline([encode], scale, reg)`` for a regressor spec (``params`` override its own)."""
    import inspect

    from sklearn.base import clone
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from ..registry import REGRESSORS

    kw = dict(spec.get("params") or {})
    kw.update(params or {})
    factory = REGRESSORS.get(spec["name"])
    if "random_state" in inspect.signature(factory).parameters and "random_state" not in kw:
        kw["random_state"] = int(seed)
    est = REGRESSORS.create(spec["name"], where=f"count.regression.regressors ({spec['label']})", **kw)
    steps = [("encode", clone(fold_stage))] if fold_stage is not None else []
    return Pipeline(steps + [("scale", StandardScaler()), ("reg", est)])


def tile_cap(Y: np.ndarray) -> np.ndarray:
    """Per-class upper bound of a tile prediction: twice the most crowded training tile, plus one.

    A log-link model (Poisson GLM) extrapolates exponentially on a tile unlike any training
    tile (measured: overflow on a new terrain colour); no tile can hold far more animals
    than the most crowded tile seen in training.
    """
    Y = np.asarray(Y, dtype=np.float64)
    return 2 * Y.max(axis=0) + 1 if len(Y) else None


def scene_sums(pred: np.ndarray, scene_of_tile: np.ndarray, scenes: Sequence, cap=None) -> np.ndarray:
    """Per-scene counts: the sum of each scene's tile predictions, each clipped to ``[0, cap]``."""
    pred = np.asarray(pred, dtype=np.float64).reshape(len(scene_of_tile), -1)
    pred = np.clip(np.nan_to_num(pred, nan=0.0, posinf=np.inf), 0, None)
    if cap is not None:
        pred = np.minimum(pred, np.asarray(cap, dtype=np.float64))
    return np.stack([pred[scene_of_tile == s].sum(0) for s in scenes]) if len(scenes) else \
        np.zeros((0, pred.shape[1]))


def _col_rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.sqrt(np.mean((pred - truth) ** 2, axis=0))))


def fit_count_regressor(X, Y, scene_of_tile, original, spec: Mapping, seed: int = 0, fold_stage=None,
                        inner_splits: int = 3):
    """Fit one regressor spec on tiles, its grid searched by scene-grouped inner CV.

    ``X`` (n_tiles, d), ``Y`` (n_tiles, n_classes) targets, ``scene_of_tile`` (n_tiles,)
    the scene (group) of each tile, ``original`` (n_tiles,) bool: False for jittered
    copies, which are used for fitting but never scored. Returns ``(fitted pipeline,
    best params, inner score)``; the inner score (mean column-wise RMSE of the inner
    held-out scene counts) is NaN without a search.
    """
    from sklearn.model_selection import GroupKFold, ParameterGrid

    grid = list(ParameterGrid({k: list(v) for k, v in (spec.get("search") or {}).items()})) \
        if spec.get("search") else [{}]
    groups = np.asarray(scene_of_tile)
    scenes = list(dict.fromkeys(groups.tolist()))
    best, best_score = grid[0], float("nan")
    k = min(int(inner_splits), len(scenes))
    if len(grid) > 1 and k >= 2:
        # folds over scenes; the copies of a scene follow it
        folds = list(GroupKFold(n_splits=k).split(np.zeros(len(scenes)), groups=np.arange(len(scenes))))
        scores = []
        for params in grid:
            errs = []
            for tr_s, te_s in folds:
                tr_set = {scenes[i] for i in tr_s}
                te = [scenes[i] for i in te_s]
                tr = np.isin(groups, list(tr_set))
                ev = np.isin(groups, te) & original
                model = build_regressor(spec, params, seed, fold_stage).fit(_take(X, tr), Y[tr])
                pred = scene_sums(_predict(model, _take(X, ev)), groups[ev], te, tile_cap(Y[tr]))
                true = scene_sums(Y[ev], groups[ev], te)
                errs.append(_col_rmse(pred, true))
            scores.append(float(np.mean(errs)))
        i = int(np.argmin(scores))
        best, best_score = grid[i], scores[i]
    model = build_regressor(spec, best, seed, fold_stage).fit(X, Y)
    return model, best, best_score


def _predict(model, X) -> np.ndarray:
    """``model.predict`` without the overflow warnings of a log link (capped afterwards)."""
    with np.errstate(over="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            return np.asarray(model.predict(X), dtype=np.float64)


def _take(X, mask):
    if isinstance(X, (list, tuple)):
        return [x for x, m in zip(X, mask) if m]
    return X[mask]


# --------------------------------------------------------------------------- tile features

@dataclass
class Variant:
    """One tiling and colour setting of the regression counters (one table row each)."""

    tile: int
    normalize: str = "none"
    jitter: float = 0.0
    copies: int = 1
    target: str = "points"
    sigma: float = 4.0

    def label(self) -> str:
        parts = [f"tile {self.tile}"]
        if self.target == "density":
            parts.append(f"density σ={self.sigma:g}")
        parts.append(self.normalize if self.normalize != "none" else "no normalisation")
        parts.append(f"jitter {self.jitter:g}" if self.jitter else "no jitter")
        return ", ".join(parts)


def _feature_identity(ctx, label: str) -> str | None:
    """Cache identity of a run feature (extractor key + preparation), when the context has it."""
    feats = getattr(ctx, "features", None)
    f = feats.get(label) if isinstance(feats, dict) else None
    if not f or "stage" not in f or not hasattr(f["stage"], "cache_key"):
        return None
    prep = f.get("prepare")
    return f"{f['stage'].cache_key()}|{prep.key() if prep is not None else ''}"


def tile_features(ctx, label: str, tiles: list, identity: str, batch: int = 256):
    """Representation of ``tiles`` by run feature ``label``, through ``ctx.cache`` when present.

    ``identity`` names the tiles' content (scene hash, tiling, colour); with the
    extractor's own key it makes the cache key, so the same tiles are never extracted
    twice. Without a cache (or a feature identity) the tiles are extracted directly.
    """
    cache = getattr(ctx, "cache", None)
    fid = _feature_identity(ctx, label)
    use_cache = cache is not None and getattr(cache, "enabled", False) and fid is not None
    key = None
    if use_cache:
        from ..cache import make_key

        key = make_key(hashlib.blake2b(identity.encode(), digest_size=16).hexdigest(), fid,
                       "counting-tiles")
        hit = cache.get(key)
        if hit is not None:
            return hit[0]
    parts = [ctx.extract(label, tiles[i:i + batch]) for i in range(0, len(tiles), batch)]
    from .windows import _concat

    X = _concat(parts) if len(parts) > 1 else parts[0]
    if use_cache and isinstance(X, np.ndarray) and X.dtype != object:
        cache.put(key, np.asarray(X), {"label": label, "what": "counting tiles", "n": len(tiles)})
    return X


class TileBank:
    """Tiles, targets and features of the scenes of one split, one variant at a time.

    ``scenes[sid] = {"key", "points_xy", "labels"}``; ``image(sid)`` reads a scene.
    Jittered copies (``variant.jitter > 0``) are made for training scenes only, from
    the whole scene (one colour change per photo, as a new flight would bring).
    """

    def __init__(self, ctx, scenes: Mapping, image, n_classes: int, seed: int = 0):
        self.ctx, self.scenes, self.image, self.n_classes, self.seed = ctx, scenes, image, n_classes, seed

    def build(self, variant: Variant, feature: str, scene_ids: Sequence[str], colour: SceneColour,
              with_copies: bool):
        """``(X, Y, scene_of_tile, original, quadrant)`` of the scenes' tiles for ``feature``;
        ``quadrant`` names the scene quarter of each tile (``<scene>#<0..3>``)."""
        Xs, Ys, groups, orig, quads = [], [], [], [], []
        for sid in scene_ids:
            info = self.scenes[sid]
            copies = [0] + (list(range(1, int(variant.copies) + 1)) if with_copies and variant.jitter else [])
            for k in copies:
                img = self.image(sid)
                if k:
                    rng = np.random.default_rng([int(self.seed), k, int(info["key"][:8], 16)])
                    img = colour_jitter(img, rng, float(variant.jitter))
                img = colour(img)
                origins, tiles = scene_tiles(img, int(variant.tile))
                ident = json.dumps([info["key"], variant.tile, colour.key(), k, variant.jitter if k else 0,
                                    self.seed if k else 0])
                Xs.append(tile_features(self.ctx, feature, tiles, ident))
                h, w = img.shape[:2]
                Ys.append(tile_targets(info["points_xy"], info["labels"], self.n_classes, h, w,
                                       int(variant.tile), variant.target, variant.sigma))
                groups += [sid] * len(tiles)
                orig += [k == 0] * len(tiles)
                h, w = img.shape[:2]
                quads += [f"{sid}#{2 * int(2 * y >= h) + int(2 * x >= w)}" for x, y in origins]
        from .windows import _concat

        return (_concat(Xs), np.concatenate(Ys), np.asarray(groups, dtype=object), np.asarray(orig),
                np.asarray(quads, dtype=object))


def count_regression_split(ctx, bank: TileBank, features: Sequence[str], specs: Sequence[Mapping],
                           variants: Sequence[Variant], split_id, train_scenes, test_scenes,
                           truth, animal: Sequence[str], seed: int, inner_splits: int = 3,
                           on_fail=None, on_done=None, done: set | None = None
                           ) -> tuple[list[dict], list[dict]]:
    """Counts of the held-out scenes by every (feature, regressor, variant) on one split.

    Returns ``(count rows, model rows)``; a failing (feature, regressor, variant) is
    passed to ``on_fail(feature, label, variant, exc)`` and skipped, ``on_done()`` is
    called after each cell (progress). ``done`` holds the ``(feature, regressor label,
    variant label)`` already counted on this split (skipped; the new ones are added).
    """
    rows, models = [], []
    done = set() if done is None else done
    for variant in variants:
        colour = SceneColour(variant.normalize)
        if variant.normalize == "histmatch":
            colour.fit([bank.image(s) for s in train_scenes])
        else:
            colour.fit([])
        for feature in features:
            todo = [sp for sp in specs if (feature, sp["label"], variant.label()) not in done]
            if not todo:
                for _ in specs:
                    if on_done:
                        on_done()
                continue
            try:
                Xtr, Ytr, gtr, otr, qtr = bank.build(variant, feature, train_scenes, colour, True)
                Xte, _, gte, _, _ = bank.build(variant, feature, test_scenes, colour, False)
                # inner folds by scene; with a single training scene, by its quarters
                inner_groups = gtr if len(train_scenes) >= 2 else qtr
                fold_stage = _fold_stage(ctx, feature)
            except Exception as exc:  # a broken feature fails its cells, not the run
                for spec in specs:
                    if on_fail and spec in todo:
                        on_fail(feature, spec["label"], variant, exc)
                    if on_done:
                        on_done()
                continue
            for spec in specs:
                if spec not in todo:
                    if on_done:
                        on_done()
                    continue
                done.add((feature, spec["label"], variant.label()))
                t0 = time.perf_counter()
                try:
                    model, best, inner = fit_count_regressor(Xtr, Ytr, inner_groups, otr, spec, seed,
                                                             fold_stage, inner_splits)
                    pred = scene_sums(_predict(model, Xte), gte, test_scenes, tile_cap(Ytr))
                except Exception as exc:  # noqa: BLE001
                    if on_fail:
                        on_fail(feature, spec["label"], variant, exc)
                    if on_done:
                        on_done()
                    continue
                for i, sid in enumerate(test_scenes):
                    for c, cls in enumerate(animal):
                        rows.append(dict(image=sid, **{"class": cls}, true=int(truth.at[sid, cls]),
                                         predicted=float(pred[i, c]), feature=feature,
                                         classifier=spec["label"], split=split_id, method="regression",
                                         threshold=None, variant=variant.label()))
                models.append(dict(method="regression", feature=feature, classifier=spec["label"],
                                   variant=variant.label(), split=split_id,
                                   params=json.dumps(best, default=str), inner_rmse=inner,
                                   n_train_tiles=int(len(Ytr)), seconds=time.perf_counter() - t0))
                log.info("counting: regression %s x %s (%s) split %s: %s, inner RMSE %.3f",
                         feature, spec["label"], variant.label(), split_id, best or "defaults", inner)
                if on_done:
                    on_done()
    return rows, models


def _fold_stage(ctx, feature: str):
    feats = getattr(ctx, "features", None)
    f = feats.get(feature) if isinstance(feats, dict) else None
    return f.get("fold_stage") if f else None

"""Run-time analysis artefacts that need the features, saved so reports never do.

:func:`run_analysis` is called by the engine after the cells have finished, while
the per-image representations are still in memory. It writes, under
``results/<run-id>/analysis/``:

* ``tsne.npz`` - a 2-D t-SNE embedding of each feature space (standardised, PCA to
  50 dimensions first) on a deterministic, class-stratified subsample of at most
  ``MAX_TSNE_POINTS`` images. Features with a fold stage (e.g. a SIFT codebook) are
  visualised after fitting that stage on the plotted images themselves - only for
  this picture; the manifest says so and the report repeats it.
* ``learning_curves.csv`` - the best row of each feature family (by mean macro-F1)
  refitted on stratified, nested fractions of the training folds of the first
  ``min(n_splits, 3)`` splits and scored on the full test fold.
* ``gallery.json`` + ``gallery/img_*.png`` - ``report.gallery`` test images
  (deterministic, stratified by class) with the true label and the out-of-fold
  prediction and confidence of each family's best row (from ``predictions/``).
* ``retrieval.json`` - for a few gallery images, the 5 nearest training images (of
  the split in which the query was a test image) in the best hand-crafted and the
  best deep feature space (standardised on that training fold, cosine distance).
* ``explain/`` - "what the features see" (:mod:`bench.explain`, ``report.explain``):
  per-image cards of hand-crafted maps and CNN class maps, first-convolution filters,
  permutation importances of named features; bounded by :data:`bench.explain.stage.BUDGET_S`.
* ``misclassified.json`` - the best row's most confident mistakes with thumbnails
  (:mod:`bench.mistakes`); ``learning_curves_cnn.csv`` - the best end-to-end CNN row
  retrained on the same nested subsets (:mod:`bench.learning_cnn`).
* ``manifest.json`` - what was done, skipped (with the reason) or failed, and timings.

Every part can be switched off in the config (``report.tsne``, ``report.learning_curves``,
``report.gallery: 0``, ``report.retrieval``, ``report.explain``), is skipped with a logged reason where it
does not apply, and never raises: a failing part is logged and recorded in the manifest.
Work is bounded by ``report.analysis_budget_s`` (default :data:`DEFAULT_BUDGET_S`):
t-SNE and learning-curve units that would start after the deadline are skipped.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from . import learning_cnn, mistakes
from . import records as rec
from . import runfolder, schema
from .aggregate import best_by_family, csv_safe, feature_display, summarize

log = logging.getLogger(__name__)

MAX_TSNE_POINTS = 2000
TSNE_PCA_DIMS = 50
LEARNING_FRACTIONS = schema.ANALYSIS["learning_fractions"]
LEARNING_MAX_SPLITS = 3
DEFAULT_GALLERY = schema.SCHEMA["report"]["gallery"].default
DEFAULT_RETRIEVAL_QUERIES = schema.ANALYSIS["retrieval_queries"]
RETRIEVAL_K = 5
THUMB_PX = 96
EXPLAIN_PICTURE_PX = 160
DEFAULT_BUDGET_S = float(schema.SCHEMA["report"]["analysis_budget_s"].default)
FROZEN_FAMILIES = ("handcrafted", "deep", "hybrid")
ARTEFACTS = ("tsne.npz", "learning_curves.csv", "gallery.json", "retrieval.json", "manifest.json",
             "misclassified.json", "learning_curves_cnn.csv")
ARTEFACT_OF = {"tsne": "tsne.npz", "learning_curves": "learning_curves.csv", "gallery": "gallery.json",
               "retrieval": "retrieval.json", "misclassified": "misclassified.json",
               "learning_curves_cnn": "learning_curves_cnn.csv"}  # part -> its file in analysis/


# --------------------------------------------------------------------------- helpers
def _write_json(path: Path, data) -> None:
    runfolder.write_json(path, data, default=_json_default)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _fnum(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def stratified_subsample(y: np.ndarray, n_max: int, seed: int) -> np.ndarray:
    """At most ``n_max`` sorted indices of ``y``, each class kept in proportion (>= 1 each)."""
    y = np.asarray(y)
    if len(y) <= n_max:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    take = np.maximum(1, np.floor(counts * n_max / len(y)).astype(int))
    out = []
    for c, t in zip(classes, take):
        idx = np.flatnonzero(y == c)
        out.append(rng.permutation(idx)[:t])
    return np.sort(np.concatenate(out))[: max(n_max, len(classes))]


def nested_fraction(y_train: np.ndarray, fraction: float, perms: dict) -> np.ndarray:
    """Positions of a stratified ``fraction`` of a training fold (>= 1 per class).

    ``perms`` holds one fixed permutation per class, so smaller fractions are subsets
    of larger ones and the learning curve measures data, not resampling noise.
    """
    out = []
    for c, perm in perms.items():
        n = len(perm) if fraction >= 1.0 else max(1, int(round(fraction * len(perm))))
        out.append(perm[:n])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def thumbnail(img: np.ndarray, modality: str = "rgb", size: int = THUMB_PX) -> np.ndarray:
    """A small uint8 RGB picture of any dataset image (depth maps through a colormap)."""
    from .imaging import resize, to_rgb_u8
    img = np.asarray(img)
    if modality == "depth" or (np.issubdtype(img.dtype, np.floating) and img.ndim == 2
                               and np.nanmax(np.abs(img)) > 1.0):
        import matplotlib
        x = img.astype(np.float64)
        if x.ndim == 3:
            x = x[..., 0]
        valid = np.isfinite(x) & (x != 0)
        rgb = np.zeros(x.shape + (3,), dtype=np.uint8)
        if valid.any():
            lo, hi = np.percentile(x[valid], [1, 99])
            t = np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
            colored = (matplotlib.colormaps["viridis"](t)[..., :3] * 255).round().astype(np.uint8)
            rgb[valid] = colored[valid]
        out = rgb
    else:
        out = to_rgb_u8(img)
    h, w = out.shape[:2]
    scale = size / max(h, w)
    if scale < 1.0:
        out = resize(out, (max(1, round(h * scale)), max(1, round(w * scale))), "area")
    return np.ascontiguousarray(out)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image
    with runfolder.atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", optimize=True)


def _nearest(train: np.ndarray, query: np.ndarray, k: int):
    """(indices, distances) of the k nearest training rows (cosine); bench.retrieval if present."""
    try:
        from .retrieval import nearest_neighbours  # type: ignore[attr-defined]
    except ImportError:
        nearest_neighbours = None
    if nearest_neighbours is not None:
        idx, dist = nearest_neighbours(train, query, k=k, metric="cosine")
        return np.asarray(idx), np.asarray(dist)
    from sklearn.neighbors import NearestNeighbors
    nn = NearestNeighbors(n_neighbors=min(k, len(train)), metric="cosine", algorithm="brute").fit(train)
    dist, idx = nn.kneighbors(query)
    return idx, dist


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.end = time.perf_counter() + self.seconds

    def passed(self) -> bool:
        return time.perf_counter() > self.end


# --------------------------------------------------------------------------- the runner
class _Analysis:
    def __init__(self, ctx):
        self.ctx = ctx
        self.run_dir = Path(ctx.run_dir)
        self.out = self.run_dir / "analysis"
        self.cfg = {**schema.defaults("report"), **((ctx.config or {}).get("report") or {})}
        self.seed = int(getattr(ctx, "seed", 0) or 0)
        self.ds = ctx.dataset
        self.y = np.asarray(self.ds.labels)
        self.class_names = [str(c) for c in self.ds.class_names]
        self.modality = getattr(self.ds, "modality", "rgb")
        self.splits = list(ctx.splits)
        self.records = [r for r in ctx.records()
                        if r.get("dataset") in (None, getattr(self.ds, "name", None))]
        self.summary = summarize(self.records)
        self.best = best_by_family(self.summary)
        self.manifest: dict = {"seed": self.seed, "parts": {}, "notes": []}
        self.deadline = _Deadline(float(self.cfg["analysis_budget_s"]))
        self._thumbs: dict[int, str] = {}
        self._per_image: dict[str, object] = {}

    # -- small utilities
    def part(self, name: str, status: str, **info) -> None:
        self.manifest["parts"][name] = {"status": status, **info}
        if status == "skipped":
            log.info("analysis %s skipped: %s", name, info.get("reason"))

    def available(self) -> list[str]:
        return list(getattr(self.ctx, "feature_labels", []) or [])

    def features(self, label: str):
        if label not in self._per_image:
            self._per_image[label] = self.ctx.per_image(label)
        return self._per_image[label]

    def classifier_for(self, feature: str) -> str | None:
        for r in self.records:
            if r.get("feature") == feature and r.get("status") == "ok":
                return r.get("classifier")
        for r in self.records:
            if r.get("feature") == feature:
                return r.get("classifier")
        return None

    def row_meta(self, feature: str) -> dict:
        for r in self.records:
            if r.get("feature") == feature:
                return {"family": r.get("family"), "weights": r.get("weights")}
        feats = getattr(self.ctx, "features", {}) or {}
        return {"family": (feats.get(feature) or {}).get("family"), "weights": None}

    def main_splits(self):
        """Splits of the first repeat (every image is a test image at most once)."""
        first = min((getattr(s, "repeat", 0) for s in self.splits), default=0)
        return [s for s in self.splits if getattr(s, "repeat", 0) == first]

    def thumb(self, index: int) -> str:
        """Relative path of image ``index``'s thumbnail (written once)."""
        if index not in self._thumbs:
            d = self.out / "gallery"
            d.mkdir(parents=True, exist_ok=True)
            name = f"img_{int(index):06d}.png"
            path = d / name
            if not path.exists():
                _save_png(thumbnail(self.ds.load(int(index)), self.modality), path)
            self._thumbs[index] = f"gallery/{name}"
        return self._thumbs[index]

    def space(self, feature: str, fit_idx: np.ndarray):
        """``(transform, fold_stage_fitted)``: ``transform(indices)`` gives dense float64 rows of
        ``feature``; when the feature has a fold stage, the pipeline's pre-classifier steps
        are fitted on ``fit_idx`` first."""
        X = self.features(feature)
        if getattr(X, "dtype", None) != object:
            return (lambda idx: np.asarray(X[np.asarray(idx)], dtype=np.float64)), False
        pipe = self.ctx.make_pipeline(feature, self.classifier_for(feature))
        pre = pipe[:-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pre.fit(X[fit_idx], self.y[fit_idx])

        def transform(idx):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(pre.transform(X[np.asarray(idx)]), dtype=np.float64)
        return transform, True

    # -- (c) gallery
    def gallery(self) -> list[dict]:
        n = int(self.cfg["gallery"] or 0)
        if n <= 0:
            self.part("gallery", "skipped", reason="report.gallery is 0")
            return []
        if not self.splits:
            self.part("gallery", "skipped", reason="no splits")
            return []
        t0 = time.perf_counter()
        split_of: dict[int, int] = {}
        for s in self.main_splits():
            for i in np.asarray(s.test):
                split_of.setdefault(int(i), int(s.index))
        chosen = select_gallery(self.y, sorted(split_of), n, self.seed)
        rows = [(fam, row) for fam, row in self.best.items()]
        preds = {}
        for fam, row in rows:
            preds[fam] = _load_row_predictions(self.run_dir, self.records, row["feature"], row["classifier"])
        items = []
        for i in chosen:
            s = split_of[i]
            item = {"index": int(i), "id": str(self.ds.ids[i]) if self.ds.ids is not None else str(i),
                    "split": s, "true": int(self.y[i]), "true_name": self.class_names[int(self.y[i])],
                    "thumb": self.thumb(i), "predictions": []}
            for fam, row in rows:
                p = preds[fam].get(s)
                entry = {"family": fam, "feature": row["feature"], "classifier": row["classifier"],
                         "weights": row["weights"], "label": feature_display(row["feature"], row["weights"])}
                if p is None or i not in p["pos"]:
                    entry.update(pred=None, pred_name=None, confidence=None, correct=None)
                else:
                    k = p["pos"][i]
                    pred = int(p["y_pred"][k])
                    conf = None
                    if p.get("proba") is not None and pred < p["proba"].shape[1]:
                        conf = _fnum(p["proba"][k, pred])
                    entry.update(pred=pred, pred_name=self.class_names[pred] if pred < len(self.class_names)
                                 else str(pred), confidence=conf, correct=bool(pred == int(self.y[i])))
                item["predictions"].append(entry)
            items.append(item)
        data = {"n": len(items), "modality": self.modality, "class_names": self.class_names,
                "rows": [{"family": fam, "feature": row["feature"], "classifier": row["classifier"],
                          "weights": row["weights"], "label": feature_display(row["feature"], row["weights"]),
                          "macro_f1": _fnum(row["macro_f1_mean"])} for fam, row in rows],
                "items": items}
        _write_json(self.out / "gallery.json", data)
        self.part("gallery", "done", n=len(items), seconds=round(time.perf_counter() - t0, 2))
        return items

    # -- (d) retrieval
    def retrieval(self, items: list[dict]) -> None:
        want = self.cfg["retrieval"]
        n_q = DEFAULT_RETRIEVAL_QUERIES if want is True else int(want or 0)
        if n_q <= 0:
            self.part("retrieval", "skipped", reason="report.retrieval is off")
            return
        if not items:
            self.part("retrieval", "skipped", reason="no gallery images to use as queries")
            return
        avail = set(self.available())
        spaces = [(fam, self.best[fam]) for fam in ("handcrafted", "deep")
                  if fam in self.best and self.best[fam]["feature"] in avail]
        if not spaces:
            if (self.out / "retrieval.json").exists():  # a resumed, finished run: still valid
                self.part("retrieval", "kept", reason="the feature spaces are not in memory in this "
                          "session (every cell was finished); retrieval.json of the session that "
                          "computed them is kept")
                return
            self.part("retrieval", "skipped",
                      reason="no hand-crafted or deep feature space with per-image features in memory")
            return
        t0 = time.perf_counter()
        by_split = {int(s.index): s for s in self.splits}
        queries = _round_robin(items, n_q)
        out_q = []
        cache: dict = {}
        for item in queries:
            s = by_split[item["split"]]
            train = np.asarray(s.train)
            q = {"index": item["index"], "id": item["id"], "true": item["true"],
                 "true_name": item["true_name"], "thumb": item["thumb"], "split": item["split"],
                 "spaces": []}
            for fam, row in spaces:
                feat = row["feature"]
                key = (feat, int(s.index))
                try:
                    if key not in cache:
                        from sklearn.preprocessing import StandardScaler
                        transform, _ = self.space(feat, train)
                        scaler = StandardScaler().fit(transform(train))
                        cache[key] = (transform, scaler, scaler.transform(transform(train)))
                    transform, scaler, Ztr = cache[key]
                    Zq = scaler.transform(transform(np.array([item["index"]])))
                    idx, dist = _nearest(Ztr, Zq, RETRIEVAL_K)
                    neigh = []
                    for j, d in zip(np.asarray(idx)[0], np.asarray(dist)[0]):
                        gi = int(train[int(j)])
                        lab = int(self.y[gi])
                        neigh.append({"index": gi, "true": lab, "true_name": self.class_names[lab],
                                      "distance": _fnum(d), "same_class": lab == item["true"],
                                      "thumb": self.thumb(gi)})
                    q["spaces"].append({"family": fam, "feature": feat, "weights": row["weights"],
                                        "label": feature_display(feat, row["weights"]), "neighbours": neigh})
                except Exception as exc:  # noqa: BLE001 - one space failing must not lose the others
                    log.warning("retrieval in %s failed: %s: %s", feat, type(exc).__name__, exc)
                    q["spaces"].append({"family": fam, "feature": feat, "weights": row["weights"],
                                        "label": feature_display(feat, row["weights"]), "neighbours": [],
                                        "error": f"{type(exc).__name__}: {exc}"})
            out_q.append(q)
        _write_json(self.out / "retrieval.json",
                    {"k": RETRIEVAL_K, "metric": "cosine on standardised features (training-fold statistics)",
                     "queries": out_q})
        self.part("retrieval", "done", n=len(out_q), seconds=round(time.perf_counter() - t0, 2))

    # -- (e) what the features see
    def explain(self, items: list[dict]) -> None:
        if not self.cfg["explain"]:
            self.part("explain", "skipped", reason="report.explain is false")
            return
        if not self.splits:
            self.part("explain", "skipped", reason="no splits")
            return
        from .explain.stage import run_explain
        preds = {fam: _load_row_predictions(self.run_dir, self.records, row["feature"], row["classifier"])
                 for fam, row in self.best.items()}
        info = run_explain(self.ctx, self.out, summary=self.summary, records=self.records, best=self.best,
                           items=items, predictions=preds, seed=self.seed,
                           picture=lambda img: thumbnail(img, self.modality, EXPLAIN_PICTURE_PX))
        status = info.pop("status")
        self.part("explain", status, **info)

    # -- (a) t-SNE
    def tsne(self) -> None:
        if not self.cfg["tsne"]:
            self.part("tsne", "skipped", reason="report.tsne is false")
            return
        labels = self.available()
        if not labels:
            self.part("tsne", "skipped", reason="no per-image feature space in memory "
                      "(end-to-end CNN rows only, or all extractions failed)")
            return
        if len(self.y) < 10:
            self.part("tsne", "skipped", reason=f"only {len(self.y)} images")
            return
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
        from sklearn.preprocessing import StandardScaler
        t0 = time.perf_counter()
        idx = stratified_subsample(self.y, MAX_TSNE_POINTS, self.seed)
        n = len(idx)
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        embs, info = [], []
        for label in labels:
            if self.deadline.passed():
                info.append({"feature": label, "status": "skipped",
                             "reason": f"analysis time budget ({self.deadline.seconds:.0f} s) reached"})
                continue
            t1 = time.perf_counter()
            meta = self.row_meta(label)
            try:
                transform, fold_fit = self.space(label, idx)
                Z = transform(idx)
                Z = np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0)
                Z = StandardScaler().fit_transform(Z)
                d = min(TSNE_PCA_DIMS, Z.shape[1], n - 1)
                if Z.shape[1] > d:
                    Z = PCA(n_components=d, random_state=self.seed).fit_transform(Z)
                emb = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                           random_state=self.seed).fit_transform(Z)
                embs.append(emb.astype(np.float32))
                info.append({"feature": label, "status": "done", "family": meta["family"],
                             "weights": meta["weights"], "label": feature_display(label, meta["weights"]),
                             "fold_stage_fit_on_plotted_images": bool(fold_fit),
                             "seconds": round(time.perf_counter() - t1, 2)})
            except Exception as exc:  # noqa: BLE001
                log.warning("t-SNE of %s failed: %s: %s", label, type(exc).__name__, exc)
                info.append({"feature": label, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        done = [i for i in info if i["status"] == "done"]
        if embs:
            with runfolder.atomic_path(self.out / "tsne.npz", suffix=".npz") as tmp:
                np.savez_compressed(tmp, index=idx.astype(np.int64), y=self.y[idx].astype(np.int64),
                                    features=np.array([i["feature"] for i in done], dtype=str),
                                    embedding=np.stack(embs))
        if any(i.get("fold_stage_fit_on_plotted_images") for i in done):
            self.manifest["notes"].append(
                "t-SNE of features with a fold stage (e.g. a codebook) fitted that stage on the plotted "
                "images themselves, for the visualisation only; scores never do this.")
        self.part("tsne", "done" if embs else "failed", points=n, perplexity=perplexity, features=info,
                  seconds=round(time.perf_counter() - t0, 2))

    # -- (b) learning curves
    def learning_curves(self) -> None:
        if not self.cfg["learning_curves"]:
            self.part("learning_curves", "skipped", reason="report.learning_curves is false")
            return
        avail = set(self.available())
        rows = [(fam, row) for fam, row in self.best.items() if fam in FROZEN_FAMILIES]
        missing = [row["feature"] for _, row in rows if row["feature"] not in avail]
        rows = [(fam, row) for fam, row in rows if row["feature"] in avail]
        if not rows:
            self.part("learning_curves", "skipped",
                      reason="no finished frozen-feature row with its features in memory")
            return
        if not self.splits:
            self.part("learning_curves", "skipped", reason="no splits")
            return
        import pandas as pd
        from .protocol import score  # the metric definitions of the records
        t0 = time.perf_counter()
        fractions = [float(f) for f in LEARNING_FRACTIONS]
        splits = self.main_splits()[:LEARNING_MAX_SPLITS]
        out = []
        stopped = False
        for s in splits:
            train, test = np.asarray(s.train), np.asarray(s.test)
            rng = np.random.default_rng([self.seed, int(s.index)])
            ytr = self.y[train]
            perms = {int(c): rng.permutation(np.flatnonzero(ytr == c)) for c in np.unique(ytr)}
            for fam, row in rows:
                X = self.features(row["feature"])
                for frac in fractions:
                    if self.deadline.passed():
                        stopped = True
                        break
                    sub = train[nested_fraction(ytr, frac, perms)]
                    r = {"dataset": row["dataset"], "family": fam, "feature": row["feature"],
                         "classifier": row["classifier"], "weights": row["weights"], "split": int(s.index),
                         "fraction": frac, "n_train": int(len(sub)), "accuracy": np.nan,
                         "balanced_accuracy": np.nan, "macro_f1": np.nan, "fit_s": np.nan,
                         "status": "ok", "error": ""}
                    try:
                        if len(np.unique(self.y[sub])) < 2:
                            raise ValueError("fewer than 2 classes in the subsample")
                        pipe = self.ctx.make_pipeline(row["feature"], row["classifier"])
                        t1 = time.perf_counter()
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            pipe.fit(X[sub], self.y[sub])
                            r["fit_s"] = time.perf_counter() - t1
                            pred = pipe.predict(X[test])
                        yt = self.y[test]
                        r.update(score(yt, pred))
                    except Exception as exc:  # noqa: BLE001 - e.g. too few samples for the classifier
                        r["status"], r["error"] = "failed", f"{type(exc).__name__}: {exc}"
                    out.append(r)
                if stopped:
                    break
            if stopped:
                break
        if stopped:
            msg = (f"learning curves stopped at the analysis time budget ({self.deadline.seconds:.0f} s, "
                   "report.analysis_budget_s); later splits/fractions are missing")
            log.warning(msg)
            self.manifest["notes"].append(msg)
        if out:
            df = pd.DataFrame(out)
            runfolder.write_text(self.out / "learning_curves.csv", csv_safe(df).to_csv(index=False))
        self.part("learning_curves", "done" if out else "skipped", rows=len(out), splits=len(splits),
                  fractions=fractions, stopped_by_budget=stopped, missing_features=missing,
                  note="refit with the classifier's configured parameters (no inner search)",
                  seconds=round(time.perf_counter() - t0, 2),
                  **({} if out else {"reason": "time budget reached before the first fit"}))


def _load_row_predictions(run_dir: Path, records: list[dict], feature: str, classifier: str) -> dict:
    """split -> {"pos": {image index: row}, "y_pred", "proba"} of a row's main-protocol cells."""
    out = {}
    for r in records:
        if (r.get("feature") == feature and r.get("classifier") == classifier and not r.get("variant")
                and r.get("status") == "ok"):
            cid = r.get("cell_id") or rec.cell_id(feature, classifier, r["split"])
            p = rec.load_predictions(run_dir, cid)
            if p is None:
                continue
            ti = np.asarray(p["test_index"])
            out[int(r["split"])] = {"pos": {int(i): k for k, i in enumerate(ti)}, "y_pred": p["y_pred"],
                                    "proba": p.get("proba")}
    return out


def _round_robin(items: list[dict], n: int) -> list[dict]:
    """First ``n`` items taking one per class in turn (gallery items are grouped by class)."""
    by_class: dict[int, list[dict]] = {}
    for it in items:
        by_class.setdefault(it["true"], []).append(it)
    out: list[dict] = []
    while len(out) < min(n, len(items)):
        for lst in by_class.values():
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


def select_gallery(y: np.ndarray, candidates: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` candidate images, round-robin over classes (class order and members shuffled
    with ``seed``), so every class is shown before any class repeats."""
    y = np.asarray(y)
    cand = np.asarray(sorted(int(c) for c in candidates), dtype=np.int64)
    if n <= 0 or cand.size == 0:
        return []
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y[cand]))
    pools = {int(c): list(rng.permutation(cand[y[cand] == c])) for c in classes}
    out: list[int] = []
    while len(out) < min(n, cand.size):
        for c in classes:
            if pools[int(c)] and len(out) < n:
                out.append(int(pools[int(c)].pop(0)))
    # group the picks by class for display
    return sorted(out, key=lambda i: (int(y[i]), i))


def _guarded(a: _Analysis, name: str, fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - analysis never breaks a finished run
        log.error("analysis %s failed: %s: %s", name, type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        a.part(name, "failed", error=f"{type(exc).__name__}: {exc}")
        return None


def _remove_stale(a: _Analysis) -> None:
    """Each artefact is replaced in place when its part is done again (a kill leaves the
    old one); a part switched off, skipped or failed this time must not leave an old
    result behind -- except one ``kept`` on purpose (see :meth:`_Analysis.retrieval`)."""
    for part, name in ARTEFACT_OF.items():
        status = (a.manifest["parts"].get(part) or {}).get("status")
        if status not in ("done", "kept"):
            (a.out / name).unlink(missing_ok=True)


def run_analysis(ctx) -> dict:
    """Compute and save every analysis artefact of a run (see module docstring).

    Returns the manifest (also written to ``analysis/manifest.json``).
    """
    a = _Analysis(ctx)
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(a.out / "explain", ignore_errors=True)
    t0 = time.perf_counter()
    items = _guarded(a, "gallery", a.gallery) or []
    _guarded(a, "retrieval", lambda: a.retrieval(items))
    # learning curves first: they test a claim (hand-crafted features need less data);
    # t-SNE is illustration and takes what is left of the budget
    _guarded(a, "learning_curves", a.learning_curves)
    # issue 12's report sections: misclassified examples of the best row, CNN learning curve
    _guarded(a, "misclassified", lambda: mistakes.run_part(a))
    _guarded(a, "learning_curves_cnn", lambda: learning_cnn.run_part(a, nested_fraction))
    _guarded(a, "tsne", a.tsne)
    _guarded(a, "explain", lambda: a.explain(items))
    a.manifest["seconds"] = round(time.perf_counter() - t0, 2)
    a.manifest["budget_s"] = a.deadline.seconds
    _remove_stale(a)
    _write_json(a.out / "manifest.json", a.manifest)
    log.info("analysis finished in %.1f s", a.manifest["seconds"])
    return a.manifest

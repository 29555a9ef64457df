"""The explain stage of a run: pictures and importances saved under ``analysis/explain/``.

:func:`run_explain` is called once by :func:`bench.analysis.run_analysis` (switch:
``report.explain``) while the run's per-image features, extractors and splits are in
memory. It chooses the images, computes every map with the rows' own extractors and
fitted per-fold pipelines, and writes::

    analysis/explain/explain.json      what was drawn, with which method and parameters
    analysis/explain/cards/img_*.png   one card per image: hand-crafted maps, CNN maps
    analysis/explain/filters/*.png     first-convolution filters of each network

The report's "What the features see" section is rebuilt from these files alone.

Images: test images of one split (the first split every end-to-end recipe trained
on): :data:`PER_CLASS` per class (at most :data:`MAX_GALLERY`; the report's gallery
images first), plus up to :data:`MISTAKES_PER_FAMILY` images the best row of each
family got wrong (its most confident mistakes). Every map of an image comes from the
models of that split, fitted on its training fold as the scores were: one codebook, one
classifier per row and one trained network per recipe serve all the images, which
keeps the stage cheap.

Bounded in time: no new unit of work (an image's occlusion, a fold's permutation
importance, a network) starts after :data:`BUDGET_S` seconds; what was skipped is listed.
Nothing here raises: a failing part is logged and recorded, the others go on.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PER_CLASS = 2
MAX_GALLERY = 8
MISTAKES_PER_FAMILY = 1
BUDGET_S = 40.0
N_REPEATS = 5
MAX_LBP_MAPS = 2
FAMILY_SHORT = {"handcrafted": "hand-crafted", "deep": "deep", "hybrid": "hybrid", "cnn": "CNN"}


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(text))[:80]


class _Explain:
    """State of one explain stage (see the module docstring)."""

    def __init__(self, ctx, out_dir: Path, *, summary, records, best, items, predictions, picture,
                 seed: int, budget_s: float):
        self.ctx = ctx
        self.out = Path(out_dir)
        self.summary = summary
        self.records = records
        self.best = best
        self.items = items or []
        self.preds = predictions or {}
        self.picture = picture
        self.seed = int(seed)
        self.ds = ctx.dataset
        self.y = np.asarray(self.ds.labels)
        self.names = [str(c) for c in self.ds.class_names]
        self.features = dict(getattr(ctx, "features", {}) or {})
        self.in_memory = set(getattr(ctx, "feature_labels", []) or [])
        self.splits = {int(s.index): s for s in ctx.splits}
        self.t0 = time.perf_counter()
        self.end = self.t0 + float(budget_s)
        self.budget_s = float(budget_s)
        self.skipped: list[dict] = []
        self.notes: list[str] = []
        self.images: list[dict] = []
        self.tiles: dict[int, dict[str, list]] = {}
        self._pipes: dict = {}
        self.filters: list[dict] = []
        self.checks: dict = {}

    # -- small utilities
    def late(self) -> bool:
        return time.perf_counter() > self.end

    def skip(self, part: str, reason: str, **info) -> None:
        """Record a unit not done; units skipped for the same reason are grouped (one log line)."""
        for entry in self.skipped:
            if entry["part"] == part and entry["reason"] == reason:
                entry["count"] += 1
                if info:
                    entry["items"].append(info)
                return
        self.skipped.append({"part": part, "reason": reason, "count": 1, "items": [info] if info else []})
        log.info("explain %s skipped: %s", part, reason)

    def guarded(self, part: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - one failing part must not lose the others
            log.warning("explain %s failed: %s: %s", part, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            self.skip(part, f"failed: {type(exc).__name__}: {exc}")
            return None

    def add_tile(self, index: int, row: str, tile, caption: str, panel: dict) -> None:
        self.tiles.setdefault(index, {}).setdefault(row, []).append((tile, caption))
        img = next(im for im in self.images if im["index"] == index)
        img["panels"].append({"row": row, **panel})

    def of_family(self, family: str) -> list[str]:
        return [lab for lab, f in self.features.items() if f.get("family") == family]

    def best_classifier(self, feature: str) -> str | None:
        df = self.summary
        if df is None or not len(df):
            return None
        sub = df[(df["feature"] == feature) & (df["variant"] == "") & df["macro_f1_mean"].notna()]
        if not len(sub):
            return None
        return str(sub.sort_values("macro_f1_mean", ascending=False).iloc[0]["classifier"])

    def score_of(self, feature: str, classifier: str) -> float | None:
        df = self.summary
        sub = df[(df["feature"] == feature) & (df["classifier"] == classifier) & (df["variant"] == "")]
        v = sub["macro_f1_mean"].iloc[0] if len(sub) else None
        return None if v is None or not np.isfinite(v) else float(v)

    def pipeline(self, feature: str, classifier: str, split: int):
        """The row's per-fold pipeline with the classifier settings of that split's cell
        (an inner search's best parameters), unfitted."""
        pipe = self.ctx.make_pipeline(feature, classifier)
        for r in self.records:
            if r.get("feature") == feature and r.get("classifier") == classifier \
                    and int(r.get("split", -1)) == split and not r.get("variant"):
                try:
                    best = (json.loads(r.get("params") or "{}") or {}).get("best_params") or {}
                except (TypeError, ValueError):
                    best = {}
                if best:
                    pipe.set_params(**{f"clf__{k}": v for k, v in best.items()})
                break
        return pipe

    def fitted(self, feature: str, classifier: str | None, split: int, upto: int | None = None):
        """The row's pipeline (or its first ``upto`` steps) fitted on ``split``'s training fold
        (cached)."""
        key = (feature, classifier, split, upto)
        if key not in self._pipes:
            X = self.ctx.per_image(feature)
            train = np.asarray(self.splits[split].train)
            if classifier is None:
                pipe = self.ctx.make_pipeline(feature, self.ctx.classifier_labels[0])
            else:
                pipe = self.pipeline(feature, classifier, split)
            if upto is not None:
                pipe = pipe[:upto]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe.fit(X[train], self.y[train])
            self._pipes[key] = pipe
        return self._pipes[key]

    def prepared(self, feature: str, index: int):
        return self.features[feature]["prepare"](self.ds.load(int(index)))

    # -- which images
    def explain_split(self) -> int:
        """The split whose test images are explained: the first split of the first repeat
        that every end-to-end recipe trained on (its ``folds``), else the first split."""
        first = min((int(getattr(s, "repeat", 0)) for s in self.splits.values()), default=0)
        main = sorted(i for i, s in self.splits.items() if int(getattr(s, "repeat", 0)) == first)
        for i in main:
            if all(f.get("folds") is None or i in f["folds"]
                   for f in (self.ctx.config or {}).get("finetune") or []):
                return i
        return main[0]

    def prediction(self, family: str, index: int, split: int) -> dict:
        row = self.best[family]
        entry = {"family": family, "feature": str(row["feature"]), "classifier": str(row["classifier"]),
                 "weights": row.get("weights"), "pred": None, "pred_name": None, "confidence": None,
                 "correct": None}
        p = (self.preds.get(family) or {}).get(split)
        if p is None or index not in p["pos"]:
            return entry
        k = p["pos"][index]
        pred = int(p["y_pred"][k])
        conf = None
        if p.get("proba") is not None and pred < p["proba"].shape[1]:
            conf = float(p["proba"][k, pred])
        entry.update(pred=pred, pred_name=self.names[pred] if pred < len(self.names) else str(pred),
                     confidence=conf, correct=bool(pred == int(self.y[index])))
        return entry

    def select(self) -> None:
        """Test images of one split (:meth:`explain_split`): gallery images first, up to
        :data:`PER_CLASS` per class, then each family's most confident mistakes."""
        split = self.explain_split()
        test = [int(i) for i in np.asarray(self.splits[split].test)]
        split_of = {i: split for i in test}
        self.split = split
        chosen: list[tuple[int, str]] = []
        per_class = max(1, min(PER_CLASS, MAX_GALLERY // max(1, len(self.names))))
        counts: dict[int, int] = {}
        rng = np.random.default_rng([self.seed, split])
        # gallery images of this split first, then its other test images in a seeded order
        order = [int(it["index"]) for it in self.items if int(it["index"]) in split_of]
        order += [i for i in rng.permutation(test).tolist() if i not in order]
        for i in order:
            c = int(self.y[i])
            if counts.get(c, 0) < per_class and len(chosen) < MAX_GALLERY:
                counts[c] = counts.get(c, 0) + 1
                chosen.append((i, "gallery" if any(int(it["index"]) == i for it in self.items)
                               else "test image"))
        chosen.sort(key=lambda t: (int(self.y[t[0]]), t[0]))
        misled: dict[int, list[str]] = {}
        for fam in self.best:
            p = (self.preds.get(fam) or {}).get(split)
            wrong = []
            for i, k in (p["pos"].items() if p is not None else []):
                pred = int(p["y_pred"][k])
                if pred != int(self.y[i]):
                    conf = float(p["proba"][k, pred]) if p.get("proba") is not None else 0.0
                    wrong.append((-conf, int(i)))
                    misled.setdefault(int(i), []).append(fam)
            taken = 0
            for _, i in sorted(wrong):
                if taken >= MISTAKES_PER_FAMILY:
                    break
                if all(i != j for j, _ in chosen):
                    chosen.append((i, f"misclassified by the best {FAMILY_SHORT.get(fam, fam)} row"))
                    taken += 1
        for i, reason in chosen:
            s = split_of[i]
            self.images.append({
                "index": i, "id": str(self.ds.ids[i]) if self.ds.ids is not None else str(i), "split": s,
                "true": int(self.y[i]), "true_name": self.names[int(self.y[i])], "reason": reason,
                "misled": sorted(set(misled.get(i, [])), key=list(self.best).index),
                "predictions": [self.prediction(fam, i, s) for fam in self.best], "panels": []})

    # -- hand-crafted maps
    def handcrafted_maps(self) -> None:
        from ..features.hog import HOG
        from ..features.lbp import LBPHistogram
        from ..features.shape import ParcelShape
        from ..features.sift import SiftBoVW
        kinds = [("hog", HOG, self.hog_tiles), ("lbp", LBPHistogram, self.lbp_tiles),
                 ("sift", SiftBoVW, self.sift_tiles), ("shape", ParcelShape, self.shape_tiles)]
        for kind, cls, fn in kinds:
            labels = [lab for lab in self.of_family("handcrafted")
                      if isinstance(self.features[lab].get("extractor"), cls)]
            if not labels:
                continue
            if len(labels) > 1:
                self.notes.append(f"{kind} maps drawn for row {labels[0]!r} only (also: {', '.join(labels[1:])})")
            for im in self.images:
                self.guarded(f"{kind} map of image {im['index']}", fn, labels[0], im)

    def hog_tiles(self, label: str, im: dict) -> None:
        from .maps import hog_glyph
        ext = self.features[label]["extractor"]
        g = hog_glyph(self.prepared(label, im["index"]), ext)
        glyph = g["glyph"] / (g["glyph"].max() or 1.0)
        from .render import colorize
        p = g["params"]
        cap = (f"HOG glyph (skimage)\n{label}\n{p['orientations']} bins, "
               f"{p['pixels_per_cell'][0]}x{p['pixels_per_cell'][1]} px cells")
        self.add_tile(im["index"], "handcrafted", colorize(glyph ** 0.7, "magma", 0, 1), cap,
                      {"kind": "hog", "method": "HOG glyph: skimage.feature.hog(visualize=True) with the "
                       "row's parameters", "feature": label, "params": p,
                       "n_values": int(np.asarray(g["vector"]).size)})

    def lbp_tiles(self, label: str, im: dict) -> None:
        from .maps import lbp_maps, lbp_params
        from .render import lbp_colors
        ext = self.features[label]["extractor"]
        for m in lbp_maps(self.prepared(label, im["index"]), ext, MAX_LBP_MAPS):
            cap = f"LBP codes P={m['points']} R={m['radius']:g}\n{label}\n{m['method']}; grey: non-uniform"
            self.add_tile(im["index"], "handcrafted", lbp_colors(m["codes"], m["points"], m["method"]), cap,
                          {"kind": "lbp", "method": "LBP code map (bench.features.lbp.lbp_codes = "
                           "skimage local_binary_pattern)", "feature": label,
                           "params": {**lbp_params(ext), "map_points": m["points"], "map_radius": m["radius"]}})

    def sift_tiles(self, label: str, im: dict) -> None:
        from .maps import sift_words
        from .render import sift_tile
        if label not in self.in_memory:
            raise ValueError(f"the descriptors of {label!r} are not in memory")
        f = self.features[label]
        enc = self.fitted(label, None, im["split"], upto=1)[0]
        info = sift_words(self.prepared(label, im["index"]), f["stage"], enc)
        gray = f["stage"].keypoints_and_descriptors(self.prepared(label, im["index"]))[0]
        how = "dense grid" if info["dense"] else "detected keypoints"
        cap = f"SIFT visual words\n{label}\n{info['n_words']} words, {how}"
        self.add_tile(im["index"], "handcrafted", sift_tile(gray, info), cap,
                      {"kind": "sift", "method": f"SIFT {how} coloured by visual word (codebook fitted "
                       f"on the training fold of split {im['split']})", "feature": label,
                       "n_keypoints": int(len(info["words"])), "n_words": info["n_words"],
                       "n_distinct_words": int(len(np.unique(info["words"])))})

    def shape_tiles(self, label: str, im: dict) -> None:
        from .maps import shape_geometry
        from .render import shape_tile
        ext = self.features[label]["extractor"]
        img = self.prepared(label, im["index"])
        geo = shape_geometry(img, ext)
        feats = geo["features"]
        cap = (f"mask, outline, min-area rect\n{label}\n"
               f"area {feats['object_area']:.0f} px, {feats['rect_long']:.0f}x{feats['rect_short']:.0f} rect")
        self.add_tile(im["index"], "handcrafted", shape_tile(self.picture(img), geo), cap,
                      {"kind": "shape", "method": "bench.features.shape.parcel_geometry (what parcel_shape "
                       "measures): valid pixels, footprint, outline polygon, cv2.minAreaRect", "feature": label,
                       "params": {"base": ext.base, "threshold": float(ext.threshold)},
                       "threshold_used": geo["threshold"], "rect": geo["rect"],
                       "values": {k: feats[k] for k in ("valid_frac", "object_area", "perimeter", "rect_long",
                                                        "rect_short", "height_mean")}})

    # -- named importances
    def named_features(self) -> list[tuple[str, list[str], list[str]]]:
        """``(label, names, words)`` of the hand-crafted rows whose dimensions have names."""
        out = []
        for label in self.of_family("handcrafted"):
            f = self.features[label]
            ext = f.get("extractor")
            if ext is None or not hasattr(ext, "get_feature_names_out") or f.get("fold_stage") is not None:
                continue
            names = [str(n) for n in ext.get_feature_names_out()]
            words = list(ext.feature_descriptions()) if hasattr(ext, "feature_descriptions") else names
            if label not in self.in_memory:
                self.skip("importance", f"the features of {label!r} are not in memory", feature=label)
                continue
            X = self.ctx.per_image(label)
            if getattr(X, "dtype", None) == object or X.ndim != 2 or X.shape[1] != len(names):
                self.skip("importance", f"{label!r}: {len(names)} names for features of shape "
                          f"{getattr(X, 'shape', None)}", feature=label)
                continue
            out.append((label, names, words))
        return out

    def importances(self) -> list[dict]:
        from .importance import fold_importances
        first = min((int(getattr(s, "repeat", 0)) for s in self.splits.values()), default=0)
        splits = [s for s in self.splits.values() if int(getattr(s, "repeat", 0)) == first]
        out = []
        for label, names, words in self.named_features():
            clf = self.best_classifier(label)
            if clf is None:
                self.skip("importance", f"{label!r} has no finished row", feature=label)
                continue
            if self.late():
                self.skip("importance", f"time budget ({self.budget_s:.0f} s) reached", feature=label)
                continue
            t1 = time.perf_counter()
            X = np.asarray(self.ctx.per_image(label), dtype=np.float64)
            r = self.guarded(f"importance of {label}", lambda: fold_importances(
                lambda s: self.pipeline(label, clf, s), X, self.y, splits, n_repeats=N_REPEATS,
                seed=self.seed, metric="macro_f1", deadline=self.late))
            if r is None:
                continue
            out.append({"feature": label, "classifier": clf, "metric": "macro_f1", "names": names,
                        "words": words, "mean": r["mean"], "std": r["std"], "per_fold": r["per_fold"],
                        "baseline": r["baseline"], "splits": r["splits"], "n_repeats": r["n_repeats"],
                        "n_folds_available": len(splits), "macro_f1": self.score_of(label, clf),
                        "seconds": round(time.perf_counter() - t1, 2)})
        return out

    # -- frozen CNN rows
    def cnn_labels(self) -> list[str]:
        from ..features.deep import CNNFeatures
        return [lab for lab, f in self.features.items() if isinstance(f.get("extractor"), CNNFeatures)]

    def networks(self) -> list[dict]:
        """One entry per distinct network among the CNN rows (rows differing only in pooling
        share it), with its inputs and feature maps for every explained image."""
        groups: dict[str, dict] = {}
        for label in self.cnn_labels():
            ext = self.features[label]["extractor"]
            key = json.loads(ext.cache_key())
            key.pop("pooling", None)
            k = json.dumps(key, sort_keys=True, default=str)
            groups.setdefault(k, {"labels": [], "ext": ext, "key": key})["labels"].append(label)
        out = []
        for g in groups.values():
            if self.late():
                self.skip("cnn", f"time budget ({self.budget_s:.0f} s) reached", rows=g["labels"])
                continue
            r = self.guarded(f"feature maps of {g['labels'][0]}", self.network_maps, g)
            if r is not None:
                out.append(r)
        return out

    def network_maps(self, g: dict) -> dict:
        from .cam import feature_maps, first_conv
        from .render import heat_overlay
        label, ext = g["labels"][0], g["ext"]
        imgs = [self.prepared(label, im["index"]) for im in self.images]
        u8 = ext.prepare(imgs)
        fm = feature_maps(ext, inputs=ext.preprocess(imgs))
        desc = ext.describe()
        g.update(u8=u8, fm=fm, backbone=desc.get("backbone"), weights=desc.get("weights"),
                 layer=desc.get("layer"), layer_ref=desc.get("layer_ref"))
        for j, im in enumerate(self.images):
            cap = (f"mean activation\n{desc.get('backbone')}, {desc.get('weights')}\n"
                   f"layer {desc.get('layer')}, {fm.shape[1]}x{fm.shape[2]}x{fm.shape[3]}")
            self.add_tile(im["index"], "cnn", heat_overlay(u8[j], fm[j].mean(axis=2), False, 0.65, "viridis"),
                          cap, {"kind": "activation", "method": "mean over channels of the pre-pooling "
                                "feature map, upsampled", "feature": ", ".join(g["labels"]),
                                "backbone": desc.get("backbone"), "layer": desc.get("layer"),
                                "layer_ref": desc.get("layer_ref"), "weights": desc.get("weights"),
                                "map_shape": list(fm.shape[1:])})
        conv = first_conv(ext.model_)
        if conv is not None:
            self.filter_panel(conv, f"{desc.get('backbone')} [{desc.get('weights')}]", g["labels"])
        return g

    def filter_panel(self, conv, source: str, rows: list[str]) -> None:
        from .render import filter_grid
        kernel, name = conv
        kh, kw, cin, cout = kernel.shape
        title = (f"{source}: first convolution {name!r}, {cout} filters of {kh}x{kw}x{cin} "
                 f"(rows {', '.join(rows)})")
        fname = f"filters/{_slug(source)}.png"
        _write(self.out / fname, filter_grid(kernel, title))
        self.filters.append({"source": source, "layer": name, "shape": [kh, kw, cin, cout], "rows": rows,
                             "png": fname, "title": title})

    def cam_row(self) -> tuple[str, str] | None:
        """The best-scoring (GAP CNN row, linear classifier) pair, for the exact CAM."""
        from .cam import is_linear
        best = None
        for label in self.cnn_labels():
            if self.features[label]["extractor"].pooling != "avg" or label not in self.in_memory:
                continue
            for clf in self.ctx.classifier_labels:
                score = self.score_of(label, clf)
                if score is None or not is_linear(self.ctx.make_pipeline(label, clf).steps[-1][1]):
                    continue
                if best is None or score > best[0]:
                    best = (score, label, clf)
        return None if best is None else (best[1], best[2])

    def cams(self, nets: list[dict]) -> None:
        """Exact CAM of the best GAP + linear row; occlusion for the best deep row otherwise."""
        net_of = {lab: g for g in nets for lab in g["labels"]}
        pair = self.cam_row()
        if pair is None and any(self.features[lab]["extractor"].pooling == "avg" for lab in net_of):
            self.notes.append("No exact CAM: no GAP CNN row has a finished linear classifier (add e.g. "
                              "logreg to classifiers).")
        elif pair is not None and pair[0] in net_of:
            for j, im in enumerate(self.images):
                self.guarded(f"CAM of image {im['index']}", self.exact_cam, pair, net_of[pair[0]], j, im)
        deep = self.best.get("deep")
        occ = None if deep is None else (str(deep["feature"]), str(deep["classifier"]))
        if occ is not None and occ != pair and occ[0] in net_of and occ[0] in self.in_memory:
            for j, im in enumerate(self.images):
                if self.late():
                    self.skip("occlusion", f"time budget ({self.budget_s:.0f} s) reached", image=im["index"])
                    self.add_tile(im["index"], "cnn", None, "occlusion skipped: time budget",
                                  {"kind": "occlusion", "skipped": "time budget"})
                    continue
                self.guarded(f"occlusion of image {im['index']}", self.occlusion, occ, net_of[occ[0]], j, im)
        elif occ is not None and occ != pair:
            self.notes.append(f"No occlusion map for the best deep row {occ[0]} + {occ[1]}: not a frozen-CNN "
                              "row with its features in memory.")
        if "hybrid" in self.best:
            self.notes.append("Hybrid rows (concatenations) get no CNN map of their own.")

    def _predicted(self, pipe, X, index: int) -> tuple[int, int]:
        """(class label, column in ``pipe.classes_``) the fitted row predicts for an image."""
        pred = pipe.predict(np.asarray(X[[index]]))[0]
        return int(pred), int(list(pipe.classes_).index(pred))

    def exact_cam(self, pair, g: dict, j: int, im: dict) -> None:
        from .cam import fold_linear, linear_cam
        from .render import heat_overlay
        label, clf = pair
        pipe = self.fitted(label, clf, im["split"])
        X = self.ctx.per_image(label)
        pred, col = self._predicted(pipe, X, im["index"])
        W, b, _ = fold_linear(pipe)
        fm = g["fm"][j]
        cam, bias = linear_cam(fm, W, b, col)
        gap = fm.astype(np.float64).mean(axis=(0, 1))
        dec = np.atleast_1d(np.asarray(pipe.decision_function(gap[None]), dtype=np.float64)[0])
        score = (dec[col] if dec.size > 1 else (dec[0] if col == 1 else -dec[0]))
        err = abs(cam.mean() + bias - score)
        self.checks["cam_identity_max_abs_error"] = max(self.checks.get("cam_identity_max_abs_error", 0.0), err)
        feat_err = float(np.max(np.abs(gap - np.asarray(X[im["index"]], dtype=np.float64))))
        self.checks["cam_feature_recompute_max_abs_error"] = max(
            self.checks.get("cam_feature_recompute_max_abs_error", 0.0), feat_err)
        cap = f"exact CAM: {self.names[pred]}\n{label}\n+ {clf} (GAP + linear)"
        self.add_tile(im["index"], "cnn", heat_overlay(g["u8"][j], cam, True), cap,
                      {"kind": "cam", "method": "exact class activation map: sum_k (w_k / sigma_k) A_k of "
                       "the predicted class, the scaler folded into the linear weights", "feature": label,
                       "classifier": clf, "class": pred, "class_name": self.names[pred], "score": float(score),
                       "cam_mean_plus_bias": float(cam.mean() + bias), "map_shape": list(cam.shape)})

    def occlusion(self, pair, g: dict, j: int, im: dict) -> None:
        from .cam import class_scores, occlusion_map
        from .render import heat_overlay
        label, clf = pair
        pipe = self.fitted(label, clf, im["split"])
        ext = self.features[label]["extractor"]
        X = self.ctx.per_image(label)
        pred, col = self._predicted(pipe, X, im["index"])
        r = occlusion_map(lambda imgs: class_scores(pipe, ext.transform(imgs)), g["u8"][j], col)
        cap = f"occlusion: {self.names[pred]}\n{label}\n+ {clf}: drop in p"
        self.add_tile(im["index"], "cnn", heat_overlay(g["u8"][j], r["map"], True), cap,
                      {"kind": "occlusion", "method": f"occlusion sensitivity: {r['patch']} px grey patch "
                       f"(the image mean), stride {r['stride']} px, drop in the predicted class's "
                       "probability", "feature": label, "classifier": clf, "class": pred,
                       "class_name": self.names[pred], "p": r["p"], "n_occluded": r["n"],
                       "patch": r["patch"], "stride": r["stride"]})

    # -- end-to-end CNN rows
    def finetune_model(self, label: str, split: int):
        """The trained model of one end-to-end recipe and split, rebuilt as it was trained
        (same spec, augmentation layers, weights source) from ``best.weights.h5``; None when
        that split was not trained."""
        from .. import finetune
        key = ("finetune", label, split)
        if key in self._pipes:
            return self._pipes[key]
        work = Path(self.ctx.run_dir) / "finetune" / label / f"split{split}"
        wfile, done = work / "best.weights.h5", work / "done.json"
        model = None
        if wfile.exists() and done.exists():
            info = json.loads(done.read_text())
            spec = finetune.validate_spec(dict(info["spec"]), f"finetune[{label}]")
            size, channels = int(spec["input_size"]), finetune.input_channels(spec, self.ds.modality)
            resolved = None
            if spec["mode"] != "scratch":
                resolved = finetune.resolve_weights(finetune.backbone_info(spec["backbone"]), spec["weights"],
                                                    size, self.ctx.config.get("on_missing_weights", "random"),
                                                    int(info.get("seed", self.seed)))
            aug = finetune.make_augmenter(spec["augment"], self.ds.modality, int(info.get("seed", self.seed)))
            model = finetune.build_model(spec, int(self.ds.n_classes), (size, size, channels), augmenter=aug,
                                         weights=resolved if resolved is not None and resolved.path else None)
            model.load_weights(str(wfile))
            model.bench_spec = spec  # type: ignore[attr-defined]
            model.bench_weights = resolved.label if resolved is not None else "n/a"  # type: ignore
        self._pipes[key] = model
        return model

    def grad_cams(self) -> None:
        """Grad-CAM of every explained image for each end-to-end recipe (its model of the
        explained split), and the first-convolution filters of that model."""
        from .. import finetune
        from .cam import first_conv, grad_cam
        from .render import heat_overlay
        for spec in (self.ctx.config or {}).get("finetune") or []:
            label = spec["label"]
            if self.late():
                self.skip("grad-cam", f"time budget ({self.budget_s:.0f} s) reached", row=label)
                for im in self.images:
                    self.add_tile(im["index"], "cnn", None, f"Grad-CAM {label}: skipped (time budget)",
                                  {"kind": "gradcam", "feature": label, "skipped": "time budget"})
                continue
            model = self.guarded(f"model {label}", self.finetune_model, label, self.split)
            if model is None:
                for im in self.images:
                    self.add_tile(im["index"], "cnn", None, f"Grad-CAM {label}: no model of split "
                                  f"{self.split}", {"kind": "gradcam", "feature": label,
                                                     "skipped": f"no trained model of split {self.split}"})
                continue
            sp = model.bench_spec
            x = finetune.prepare_images(self.ds, [im["index"] for im in self.images], int(sp["input_size"]),
                                        finetune.input_channels(sp, self.ds.modality), sp["depth_range"])
            for im, xi, r in zip(self.images, x, grad_cam(model, x)):
                rgb = np.clip(np.repeat(xi, 3, axis=2) if xi.shape[2] == 1 else xi, 0, 255).astype(np.uint8)
                cap = (f"Grad-CAM: {self.names[r['class']]} {r['proba'][r['class']]:.0%}\n{label}\n"
                       f"layer {r['layer']}")
                self.add_tile(im["index"], "cnn", heat_overlay(rgb, r["cam"], False), cap,
                              {"kind": "gradcam", "method": "Grad-CAM on the last convolutional block "
                               "(gradient of the pre-softmax class score)", "feature": label,
                               "layer": r["layer"], "class": r["class"], "class_name": self.names[r["class"]],
                               "p": float(r["proba"][r["class"]]), "weights": model.bench_weights,
                               "map_shape": list(r["cam"].shape)})
            conv = first_conv(model)
            if conv is not None:
                mode = sp["mode"] + ("" if sp["mode"] == "scratch" else f" {sp['backbone']}")
                self.filter_panel(conv, f"{label} ({mode}, trained on split {self.split}) "
                                  f"[{model.bench_weights}]", [label])

    # -- output
    def render_cards(self, nets: list[dict]) -> None:
        from .render import card
        for j, im in enumerate(self.images):
            i = im["index"]
            rows = []
            pic = self.picture(self.ds.load(i))
            hand = self.tiles.get(i, {}).get("handcrafted", [])
            cnn = self.tiles.get(i, {}).get("cnn", [])
            if hand or not cnn:
                rows.append(("Hand-crafted features", [(pic, f"image\n{im['id']}\ntrue: {im['true_name']}")]
                             + hand))
            if cnn:
                first = [(nets[0]["u8"][j], f"CNN input\n{nets[0]['backbone']}\n"
                                            f"{nets[0]['u8'].shape[1]}x{nets[0]['u8'].shape[2]} RGB")] \
                    if nets else [(pic, "image")]
                rows.append(("CNN: activations and class maps", first + cnn))
            preds = []
            for p in im["predictions"]:
                if p["pred"] is None:
                    continue
                mark = "✓" if p["correct"] else "✗"
                conf = f" {p['confidence']:.0%}" if p.get("confidence") is not None else ""
                preds.append(f"{FAMILY_SHORT.get(p['family'], p['family'])} {mark} {p['pred_name']}{conf}")
            title = f"{im['id']} · true: {im['true_name']} · {im['reason']}"
            subtitle = f"test image of split {im['split']} · best rows: " + (", ".join(preds) or "no predictions")
            rel = f"cards/img_{i:06d}.png"
            _write(self.out / rel, card(title, subtitle, [(r[0], [(t if t is not None else
                                                                   _msg(c), c) for t, c in r[1]])
                                                          for r in rows]))
            im["card"] = rel

    def manifest(self, importances, nets) -> dict:
        rows = {fam: {"feature": str(r["feature"]), "classifier": str(r["classifier"]),
                      "weights": r.get("weights"), "macro_f1": r.get("macro_f1_mean")}
                for fam, r in self.best.items()}
        return {"version": 1, "class_names": self.names, "modality": getattr(self.ds, "modality", "rgb"),
                "rows": rows, "images": self.images, "filters": self.filters, "importances": importances,
                "networks": [{"rows": g["labels"], "backbone": g.get("backbone"), "layer": g.get("layer"),
                              "layer_ref": g.get("layer_ref"), "weights": g.get("weights")} for g in nets],
                "checks": self.checks, "notes": self.notes, "skipped": self.skipped,
                "limits": {"per_class": PER_CLASS, "max_gallery": MAX_GALLERY,
                           "mistakes_per_family": MISTAKES_PER_FAMILY, "n_repeats": N_REPEATS},
                "budget_s": self.budget_s, "stopped_by_budget": any(
                    "time budget" in s.get("reason", "") for s in self.skipped),
                "seconds": round(time.perf_counter() - self.t0, 2)}


def _msg(text: str):
    from .render import message_tile
    return message_tile(text)


def run_explain(ctx, out_dir, *, summary, records, best, items=None, predictions=None, picture,
                seed: int = 0, budget_s: float = BUDGET_S) -> dict:
    """Compute and save the explain artefacts (see the module docstring) under
    ``out_dir/explain``; returns a short status for the analysis manifest.

    ``best``: family -> best row (a summary row); ``items``: the gallery items (dicts with
    ``index``); ``predictions``: family -> split -> ``{"pos", "y_pred", "proba"}`` of that
    best row; ``picture(image) -> uint8 RGB``: how images are shown.
    """
    out = Path(out_dir) / "explain"
    if out.exists():
        shutil.rmtree(out)
    e = _Explain(ctx, out, summary=summary, records=records, best=best, items=items,
                 predictions=predictions, picture=picture, seed=seed, budget_s=budget_s)
    if not e.features:
        return {"status": "skipped", "reason": "no extractors in memory (analysis driven without the engine)"}
    (out / "cards").mkdir(parents=True)
    (out / "filters").mkdir()
    e.select()
    if not e.images:
        return {"status": "skipped", "reason": "no test image to explain"}
    e.guarded("hand-crafted maps", e.handcrafted_maps)
    importances = e.guarded("importances", e.importances) or []
    nets = e.guarded("cnn", e.networks) or []
    e.guarded("class maps", e.cams, nets)
    e.guarded("grad-cam", e.grad_cams)
    if not any(im["panels"] for im in e.images) and not importances and not e.filters:
        shutil.rmtree(out)
        return {"status": "skipped", "reason": "no row has a map, named dimensions or a network to show "
                "(HOG, LBP, SIFT, parcel_shape, glcm, color_hist, granulometry, CNN rows)"}
    e.guarded("cards", e.render_cards, nets)
    data = e.manifest(importances, nets)
    tmp = out / ".explain.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    os.replace(tmp, out / "explain.json")
    log.info("explain: %d images, %d importance charts, %d filter grids in %.1f s", len(e.images),
             len(importances), len(e.filters), data["seconds"])
    return {"status": "done", "images": len(e.images), "importances": len(importances),
            "filters": len(e.filters), "seconds": data["seconds"], "budget_s": e.budget_s,
            "stopped_by_budget": data["stopped_by_budget"], "skipped": len(e.skipped)}

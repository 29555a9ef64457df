"""Scoring counts: the truth table of a scene set and the RMSE / MAE of per-image counts."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

def true_counts(points: pd.DataFrame, scenes: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Scene x class table of annotated animals (zeros included)."""
    pts = pd.DataFrame(points)
    tab = pd.crosstab(pts["image"], pts["class"]) if len(pts) else pd.DataFrame()
    return tab.reindex(index=list(scenes), columns=list(classes), fill_value=0).fillna(0).astype(int)


def count_errors(counts: pd.DataFrame, by=("feature", "classifier", "method")) -> pd.DataFrame:
    """RMSE and MAE of per-image counts, per class and overall.

    ``counts`` has columns ``image, class, true, predicted`` and the ``by`` keys.
    Rows with ``class = "mean"`` hold the mean of the per-class RMSE (the Kaggle
    NOAA score, "mean column-wise RMSE") and of the per-class MAE; ``class =
    "total"`` the errors of the total count per image (all classes summed).
    ``n_images`` counts (image, split) pairs.
    """
    by = [b for b in by if b in counts.columns]
    rows = []
    if counts.empty:
        return pd.DataFrame(columns=by + ["class", "rmse", "mae", "mean_true", "mean_predicted",
                                          "n_images"])
    for key, g in counts.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        base = dict(zip(by, key))
        per = []
        for cls, gc in g.groupby("class", sort=False):
            err = gc["predicted"].to_numpy(float) - gc["true"].to_numpy(float)
            r = dict(base, **{"class": cls, "rmse": float(np.sqrt(np.mean(err ** 2))),
                              "mae": float(np.mean(np.abs(err))),
                              "mean_true": float(gc["true"].mean()),
                              "mean_predicted": float(gc["predicted"].mean()),
                              "n_images": int(len(gc))})
            per.append(r)
        rows.extend(per)
        rows.append(dict(base, **{"class": "mean", "rmse": float(np.mean([r["rmse"] for r in per])),
                                  "mae": float(np.mean([r["mae"] for r in per])),
                                  "mean_true": float(np.mean([r["mean_true"] for r in per])),
                                  "mean_predicted": float(np.mean([r["mean_predicted"] for r in per])),
                                  "n_images": per[0]["n_images"]}))
        keys = [k for k in ("image", "split") if k in g.columns]
        tot = g.groupby(keys)[["true", "predicted"]].sum()
        err = tot["predicted"].to_numpy(float) - tot["true"].to_numpy(float)
        rows.append(dict(base, **{"class": "total", "rmse": float(np.sqrt(np.mean(err ** 2))),
                                  "mae": float(np.mean(np.abs(err))),
                                  "mean_true": float(tot["true"].mean()),
                                  "mean_predicted": float(tot["predicted"].mean()),
                                  "n_images": int(len(tot))}))
    return pd.DataFrame(rows)



def truth_matrix(truth: pd.DataFrame, scene_ids, classes, bg) -> np.ndarray:
    """Per-scene counts as an (n_scenes, n_classes) matrix with a zero background column."""
    m = np.zeros((len(scene_ids), len(classes)))
    animal_idx = [i for i in range(len(classes)) if i != bg]
    m[:, animal_idx] = truth.loc[list(scene_ids), [classes[i] for i in animal_idx]].to_numpy()
    return m

"""An end-to-end convolutional count regressor (the ``cnn`` counting method).

A small fully convolutional network maps an image to a map of per-class counts: a
learned stride-``stem`` 3x3 convolution, then one conv block and 2x2 max-pooling per
entry of ``filters``, so one output cell covers ``downsample * stem * 2 ** len(filters)``
pixels of the photo (``downsample``: an optional area resize first, for large
photos); softplus (Poisson loss) or ReLU (MSE loss) outputs. A learned stem keeps the
full-resolution detail that tells an adult male from a subadult male (measured on the
synthetic scenes, prototype without learning-rate decay: mean column-wise RMSE 8.96 vs
9.59 with an area resize by 2 instead). Each output
cell is a tiny tile, and its target is the animals' Gaussian density (``sigma`` px)
integrated over the cell (:func:`bench.counting.tiles.tile_targets` on the cell grid),
so the loss is a Poisson (or squared) error on tile counts. A scene's count is the
sum of its cells: the network is evaluated on ``predict_tile`` tiles and the tile
sums are added (:func:`predict_counts`; all-black cells count 0).

Training (``steps`` Adam steps of ``batch_size`` crops, the learning rate decaying
from ``lr`` to 0 along a cosine, no early stopping: a fixed
budget keeps it CPU-cheap and leaves the held-out scenes untouched) draws ``tile``-px
crops from the *training* scenes at random cell-aligned positions (a share ``positive``
of them placed to hold a random training animal: on a large photo with a few dozen
animals, uniform crops are nearly all empty). Augmentation: the
eight flips/quarter turns (count preserving, applied to the crop and its target
map), and with ``jitter: a`` a random per-channel gain ``U(1-a, 1+a)`` (colour
jitter). ``normalize`` applies the same per-scene colour normalisation as the
regression counters (:class:`bench.counting.tiles.SceneColour`) to training and
held-out scenes. The loss every 50 steps is saved beside the run
(``analysis/count_cnn/<label>-split<k>.csv``).

Spec (``count.cnn``, a mapping or a list of mappings, one row each): ``label``
(``count-cnn``), ``tile`` (crop side in px, default 2 patch sizes), ``downsample``
(1), ``stem`` (2), ``filters`` ([16, 32, 32]), ``steps`` (1000), ``batch_size`` (32), ``lr``
(0.002), ``loss`` (``poisson`` | ``mse``), ``sigma`` (patch_size / 8 px),
``normalize`` (``none``), ``jitter`` (0.1), ``augment`` (true: flips and quarter
turns), ``predict_tile`` (512 px), ``positive`` (0).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .. import schema
from ..errors import ConfigError, did_you_mean
from .tiles import SceneColour, check_normalize, tile_targets

log = logging.getLogger(__name__)

CNN_KEYS = schema.keys("count.cnn")  # keys and defaults: the "count.cnn" section of bench.schema
LOSSES = schema.allowed("count.cnn", "loss")


def cnn_options(spec, patch_size: int) -> list[dict]:
    """Validated CNN counter specs (one per entry of ``count.cnn``)."""
    items = spec if isinstance(spec, list) else [spec or {}]
    out = []
    for item in items:
        item = dict(item or {})
        d = schema.defaults("count.cnn")  # tile and sigma: DERIVED from the patch size
        for k in item:
            if k not in CNN_KEYS:
                raise ConfigError(f"unknown key 'count.cnn.{k}'",
                                  did_you_mean(k, CNN_KEYS) + f"allowed: {', '.join(CNN_KEYS)}")
        d.update(item)
        o = {"label": str(d["label"]), "tile": int(d.get("tile", 2 * patch_size)),
             "downsample": int(d["downsample"]), "stem": int(d["stem"]),
             "filters": [int(f) for f in d["filters"]],
             "steps": int(d["steps"]), "batch_size": int(d["batch_size"]),
             "lr": float(d["lr"]), "loss": str(d["loss"]),
             "sigma": float(d.get("sigma", max(1.0, patch_size / 8))),
             "normalize": check_normalize(d["normalize"], "count.cnn.normalize"),
             "jitter": float(d["jitter"]), "augment": bool(d["augment"]),
             "predict_tile": int(d["predict_tile"]), "positive": float(d["positive"])}
        if o["loss"] not in LOSSES:
            raise ConfigError(f"count.cnn.loss: unknown loss {o['loss']!r}", f"one of {', '.join(LOSSES)}")
        cell = o["downsample"] * o["stem"] * 2 ** len(o["filters"])
        if not o["filters"] or o["downsample"] < 1 or o["stem"] < 1 or o["tile"] % cell \
                or o["predict_tile"] % cell:
            raise ConfigError(f"count.cnn: tile {o['tile']} and predict_tile {o['predict_tile']} must be "
                              f"multiples of the output cell, downsample x stem x 2^len(filters) = {cell} px",
                              "e.g. tile: 64 with stem: 2 and three filters (16 px cells)")
        if not 0 <= o["jitter"] < 1 or o["steps"] < 1 or o["batch_size"] < 1 or not 0 <= o["positive"] <= 1:
            raise ConfigError(f"count.cnn: bad value in {item}",
                              "jitter in [0, 1), positive in [0, 1], steps and batch_size >= 1")
        o["cell"] = cell
        o["variant"] = ", ".join([f"tile {o['tile']}", f"x1/{o['downsample']}" if o["downsample"] > 1 else "full res",
                                  f"{o['cell']} px cells",
                                  o["normalize"] if o["normalize"] != "none" else "no normalisation",
                                  f"jitter {o['jitter']:g}" if o["jitter"] else "no jitter",
                                  f"{o['steps']} steps"] + ([f"{o['positive']:g} positive crops"]
                                                            if o["positive"] else []))
        out.append(o)
    labels = [o["label"] + o["variant"] for o in out]
    if len(set(labels)) != len(labels):
        raise ConfigError("count.cnn: two entries with the same label and settings",
                          "give each entry its own `label:`")
    return out


def build_count_cnn(n_classes: int, filters: Sequence[int], loss: str, lr: float,
                    mean_count: float = 0.05, stem: int = 2, steps: int | None = None):
    """The fully convolutional counter: (conv3x3-BN-ReLU, conv3x3-ReLU, maxpool) per filter,
    conv3x3, 1x1 head. The head's bias starts at the mean cell count (``mean_count``):
    started far above it, a Poisson loss on mostly empty cells drove every unit to zero
    output on some splits (measured), a dead start the network never left."""
    import keras
    from keras import layers

    inp = keras.Input((None, None, 3))
    x = layers.Rescaling(1.0 / 255)(inp)
    if stem > 1:
        x = layers.Conv2D(int(filters[0]), 3, strides=int(stem), padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    for f in filters:
        x = layers.Conv2D(int(f), 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2D(int(f), 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(int(filters[-1]), 3, padding="same", activation="relu")(x)
    m = max(float(mean_count), 1e-4)
    bias = float(np.log(np.expm1(m))) if loss == "poisson" else m
    out = layers.Conv2D(n_classes, 1, activation="softplus" if loss == "poisson" else "relu",
                        bias_initializer=keras.initializers.Constant(bias))(x)
    model = keras.Model(inp, out, name="count_cnn")
    # a fixed budget of steps: the learning rate decays to 0 along a cosine over it
    rate = keras.optimizers.schedules.CosineDecay(float(lr), int(steps)) if steps else float(lr)
    model.compile(keras.optimizers.Adam(rate), loss="poisson" if loss == "poisson" else "mse")
    return model


def _downsample(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(np.ascontiguousarray(img), (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)


def _prepared(img, colour, o):
    return _downsample(np.asarray(colour(img)), o["downsample"])


class _Crops:
    """Random cell-aligned training crops with their cell-count target maps."""

    def __init__(self, scenes: list, o: Mapping, n_classes: int, rng: np.random.Generator):
        self.o, self.rng, self.n = o, rng, n_classes
        self.items = []
        f, cell = o["downsample"], o["cell"]
        for img, xy, lab in scenes:
            h, w = img.shape[:2]
            small = cell // f  # px of the downsampled image per output cell
            gh, gw = -(-h // small), -(-w // small)
            canvas = np.zeros((gh * small, gw * small, 3), np.float32)
            canvas[:img.shape[0], :img.shape[1]] = img
            dens = tile_targets(xy / f, lab, n_classes, gh * small, gw * small, small, "density",
                                o["sigma"] / f).reshape(gh, gw, n_classes).astype(np.float32)
            cells = np.floor(np.asarray(xy, np.float64).reshape(-1, 2) / f / small).astype(np.int64)
            self.items.append((canvas, dens, cells))
        self.c = o["tile"] // cell  # cells per crop side

    def batch(self):
        o, rng, c = self.o, self.rng, self.c
        small = o["cell"] // o["downsample"]
        side = c * small
        X = np.zeros((o["batch_size"], side, side, 3), np.float32)
        Y = np.zeros((o["batch_size"], c, c, self.n), np.float32)
        for b in range(o["batch_size"]):
            canvas, dens, cells = self.items[rng.integers(len(self.items))]
            gh, gw = dens.shape[:2]
            if len(cells) and rng.random() < o["positive"]:  # a crop that holds a given animal
                px, py = cells[rng.integers(len(cells))]
                cy = int(np.clip(py - rng.integers(c), 0, max(0, gh - c)))
                cx = int(np.clip(px - rng.integers(c), 0, max(0, gw - c)))
            else:
                cy, cx = rng.integers(0, max(1, gh - c + 1)), rng.integers(0, max(1, gw - c + 1))
            x = canvas[cy * small:(cy + c) * small, cx * small:(cx + c) * small]
            y = dens[cy:cy + c, cx:cx + c]
            if o["augment"]:
                k = int(rng.integers(4))
                x, y = np.rot90(x, k), np.rot90(y, k)
                if rng.random() < 0.5:
                    x, y = x[:, ::-1], y[:, ::-1]
            if o["jitter"]:
                x = x * rng.uniform(1 - o["jitter"], 1 + o["jitter"], 3).astype(np.float32)
            X[b, :x.shape[0], :x.shape[1]] = np.clip(x, 0, 255)
            Y[b, :y.shape[0], :y.shape[1]] = y
        return X, Y


def predict_counts(model, img: np.ndarray, o: Mapping) -> np.ndarray:
    """Per-class count of one prepared (colour-normalised, downsampled) scene: tile sums.

    Tiles are ``predict_tile`` px, the last row and column only padded up to a whole
    cell; a cell whose pixels are all black (padding, or a region blacked out in a
    dotted survey photo) counts 0: no training crop showed the network such a cell, and
    on them it overcounted by hundreds (measured).
    """
    cs = o["cell"] // o["downsample"]  # px per output cell in the prepared image
    t = o["predict_tile"] // o["downsample"]
    h, w = img.shape[:2]
    total = np.zeros(0)
    for y0 in range(0, h, t):
        for x0 in range(0, w, t):
            part = img[y0:y0 + t, x0:x0 + t]
            ph, pw = -(-part.shape[0] // cs) * cs, -(-part.shape[1] // cs) * cs
            tile = np.zeros((ph, pw, 3), np.float32)
            tile[:part.shape[0], :part.shape[1]] = part
            out = model.predict(tile[None], verbose=0)[0]
            lit = tile.reshape(ph // cs, cs, pw // cs, cs, 3).max(axis=(1, 3, 4)) > 0
            cnt = (out * lit[..., None]).sum(axis=(0, 1))
            total = cnt if total.size == 0 else total + cnt
    return np.asarray(total, dtype=np.float64)


def count_cnn_split(o: Mapping, info: Mapping, read, split_id, train_scenes, test_scenes, truth,
                    animal: Sequence[str], seed: int, out_dir: Path | None = None):
    """Train on the training scenes of one split, count its held-out scenes: ``(rows, model row)``."""
    import keras

    t0 = time.perf_counter()
    keras.utils.set_random_seed(int(seed) + 1000 * int(split_id))
    colour = SceneColour(o["normalize"]).fit([read(s) for s in train_scenes]
                                             if o["normalize"] == "histmatch" else [])
    scenes = [(_prepared(read(s), colour, o).astype(np.float32), info[s]["points_xy"], info[s]["labels"])
              for s in train_scenes]
    crops = _Crops(scenes, o, len(animal), np.random.default_rng([int(seed), int(split_id)]))
    mean_cell = float(np.mean([d.mean() for _, d, _ in crops.items])) if crops.items else 0.05
    model = build_count_cnn(len(animal), o["filters"], o["loss"], o["lr"], mean_cell, o["stem"],
                            o["steps"])
    curve, acc = [], []
    for step in range(1, o["steps"] + 1):
        X, Y = crops.batch()
        acc.append(float(model.train_on_batch(X, Y)))
        if step % 50 == 0 or step == o["steps"]:
            curve.append((step, float(np.mean(acc))))
            acc = []
    fit_s = time.perf_counter() - t0
    rows = []
    for sid in test_scenes:
        pred = predict_counts(model, _prepared(read(sid), colour, o).astype(np.float32), o)
        for c, cls in enumerate(animal):
            rows.append(dict(image=sid, **{"class": cls}, true=int(truth.at[sid, cls]),
                             predicted=float(pred[c]), feature=o["label"], classifier=o["loss"],
                             split=split_id, method="cnn", threshold=None, variant=o["variant"]))
    if out_dir is not None:
        import pandas as pd

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(curve, columns=["step", "loss"]).to_csv(
            out_dir / f"{o['label']}-split{split_id}.csv", index=False)
    log.info("counting: cnn %s split %s: %d steps in %.1f s, final loss %.4f", o["label"], split_id,
             o["steps"], fit_s, curve[-1][1] if curve else float("nan"))
    model_row = dict(method="cnn", feature=o["label"], classifier=o["loss"], variant=o["variant"],
                     split=split_id, params="{}", inner_rmse=float("nan"),
                     n_train_tiles=int(o["steps"] * o["batch_size"]), seconds=time.perf_counter() - t0)
    return rows, model_row

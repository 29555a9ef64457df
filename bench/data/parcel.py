"""``synthetic-parcel``: top-view time-of-flight depth maps of parcels on a conveyor.

The default dataset of the suite: generated offline, seeded and deterministic, so
every installation can run a benchmark without any file. Image ``k`` of class ``c``
is drawn from its own generator ``np.random.default_rng([seed, CLASS_CODE[c], k])``:
loading is lazy and order-independent, and changing ``n_per_class`` or ``classes``
leaves the other images unchanged. The cache key hashes the generator version, the
physical parameters, the class and ``k``.

Scene and values
----------------
A ToF camera looks straight down from ``CAMERA_MM`` = 1000 mm above the belt over a
``field_mm`` x ``field_mm`` (default 640 mm) field, sampled on ``size`` x ``size``
pixels (6.7 mm/pixel at the default 96). Each pixel holds a **height in millimetres
above the floor**, ``float32``; the belt surface is at ``BELT_MM`` = 750 mm (a usual
conveyor height), so a parcel top 200 mm high reads 950. ``0`` means *no
measurement*, as in the :mod:`bench.data.base` convention; referencing heights to the
floor rather than to the belt keeps the belt (a real, measured surface) apart from
missing pixels. Subtract ``meta["belt_mm"]`` for height above the belt.

Classes (all sizes in mm; sizes and heights deliberately overlap between classes,
so no single statistic - maximum or mean height, footprint area - separates them)
-----------------------------------------------------------------------------------
* ``box``: rectangular footprint 110-420 x (0.35-1) of that, flat top 25-260 high
  with a slight lid bulge or sag (-4..+6), rounded corners 2-12, vertical walls
  (sharp height step at the outline), tilted up to 6 % (resting on something).
* ``envelope``: thin slab with a large rectangular footprint 170-400 x (0.5-0.85),
  1-3 at the seams rising over a 20-80 mm taper to 3-45, plus up to two soft lumps
  (the content) of up to half that thickness; tilt <= 1 %.
* ``polybag``: soft bag; smooth dome ``H (1 - rho^p)^q`` (H 30-190) over a
  superellipse outline (semi-axes 90-220, exponent 2-4: round to boxy content) made
  wobbly by random harmonics (k = 2..6), with a few mm of wrinkles (random
  sinusoids); tilt <= 3 %.
* ``tube``: cylinder lying on the belt, diameter 45-160, length >= 2.2 diameters
  (180-620): circular cross-section across its axis, straight along it, flat
  ends; tilt <= 3 %.

Every object is rotated uniformly and placed within +-12 % of the field around its
centre (large ones may be cut by the border). In 30 % of the maps a neighbouring
parcel of any class enters from the border (the label is the central parcel's;
where they overlap the higher surface is seen). The camera mount adds a belt plane
tilt of up to 1 % per axis.

Sensor model
------------
* Return amplitude ``a = reflectivity * cos(incidence) * (1 m / distance)^2``;
  reflectivity 0.15-0.6 for the (dark) belt and 0.2-1.0 per object.
* Pixels on an outline mix top and belt, weighted by coverage x amplitude (flying
  pixels); where the step is higher than 10 mm, a flying-pixel filter removes 70 %
  of them.
* Gaussian depth noise ``sigma = noise / sqrt(a)`` (``noise`` = sigma in mm of a
  unit-amplitude return at 1 m): more noise far away, on dark and on steep surfaces.
* Missing measurements (0): every pixel with probability ``missing_rate``; the
  filtered flying pixels; pixels whose amplitude is too low (steep flanks, dark
  surfaces), with a logistic probability (1/2 at ``a`` = 0.05, ~1 below 0.02); and
  the illumination shadow beside tall edges (the emitter sits 60 mm beside the lens
  along +x).

Generation costs about 1.2 ms of CPU per 96 x 96 map (6 ms at 224 x 224).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import ConfigError, did_you_mean
from ..registry import DATASETS
from .base import Dataset
from .folder import check_max_per_class

GENERATOR_VERSION = "1"
CLASSES = ("box", "envelope", "polybag", "tube")
CLASS_CODE = {"box": 0, "envelope": 1, "polybag": 2, "tube": 3}  # stable seeds per class
BELT_MM = 750.0
CAMERA_MM = 1000.0  # above the belt
EMITTER_OFFSET_MM = 60.0
A_MIN = 0.05  # amplitude below which measurements drop out
FLYING_STEP_MM = 10.0  # edge pixels straddling a step higher than this ...
P_FLYING = 0.7  # ... are removed with this probability (flying-pixel filter)
NEIGHBOUR_RATE = 0.3  # share of maps where a neighbouring parcel enters from the border


@lru_cache(maxsize=8)
def _grid(size: int, field_mm: float):
    px = field_mm / size
    c = (np.arange(size) + 0.5 - size / 2.0) * px
    X, Y = np.meshgrid(c, c)  # X along columns (+x), Y along rows
    X.setflags(write=False)
    Y.setflags(write=False)
    return X, Y, px


def _rounded_rect_sd(u, v, half_l, half_w, r):
    """Signed distance (mm, < 0 inside) to a rectangle with rounded corners."""
    r = min(r, half_l, half_w)
    qx = np.abs(u) - (half_l - r)
    qy = np.abs(v) - (half_w - r)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - r


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _box(rng, u, v):
    L = rng.uniform(110, 420)
    W = L * rng.uniform(0.35, 1.0)
    H = rng.uniform(25, 260)
    sd = _rounded_rect_sd(u, v, L / 2, W / 2, rng.uniform(2, 12))
    bulge = rng.uniform(-4, 6)
    tu, tv = np.clip(2 * u / L, -1, 1), np.clip(2 * v / W, -1, 1)
    top = H + bulge * (1 - tu ** 2) * (1 - tv ** 2)
    return sd, top, 0.06


def _envelope(rng, u, v):
    L = rng.uniform(170, 400)
    W = L * rng.uniform(0.5, 0.85)
    H = rng.uniform(3, 45)
    seam = rng.uniform(1, 3)
    sd = _rounded_rect_sd(u, v, L / 2, W / 2, rng.uniform(1, 6))
    rise = _smoothstep(-sd / rng.uniform(20, 80))
    top = seam + (max(H, seam) - seam) * rise
    for _ in range(rng.integers(0, 3)):
        cu, cv = rng.uniform(-0.3, 0.3) * L, rng.uniform(-0.3, 0.3) * W
        s = rng.uniform(30, 80)
        top = top + rng.uniform(0, 0.5) * H * rise * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * s * s))
    return sd, top, 0.01


def _polybag(rng, u, v):
    a = rng.uniform(90, 220)
    b = a * rng.uniform(0.45, 0.95)
    H = rng.uniform(30, 190)
    phi = np.arctan2(v, u)
    n = rng.uniform(2.0, 4.0)  # superellipse: 2 = ellipse, 4 = boxy content inside the bag
    r_ell = (np.abs(np.cos(phi) / a) ** n + np.abs(np.sin(phi) / b) ** n) ** (-1.0 / n)
    wobble = 1.0
    for k in range(2, 7):
        wobble = wobble + rng.uniform(0, 0.12) / np.sqrt(k - 1) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    r_out = r_ell * np.maximum(wobble, 0.5)
    rho = np.hypot(u, v) / r_out
    p, q = rng.uniform(1.5, 4.0), rng.uniform(0.35, 0.8)
    dome = np.clip(1.0 - np.minimum(rho, 1.0) ** p, 0.0, 1.0) ** q
    wr = np.zeros_like(u)
    for _ in range(3):
        ang, lam = rng.uniform(0, np.pi), rng.uniform(25, 70)
        wr += rng.uniform(0.5, 2.5) * np.sin(2 * np.pi * (u * np.cos(ang) + v * np.sin(ang)) / lam
                                              + rng.uniform(0, 2 * np.pi))
    top = H * dome + wr * np.minimum(dome * 3.0, 1.0)
    return (rho - 1.0) * r_out, np.maximum(top, 0.0), 0.03


def _tube(rng, u, v):
    D = rng.uniform(45, 160)
    L = rng.uniform(max(2.2 * D, 180), 620)
    R = D / 2
    sd = np.maximum(np.abs(v) - R, np.abs(u) - L / 2)
    top = R + np.sqrt(np.maximum(R * R - v * v, 0.0))
    return sd, top, 0.03


_SHAPES = {"box": _box, "envelope": _envelope, "polybag": _polybag, "tube": _tube}


def _place(cls, rng, X, Y, cx, cy, px):
    """One parcel centred at (cx, cy): pixel coverage, top height above the belt (mm,
    defined everywhere) and cos(incidence) of the top surface."""
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = X - cx, Y - cy
    u = c * dx + s * dy
    v = -s * dx + c * dy
    sd, top, max_tilt = _SHAPES[cls](rng, u, v)
    t_ang, t_mag = rng.uniform(0, 2 * np.pi), rng.uniform(0, max_tilt)
    top = np.maximum(top + t_mag * (np.cos(t_ang) * u + np.sin(t_ang) * v), 1.0)
    gy, gx = np.gradient(top, px)
    cos_inc = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    cover = np.clip(0.5 - sd / px, 0.0, 1.0)
    return cover, top, cos_inc


def render_parcel(cls: str, rng: np.random.Generator, size: int = 96, noise: float = 1.0,
                  missing_rate: float = 0.01, field_mm: float = 640.0, return_clean: bool = False):
    """Draw one depth map of class ``cls`` with ``rng`` (see the module docstring).

    Returns the measured ``(size, size) float32`` map (heights above the floor, mm,
    0 = missing), or ``(measured, clean)`` with ``return_clean`` where ``clean`` is the
    noise-free, dropout-free map the sensor would give.
    """
    X, Y, px = _grid(int(size), float(field_mm))
    cx, cy = rng.uniform(-0.12, 0.12, size=2) * field_mm
    cover, top, cos_inc = _place(cls, rng, X, Y, cx, cy, px)
    refl = np.full(X.shape, rng.uniform(0.2, 1.0))
    if rng.random() < NEIGHBOUR_RATE:  # a neighbouring parcel cut by the border
        ang = rng.uniform(0, 2 * np.pi)
        r_nb = field_mm * rng.uniform(0.6, 0.85)
        cover_nb, top_nb, cos_nb = _place(CLASSES[rng.integers(len(CLASSES))], rng, X, Y,
                                          r_nb * np.cos(ang), r_nb * np.sin(ang), px)
        nb = (cover_nb > 0) & ((cover == 0) | (top_nb > top))  # the higher surface is seen
        cover, top, cos_inc = (np.where(nb, cover_nb, cover), np.where(nb, top_nb, top),
                               np.where(nb, cos_nb, cos_inc))
        refl = np.where(nb, rng.uniform(0.2, 1.0), refl)
    # belt plane (camera mount tilt)
    gx, gy = rng.uniform(-0.01, 0.01, size=2)
    belt = BELT_MM + gx * X + gy * Y
    refl_belt = rng.uniform(0.15, 0.6)
    # return amplitudes: reflectivity x cos(incidence) / distance^2 (belt at 1 m)
    d_top = (CAMERA_MM - top) / 1000.0
    amp_top = cover * refl * cos_inc / (d_top * d_top)
    amp = amp_top + (1.0 - cover) * refl_belt
    h = top * (amp_top / amp)  # edge pixels: amplitude-weighted mix of top and belt
    clean = belt + h
    z = clean + rng.standard_normal(h.shape) * (noise / np.sqrt(amp))
    # dropout: random, weak return, flying-pixel filter, emitter shadow
    p_weak = 0.5 - 0.5 * np.tanh((amp - A_MIN) / (0.5 * A_MIN))  # logistic, no overflow
    drop = rng.random(h.shape) < missing_rate + (1.0 - missing_rate) * p_weak
    flying = (cover > 0) & (cover < 1) & (top > FLYING_STEP_MM)
    drop |= flying & (rng.random(h.shape) < P_FLYING)
    n_shift = int(np.ceil(float(h.max()) * EMITTER_OFFSET_MM / CAMERA_MM / px))
    for k in range(1, n_shift + 1):  # dark where the surface towards the emitter rises above the ray
        rise = k * px * CAMERA_MM / EMITTER_OFFSET_MM
        drop[:, :-k] |= (h[:, k:] - h[:, :-k]) > rise
    z[drop] = 0.0
    z = z.astype(np.float32)
    return (z, clean.astype(np.float32)) if return_clean else z


@dataclass(frozen=True)
class ParcelLoader:
    """Picklable ``loader(i)``: renders image ``i`` from its own derived seed."""

    classes: tuple
    ks: tuple
    seed: int
    size: int
    noise: float
    missing_rate: float
    field_mm: float

    def __call__(self, i: int) -> np.ndarray:
        cls, k = self.classes[i], self.ks[i]
        rng = np.random.default_rng([self.seed, CLASS_CODE[cls], k])
        return render_parcel(cls, rng, self.size, self.noise, self.missing_rate, self.field_mm)


def _check_number(name, value, lo, hi=None, integer=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value >= lo and (hi is None or value < hi)
    if not ok:
        rng = f">= {lo}" + (f" and < {hi}" if hi is not None else "")
        raise ConfigError(f"dataset.{name} must be a{'n integer' if integer else ' number'} {rng}, "
                          f"got {value!r}", f"e.g. {name}: {_DEFAULTS[name]}")


_DEFAULTS = {"n_per_class": 60, "size": 96, "seed": 0, "noise": 1.0, "missing_rate": 0.01,
             "field_mm": 640.0}


@DATASETS.register("synthetic-parcel",
                   "Seeded ToF depth maps of parcels on a conveyor: box, envelope, polybag, tube")
def synthetic_parcel(n_per_class: int = 60, size: int = 96, seed: int = 0, noise: float = 1.0,
                     missing_rate: float = 0.01, classes=None, max_per_class: int | None = None,
                     field_mm: float = 640.0) -> Dataset:
    """Synthetic parcel depth maps (see the module docstring).

    Args:
        n_per_class: images per class (``max_per_class`` caps it further).
        size: output side in pixels (the field of view stays ``field_mm``).
        seed: dataset seed; image ``k`` of a class is the same whatever the other params
            that do not change its rendering (``n_per_class``, ``classes``).
        noise: depth noise sigma (mm) of a unit-amplitude return at 1 m.
        missing_rate: probability that any pixel is missing (0), on top of weak-return
            and shadow dropout.
        classes: subset of ``box``, ``envelope``, ``polybag``, ``tube`` (default all).
        max_per_class: keep the first ``max_per_class`` images of each class.
        field_mm: side of the field of view in millimetres.
    """
    _check_number("n_per_class", n_per_class, 1, integer=True)
    _check_number("size", size, 16, 4097, integer=True)
    _check_number("seed", seed, 0, integer=True)
    _check_number("noise", noise, 0.0)
    _check_number("missing_rate", missing_rate, 0.0, 1.0)
    _check_number("field_mm", field_mm, 1e-3)
    max_per_class = check_max_per_class(max_per_class)
    if classes is None:
        classes = list(CLASSES)
    if isinstance(classes, str):
        classes = [classes]
    for c in classes:
        if not isinstance(c, str) or c not in CLASS_CODE:
            raise ConfigError(f"dataset.classes: unknown parcel class {c!r}",
                              did_you_mean(c, CLASSES) + f"known: {', '.join(CLASSES)}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError(f"dataset.classes must name >= 2 distinct classes, got {list(classes)!r}",
                          f"choose from {', '.join(CLASSES)} (null for all)")
    n = int(n_per_class) if max_per_class is None else min(int(n_per_class), max_per_class)
    seed, size = int(seed), int(size)
    noise, missing_rate, field_mm = float(noise), float(missing_rate), float(field_mm)
    cls_of = tuple(c for c in classes for _ in range(n))
    ks = tuple(k for _ in classes for k in range(n))
    labels = np.repeat(np.arange(len(classes)), n)
    params = json.dumps({"v": GENERATOR_VERSION, "seed": seed, "size": size, "noise": noise,
                         "missing_rate": missing_rate, "field_mm": field_mm}, sort_keys=True)
    keys = [hashlib.blake2b(f"bench.parcel|{params}|{c}|{k}".encode(), digest_size=16).hexdigest()
            for c, k in zip(cls_of, ks)]
    loader = ParcelLoader(cls_of, ks, seed, size, noise, missing_rate, field_mm)
    meta = {"kind": "synthetic-parcel", "generator_version": GENERATOR_VERSION, "units": "mm",
            "belt_mm": BELT_MM, "camera_mm": CAMERA_MM, "field_mm": field_mm,
            "pixel_mm": field_mm / size, "missing_value": 0.0, "n_per_class": n, "seed": seed,
            "size": size, "noise": noise, "missing_rate": missing_rate,
            "depth_range": (BELT_MM - 30.0, BELT_MM + 300.0)}
    return Dataset(name="synthetic-parcel", loader=loader, labels=labels, class_names=list(classes),
                   keys=keys, groups=None, ids=[f"{c}/{k:04d}" for c, k in zip(cls_of, ks)],
                   modality="depth", meta=meta)

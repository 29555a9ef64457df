"""Steller sea lion data: synthetic aerial scenes, and checks of the real chips.

Synthetic scenes (``synthetic-sealion``)
    :func:`generate_scenes` writes large RGB scenes (PNG) and a points CSV
    (``image,x,y,class``) in the layout of :mod:`bench.data.points`; the registered
    dataset ``synthetic-sealion`` generates them once into a cache folder keyed by
    the generator parameters and then cuts patches with the ``points`` loader, so
    the synthetic benchmark exercises exactly the code path of real data.

    A scene is terrain (water, sand and rock from smooth noise fields, with a
    coast line and foam) under uneven light (gradient, vignette, brightness and
    colour cast per scene) plus sensor noise. Animals are soft-edged, tapered,
    rotated ellipses with a head blob, side lighting, a wet sheen along the spine
    and a cast shadow. The five classes differ as in the NOAA imagery: adult males
    largest and darkest; subadult males smaller and a little lighter; adult
    females and juveniles the same tan colour but females larger; pups small and
    nearly black, often lying next to a female. Animals gather in colonies, and
    each photo has its own flight altitude (all animals +-10 % in size) and
    wetness (animal colour +-10 %), so patches of one photo resemble each other
    more than patches of different photos, as in the real survey. At
    ``animal_scale=1`` the largest
    animal (an adult male, 26 px long) fits in a 32 px patch; use
    ``animal_scale=1.5`` with 48 px patches.

Real chips (``/work/shared/data/sea_lion_chips``)
    Chips cropped around animals from a few Kaggle photos, one folder per class,
    named ``<photo>_<class>_<n>.png``. Crop size is fixed per class (males
    120 px, subadult males 100, females 80, juveniles 60, pups 40), so the image
    size alone identifies the class: a leak. :func:`chip_size_table` shows it and
    :func:`chip_leak_experiment` measures it and how preparation removes it (see
    docs/SEALION.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import Dataset
from .points import load_points

log = logging.getLogger(__name__)

SEALION_CLASSES = ("adult_males", "subadult_males", "adult_females", "juveniles", "pups")
GENERATOR_VERSION = "2"  # bump whenever the pixels of the same parameters change


@dataclass(frozen=True)
class AnimalLook:
    """Appearance of one class at ``animal_scale=1`` (pixels; RGB in [0, 1])."""

    length: float
    width: float
    head: float      # head radius as a fraction of the body width
    color: tuple
    share: float     # default fraction of the animals in a scene


LOOKS = {
    "adult_males": AnimalLook(25.0, 12.0, 0.45, (0.22, 0.17, 0.14), 0.12),
    "subadult_males": AnimalLook(21.5, 10.0, 0.40, (0.33, 0.27, 0.21), 0.12),
    "adult_females": AnimalLook(18.0, 7.5, 0.36, (0.52, 0.41, 0.30), 0.34),
    "juveniles": AnimalLook(13.0, 5.8, 0.36, (0.51, 0.41, 0.31), 0.18),
    "pups": AnimalLook(8.5, 4.6, 0.38, (0.15, 0.13, 0.12), 0.24),
}


# --------------------------------------------------------------------------- terrain

def _field(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Smooth zero-mean unit-variance noise; large scales are drawn coarse and upsampled."""
    f = max(1, int(sigma // 4))
    hh, ww = -(-h // f) + 2, -(-w // f) + 2
    n = rng.standard_normal((hh, ww)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT_101)
    if f > 1:
        n = cv2.resize(n, (ww * f, hh * f), interpolation=cv2.INTER_CUBIC)
    n = np.ascontiguousarray(n[:h, :w])
    n -= n.mean()
    n /= n.std() + 1e-8
    return n


def _jitter(rng, rgb, amount):
    return np.clip(np.asarray(rgb, np.float32) * (1 + rng.uniform(-amount, amount, 3)), 0, 1)


def _terrain(rng: np.random.Generator, h: int, w: int):
    """RGB terrain in [0, 1] and the water weight map."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = min(h, w) / 4.0
    a = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)) / (0.5 * math.hypot(h, w))
    logits = np.stack([
        _field(rng, h, w, scale) + 1.6 * ramp + rng.uniform(-1.2, -0.2),  # water: a coast
        _field(rng, h, w, scale),                                          # sand
        _field(rng, h, w, scale) + rng.uniform(0.0, 0.6),                  # rock
    ])
    logits = 4.0 * (logits - logits.max(0, keepdims=True))
    weights = np.exp(logits)
    weights /= weights.sum(0, keepdims=True)

    fine = _field(rng, h, w, 0.8)
    med = _field(rng, h, w, 3.0)
    coarse = _field(rng, h, w, 10.0)
    # water: depth variation and wind ripples (anisotropic noise), foam at the shore
    sx, sy = (6.0, 0.8) if rng.random() < 0.5 else (0.8, 6.0)
    ripple = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0),
                              sigmaX=sx, sigmaY=sy)
    ripple /= ripple.std() + 1e-8
    water = _jitter(rng, (0.10, 0.21, 0.26), 0.15)[None, None] * \
        (1 + 0.10 * ripple + 0.12 * coarse)[..., None]
    sand = _jitter(rng, (0.70, 0.62, 0.47), 0.06)[None, None] * \
        (1 + 0.06 * fine + 0.05 * med)[..., None]
    crevice = np.exp(-(_field(rng, h, w, 3.0) / 0.22) ** 2)
    rock = _jitter(rng, (0.43, 0.41, 0.38), 0.08)[None, None] * \
        ((1 + 0.18 * med + 0.14 * coarse + 0.05 * fine) * (1 - 0.35 * crevice))[..., None]
    canvas = weights[0, ..., None] * water + weights[1, ..., None] * sand + \
        weights[2, ..., None] * rock
    foam = np.exp(-((weights[0] - 0.5) / 0.15) ** 2) * np.clip(fine, 0, None) * 0.22
    canvas += foam[..., None]
    return np.clip(canvas, 0, 1).astype(np.float32), weights[0]


def _lighting(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xn, yn = 2 * xx / max(w - 1, 1) - 1, 2 * yy / max(h - 1, 1) - 1
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0, 0.35) * (xn * np.cos(a) + yn * np.sin(a)) / np.sqrt(2)
    vignette = 1 - rng.uniform(0, 0.3) * (xn ** 2 + yn ** 2) / 2
    light = rng.uniform(0.8, 1.15) * grad * vignette
    cast = 1 + rng.normal(0, 0.03, 3).astype(np.float32)
    return light[..., None] * cast[None, None]


# --------------------------------------------------------------------------- animals

def _place(rng, h, w, n, shares, scale, water, pup_near_female, colony=0.6):
    """Draw ``n`` animals (class, centre, size, angle) without heavy overlaps.

    Animals gather in colonies: with probability ``colony`` an animal lies one to
    three body lengths from one already placed, otherwise anywhere on land (a
    few swim). Pups lie against a female with probability ``pup_near_female``.
    """
    names = list(SEALION_CLASSES)
    p = np.array([shares[c] for c in names], dtype=float)
    p /= p.sum()
    drawn = [names[i] for i in rng.choice(len(names), size=n, p=p)]
    # big animals first, pups last (they may lie next to a female)
    drawn.sort(key=lambda c: -LOOKS[c].length)
    placed: list[dict] = []
    land = 1.0 - water
    for cls in drawn:
        look = LOOKS[cls]
        f = scale * rng.uniform(0.9, 1.1)
        length, width = look.length * f, look.width * f * rng.uniform(0.93, 1.07)
        r = length / 2
        females = [a for a in placed if a["class"] == "adult_females"]
        for _ in range(300):
            spacing = 0.95
            if cls == "pups" and females and rng.random() < pup_near_female:
                mom = females[rng.integers(len(females))]
                ang = rng.uniform(0, 2 * np.pi)
                d = (mom["length"] / 2 + r) * rng.uniform(0.8, 1.0)
                x, y = mom["x"] + d * np.cos(ang), mom["y"] + d * np.sin(ang)
                spacing = 0.75
            elif placed and rng.random() < colony:
                near = placed[rng.integers(len(placed))]
                ang = rng.uniform(0, 2 * np.pi)
                d = (near["length"] / 2 + r) * rng.uniform(1.0, 3.0)
                x, y = near["x"] + d * np.cos(ang), near["y"] + d * np.sin(ang)
            else:
                x, y = rng.uniform(1, w - 2), rng.uniform(1, h - 2)
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < w and 0 <= yi < h):
                continue
            if land[yi, xi] < 0.5 and rng.random() > 0.08:  # a few swim
                continue
            if any(math.hypot(xi - a["x"], yi - a["y"]) < spacing * (r + a["length"] / 2)
                   for a in placed):
                continue
            placed.append({"class": cls, "x": xi, "y": yi, "length": float(length),
                           "width": float(width), "angle": float(rng.uniform(0, np.pi * 2))})
            break
        else:
            log.debug("synthetic-sealion: no room for a %s", cls)
    return placed


def _draw_animal(canvas, a, rng, sun, wet=1.0, mask=None, mask_id=0):
    h, w = canvas.shape[:2]
    length, width, th = a["length"], a["width"], a["angle"]
    look = LOOKS[a["class"]]
    R = int(math.ceil(0.62 * length + 4))
    cx, cy = a["x"], a["y"]
    x0, x1, y0, y1 = max(0, cx - R), min(w, cx + R + 1), max(0, cy - R), min(h, cy + R + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(th), np.sin(th)
    half_len = length / 2
    soft = 0.7

    def alpha_at(ox, oy):
        u = (dx - ox) * c + (dy - oy) * s
        v = -(dx - ox) * s + (dy - oy) * c
        hw = np.maximum(width / 2 * (1 - 0.22 * np.clip(u / half_len, -1, 1)), 0.3 * width / 2)
        e = np.sqrt((u / half_len) ** 2 + (v / hw) ** 2)
        body = np.clip(0.5 + (1 - e) * hw / soft, 0, 1)
        hr = look.head * width
        hd = np.hypot(u - 0.38 * length, v)
        head = np.clip(0.5 + (hr - hd) / soft, 0, 1)
        return np.maximum(body, head), u, v

    # cast shadow, then the body
    shadow, _, _ = alpha_at(sun[0] * 0.3 * width, sun[1] * 0.3 * width)
    region = canvas[y0:y1, x0:x1]
    region *= (1 - 0.55 * shadow)[..., None]
    alpha, u, v = alpha_at(0.0, 0.0)
    side = np.clip(-(dx * sun[0] + dy * sun[1]) / (width / 2), -1, 1)
    rim = np.clip(np.hypot(u / half_len, v / (width / 2)), 0, 1) ** 4
    shade = (1 + 0.25 * side + 0.15 * np.exp(-(v / (0.25 * width)) ** 2)) * (1 - 0.3 * rim)
    shade *= 1 + 0.04 * rng.standard_normal(shade.shape).astype(np.float32)
    color = np.asarray(look.color, np.float32) * wet * rng.uniform(0.88, 1.12) * \
        (1 + rng.uniform(-0.04, 0.04, 3)).astype(np.float32)
    body = np.clip(shade[..., None] * color[None, None], 0, 1)
    region[:] = region * (1 - alpha[..., None]) + body * alpha[..., None]
    if mask is not None:
        m = mask[y0:y1, x0:x1]
        m[alpha > 0.5] = mask_id


def make_scene(seed, size=(384, 512), n_animals: int = 20, class_shares=None,
               animal_scale: float = 1.0, pup_near_female: float = 0.5,
               return_mask: bool = False):
    """Render one scene.

    Returns ``(image uint8 (h, w, 3), animals, mask)``: ``animals`` is a list of
    dicts (``class, x, y, length, width, angle``; ``x, y`` is the annotated body
    centre) and ``mask`` (only with ``return_mask``) an int32 map holding ``k + 1``
    where animal ``k`` covers the pixel (0 elsewhere).
    """
    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    shares = _shares(class_shares)
    canvas, water = _terrain(rng, h, w)
    # per photo: flight altitude (ground resolution) and how wet (dark) the animals are
    altitude = rng.uniform(0.9, 1.1)
    wet = rng.uniform(0.85, 1.1)
    animals = _place(rng, h, w, int(n_animals), shares, float(animal_scale) * altitude, water,
                     float(pup_near_female))
    a = rng.uniform(0, 2 * np.pi)
    sun = (float(np.cos(a)), float(np.sin(a)))
    mask = np.zeros((h, w), np.int32) if return_mask else None
    for k, animal in enumerate(animals):
        _draw_animal(canvas, animal, rng, sun, wet, mask, k + 1)
    canvas *= _lighting(rng, h, w)
    canvas += rng.normal(0, 0.012, canvas.shape).astype(np.float32)
    img = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    return img, animals, mask


def _shares(class_shares) -> dict:
    shares = {c: LOOKS[c].share for c in SEALION_CLASSES}
    if class_shares:
        unknown = sorted(set(class_shares) - set(SEALION_CLASSES))
        if unknown:
            raise ConfigError(f"synthetic-sealion: unknown class(es) {unknown} in class_shares",
                              f"known: {', '.join(SEALION_CLASSES)}")
        shares.update({k: float(v) for k, v in class_shares.items()})
        if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
            raise ConfigError(f"synthetic-sealion: class_shares must be >= 0 with a positive "
                              f"sum, got {class_shares}", "e.g. {pups: 0.3, adult_females: 0.4}")
    return shares


def scene_shares(class_shares, class_mix, seed: int, i: int) -> dict:
    """Class shares of scene ``i``: the common ``class_shares``, or with ``class_mix = a`` a draw
    from ``Dirichlet(a * shares)`` (small ``a``: photos differ a lot in their class mix, as a
    rookery full of females and pups differs from a haul-out of bachelor males)."""
    shares = _shares(class_shares)
    if not class_mix:
        return shares
    p = np.array([shares[c] for c in SEALION_CLASSES], dtype=float)
    p /= p.sum()
    alpha = np.maximum(float(class_mix) * p, 1e-3)
    draw = np.random.default_rng([int(seed), int(i), 2]).dirichlet(alpha)
    return dict(zip(SEALION_CLASSES, (float(v) for v in draw)))


def generate_scenes(out_dir, n_scenes: int = 12, scene_size=(384, 512), animals_per_scene=(8, 48),
                    class_shares=None, animal_scale: float = 1.0, pup_near_female: float = 0.5,
                    seed: int = 0, class_mix=None) -> Path:
    """Write ``scene_000.png ...``, ``annotations.csv`` and ``params.json`` to ``out_dir``.

    Scene ``i`` depends only on ``(seed, i)`` and the other parameters, so it is the
    same whatever ``n_scenes`` is. The number of animals of scene ``i`` is uniform in
    ``animals_per_scene``; its class mix is ``class_shares``, or varies per scene with
    ``class_mix`` (:func:`scene_shares`). Returns the path of ``annotations.csv``.
    """
    from PIL import Image

    lo, hi = _check_generator(n_scenes, scene_size, animals_per_scene, animal_scale, seed)
    if class_mix is not None and (isinstance(class_mix, bool) or float(class_mix) <= 0):
        raise ConfigError(f"synthetic-sealion: class_mix must be a positive number or null, got "
                          f"{class_mix!r}", "e.g. class_mix: 4 (smaller = photos differ more)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(int(n_scenes)):
        n = int(np.random.default_rng([int(seed), i, 1]).integers(lo, hi + 1))
        img, animals, _ = make_scene([int(seed), i], scene_size, n,
                                     scene_shares(class_shares, class_mix, seed, i), animal_scale,
                                     pup_near_female)
        name = f"scene_{i:03d}.png"
        Image.fromarray(img).save(out / name)
        rows += [(name, a["x"], a["y"], a["class"]) for a in animals]
    params = dict(generator_version=GENERATOR_VERSION, n_scenes=int(n_scenes),
                  scene_size=[int(v) for v in scene_size], animals_per_scene=[lo, hi],
                  class_shares=_shares(class_shares), animal_scale=float(animal_scale),
                  pup_near_female=float(pup_near_female), seed=int(seed),
                  class_mix=None if class_mix is None else float(class_mix))
    (out / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
    csv = out / "annotations.csv"
    tmp = out / ".annotations.csv.tmp"
    pd.DataFrame(rows, columns=["image", "x", "y", "class"]).to_csv(tmp, index=False)
    os.replace(tmp, csv)
    log.info("synthetic-sealion: wrote %d scenes, %d animals to %s", n_scenes, len(rows), out)
    return csv


def _check_generator(n_scenes, scene_size, animals_per_scene, animal_scale, seed):
    if int(n_scenes) < 1:
        raise ConfigError(f"synthetic-sealion: n_scenes must be >= 1, got {n_scenes}", "e.g. 10")
    try:
        h, w = (int(v) for v in scene_size)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic-sealion: scene_size must be [height, width], got "
                          f"{scene_size!r}", "e.g. [384, 512]") from None
    if h < 64 or w < 64:
        raise ConfigError(f"synthetic-sealion: scene_size {scene_size} is too small",
                          "at least 64 x 64 pixels")
    if isinstance(animals_per_scene, (int, np.integer)):
        lo = hi = int(animals_per_scene)
    else:
        try:
            lo, hi = (int(v) for v in animals_per_scene)
        except (TypeError, ValueError):
            raise ConfigError(f"synthetic-sealion: animals_per_scene must be an integer or "
                              f"[min, max], got {animals_per_scene!r}", "e.g. [14, 28]") from None
    if lo < 0 or hi < lo:
        raise ConfigError(f"synthetic-sealion: animals_per_scene {animals_per_scene} is not a "
                          f"range [min, max] with 0 <= min <= max", "e.g. [14, 28]")
    if float(animal_scale) <= 0:
        raise ConfigError(f"synthetic-sealion: animal_scale must be > 0, got {animal_scale}",
                          "1.0 for 32 px patches, 1.5 for 48 px")
    if int(seed) < 0:
        raise ConfigError(f"synthetic-sealion: seed must be >= 0, got {seed}", "e.g. seed: 0")
    return lo, hi


def cache_root() -> Path:
    """The bench cache folder (:func:`bench.cache.default_dir`: ``$BENCH_CACHE_DIR`` or
    ``~/.cache/bench``); scenes go to its ``synthetic-sealion/`` subfolder."""
    from ..cache import default_dir

    return default_dir()


def scenes_folder(cache_dir=None, **generator) -> Path:
    """Folder of the scenes generated with ``generator`` parameters (generated on first use)."""
    lo, hi = _check_generator(generator["n_scenes"], generator["scene_size"],
                              generator["animals_per_scene"], generator["animal_scale"],
                              generator["seed"])
    ident = dict(generator, generator_version=GENERATOR_VERSION, animals_per_scene=[lo, hi],
                 scene_size=[int(v) for v in generator["scene_size"]],
                 class_shares=_shares(generator.get("class_shares")))
    key = hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=8).hexdigest()
    root = Path(cache_dir).expanduser() if cache_dir else cache_root() / "synthetic-sealion"
    folder = root / key
    if (folder / "annotations.csv").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        generate_scenes(tmp, **generator)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any folder
        try:
            os.replace(tmp, folder)
        except OSError:
            # another process finished first (folder exists and is not empty)
            if not (folder / "annotations.csv").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@DATASETS.register("synthetic-sealion", "Synthetic aerial scenes with five sea-lion classes, "
                                        "cut into patches with the points loader (grouped by scene)")
def synthetic_sealion(n_scenes: int = 12, scene_size=(384, 512), animals_per_scene=(8, 48),
                      class_shares=None, animal_scale: float = 1.0, pup_near_female: float = 0.5,
                      patch_size: int = 32, background_ratio: float = 1.0, min_distance=None,
                      hard_negatives: float = 0.0, border: str = "reflect", max_per_class=None,
                      seed: int = 0, cache_dir=None, class_mix=None) -> Dataset:
    """Synthetic sea-lion scenes (generated once, cached by parameters) as a patch dataset.

    The generator parameters (``n_scenes`` to ``pup_near_female``, ``class_mix`` and
    ``seed``) decide the scenes; the others are passed to :func:`bench.data.points.load_points`.
    ``cache_dir`` defaults to ``$BENCH_CACHE_DIR/synthetic-sealion`` (or
    ``~/.cache/bench/synthetic-sealion``).
    """
    generator = dict(n_scenes=n_scenes, scene_size=scene_size, animals_per_scene=animals_per_scene,
                     class_shares=class_shares, animal_scale=animal_scale,
                     pup_near_female=pup_near_female, seed=seed)
    if class_mix is not None:  # only then: the folders of earlier runs keep their keys
        generator["class_mix"] = class_mix
    folder = scenes_folder(cache_dir, **generator)
    ds = load_points(folder, patch_size=patch_size, classes=list(SEALION_CLASSES),
                     background_ratio=background_ratio, min_distance=min_distance,
                     hard_negatives=hard_negatives, border=border,
                     max_per_class=max_per_class, seed=seed, name="synthetic-sealion")
    ds.meta["generator"] = json.loads((folder / "params.json").read_text())
    ds.meta["folder"] = str(folder)
    return ds


# --------------------------------------------------------------------------- dotted photos

DOTTED_VERSION = "1"  # bump when the points or masked photos of the same inputs change


def dotted_folder(path, train: str = "train", dotted: str = "dotted", cache_dir=None,
                  **dot_options) -> Path:
    """Points and masked photos of a NOAA ``Train`` / ``TrainDotted`` pair of folders (cached).

    Runs :func:`bench.data.dots.points_from_dots` once per content (file hashes of
    both folders + options) into ``<cache>/<key>/``: ``annotations.csv``, one
    ``<stem>.png`` per photo with the region blacked out in its dotted copy set to
    black (animals there carry no dot, so neither the training patches, the tiles nor
    the counted scene may show them) and ``summary.csv`` (dots per class and image).
    """
    import cv2

    from .dots import masked_photo, pair_files, find_dots, read_rgb
    from .points import file_hash

    root = Path(path).expanduser()
    tdir, ddir = root / train, root / dotted
    pairs = pair_files(tdir, ddir)
    ident = dict(version=DOTTED_VERSION, files=[(n, file_hash(a), file_hash(b)) for n, a, b in pairs],
                 options={k: dot_options[k] for k in sorted(dot_options)})
    key = hashlib.blake2b(json.dumps(ident, sort_keys=True, default=str).encode(),
                          digest_size=8).hexdigest()
    base = Path(cache_dir).expanduser() if cache_dir else cache_root() / "noaa-dotted"
    folder = base / key
    if (folder / "annotations.csv").is_file():
        return folder
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=base))
    try:
        frames, summary = [], []
        for name, tp, dp in pairs:
            train_img, dotted_img = read_rgb(tp), read_rgb(dp)
            if train_img.shape != dotted_img.shape:
                raise DataError(f"noaa-dotted: {tp} is {train_img.shape[1]}x{train_img.shape[0]} but "
                                f"{dp} is {dotted_img.shape[1]}x{dotted_img.shape[0]}",
                                "the dotted copy must be the same photo at the same size")
            res = find_dots(train_img, dotted_img, name=name, **dot_options)
            out_name = f"{Path(name).stem}.png"
            cv2.imwrite(str(tmp / out_name), cv2.cvtColor(masked_photo(train_img, res.mask), cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])
            frames.append(res.points.assign(image=out_name))
            counts = res.points["class"].value_counts()
            summary.append({"image": out_name, **{c: int(counts.get(c, 0)) for c in SEALION_CLASSES},
                            "masked_%": round(100 * float(res.mask.mean()), 2)})
        pts = pd.concat(frames, ignore_index=True)
        pts[["image", "x", "y", "class"]].to_csv(tmp / "annotations.csv", index=False)
        pd.DataFrame(summary).to_csv(tmp / "summary.csv", index=False)
        (tmp / "source.json").write_text(json.dumps(dict(ident, path=str(root)), indent=1, default=str))
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "annotations.csv").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@DATASETS.register("noaa-dotted", "NOAA survey photos + dotted copies (Train/TrainDotted): points from "
                                  "the dots, blacked-out regions masked, patches by the points loader")
def noaa_dotted(path, train: str = "train", dotted: str = "dotted", patch_size: int = 64,
                background_ratio: float = 1.0, min_distance=None, hard_negatives: float = 0.0,
                border: str = "reflect", max_per_class=None, detector: str = "components",
                diff_threshold: int = 40, seed: int = 0, cache_dir=None) -> Dataset:
    """Real survey photos as a patch dataset, annotated from their dotted copies.

    ``path`` holds ``<train>/`` (clean photos) and ``<dotted>/`` (the dotted copies,
    same file names); :func:`dotted_folder` turns them into points and masked photos
    once (cached by content); the patches are cut by :func:`bench.data.points.load_points`
    with the five sea-lion classes (a class without dots stays in the label list).
    """
    folder = dotted_folder(path, train, dotted, cache_dir, detector=detector,
                           diff_threshold=int(diff_threshold))
    ds = load_points(folder, patch_size=patch_size, classes=list(SEALION_CLASSES),
                     background_ratio=background_ratio, min_distance=min_distance,
                     hard_negatives=hard_negatives, border=border, max_per_class=max_per_class,
                     seed=seed, name="noaa-dotted")
    ds.meta["folder"] = str(folder)
    ds.meta["dots"] = pd.read_csv(folder / "summary.csv").to_dict("records")
    return ds


# --------------------------------------------------------------------------- real chips

def _chip_files(path) -> list[tuple[str, Path]]:
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"chips folder {root} not found", "expected <path>/<class>/<photo>_<class>_<n>.png")
    files = [(d.name, f) for d in sorted(root.iterdir()) if d.is_dir()
             for f in sorted(d.iterdir()) if f.suffix.lower() in (".png", ".jpg", ".jpeg")]
    if not files:
        raise DataError(f"no chip images under {root}", "expected <path>/<class>/*.png")
    return files


def chip_photo_id(filename) -> str:
    """Photo id of a chip: the prefix before the first ``_`` (``41_pups_3.png`` -> ``41``)."""
    return Path(filename).name.split("_", 1)[0]


def chip_size_table(path) -> pd.DataFrame:
    """Chips per ``(class, height, width)``: shows whether crop size gives the class away.

    Columns ``class, height, width, count, share_of_class``; sizes are read from the
    file headers.
    """
    from PIL import Image

    rows = []
    for cls, f in _chip_files(path):
        with Image.open(f) as im:
            w, h = im.size
        rows.append((cls, h, w))
    df = pd.DataFrame(rows, columns=["class", "height", "width"])
    table = df.value_counts().rename("count").reset_index()
    table["share_of_class"] = table["count"] / table.groupby("class")["count"].transform("sum")
    return table.sort_values(["class", "count"], ascending=[True, False]).reset_index(drop=True)


def load_chips(path) -> dict:
    """All chips in memory: ``images`` (RGB uint8), ``labels``, ``class_names``, ``groups``
    (photo id), ``sizes`` (``(n, 2)`` original ``h, w``) and ``files``."""
    from .points import read_scene

    files = _chip_files(path)
    class_names = sorted({c for c, _ in files})
    images = [read_scene(f) for _, f in files]
    return {
        "images": images,
        "labels": np.array([class_names.index(c) for c, _ in files]),
        "class_names": class_names,
        "groups": np.array([chip_photo_id(f) for _, f in files]),
        "sizes": np.array([im.shape[:2] for im in images]),
        "files": [str(f) for _, f in files],
    }


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Central ``size x size`` square at native resolution (no resampling)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size} px from a {h}x{w} image")
    y0, x0 = (h - size) // 2, (w - size) // 2
    return img[y0:y0 + size, x0:x0 + size]


def _color_hist(img, bins=16):
    return np.concatenate([np.histogram(img[..., c], bins=bins, range=(0, 256))[0]
                           for c in range(3)]).astype(np.float32) / (img.shape[0] * img.shape[1])


def _hog(img):
    from skimage.feature import hog

    gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    cell = gray.shape[0] // 4
    return hog(gray, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
               feature_vector=True).astype(np.float32)


def _sharpness(img):
    """Resampling fingerprint: Laplacian and gradient energy of the gray image."""
    gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    mag = np.hypot(gx, gy)
    return np.array([np.abs(lap).mean(), mag.mean(), np.abs(lap).mean() / (mag.mean() + 1e-6),
                     gray.std()], np.float32)


CHIP_FEATURES = {
    "color-hist": _color_hist,
    "hog": _hog,
    "color-hist+hog": lambda im: np.concatenate([_color_hist(im), _hog(im)]),
    "sharpness-probe": _sharpness,
}


def _chip_classifier(name, n_estimators, seed, n_jobs):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "random_forest":
        return RandomForestClassifier(n_estimators=n_estimators, class_weight="balanced_subsample",
                                      random_state=seed, n_jobs=n_jobs)
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1,
                                                                  class_weight="balanced"))
    raise ConfigError(f"unknown classifier {name!r}", "random_forest or logreg")


def chip_leak_experiment(path, resize: int = 64, crop: int | None = None, n_splits: int = 5,
                         seed: int = 0, features=None, splitters=("grouped", "random"),
                         classifiers=("random_forest", "logreg"), n_estimators: int = 200,
                         n_jobs: int = 1) -> pd.DataFrame:
    """Does classification of the chips rest on their original crop size?

    Rows per classifier (random forest with ``class_weight='balanced_subsample'``,
    standardised logistic regression with balanced class weights); balanced
    accuracy and macro-F1 of the pooled out-of-fold predictions, since a photo
    fold may lack a class; ``fold_std`` is the spread of the per-fold balanced
    accuracy:

    * ``original`` / ``size [h, w]``: the original crop size as the only feature
      (the leak);
    * ``resize-<s>``: every chip resized to ``s x s`` (what ``prepare: size`` does,
      :class:`bench.imaging.Prepare`), then image features;
    * ``center-crop-<c>``: the central ``c x c`` pixels at native resolution
      (``c`` = smallest chip side by default): no resampling, same field of view
      for every class, the size cue is gone.

    ``sharpness-probe`` (Laplacian/gradient energy) measures how much of the
    original size survives resampling as blur (upsampled pups) or sharpness
    (downsampled males). ``grouped`` splits by photo (StratifiedGroupKFold);
    ``random`` (StratifiedKFold) is the leaky protocol, shown for comparison.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from ..imaging import Prepare

    chips = load_chips(path)
    y, groups = chips["labels"], chips["groups"]
    crop = int(crop or chips["sizes"].min())
    features = list(CHIP_FEATURES if features is None else features)
    prep = Prepare(size=(resize, resize))
    variants = {
        f"resize-{resize}": [prep(im) for im in chips["images"]],
        f"center-crop-{crop}": [center_crop(im, crop) for im in chips["images"]],
    }
    matrices = [("original", "size [h, w]", chips["sizes"].astype(np.float32))]
    for vname, imgs in variants.items():
        shapes = np.array([im.shape[:2] for im in imgs], dtype=np.float32)
        assert len(np.unique(shapes, axis=0)) == 1  # one size after preparation
        matrices.append((vname, "size [h, w]", shapes))
        for fname in features:
            fn = CHIP_FEATURES[fname]
            matrices.append((vname, fname, np.stack([fn(im) for im in imgs])))

    rows = []
    for splitter in splitters:
        if splitter == "grouped":
            folds = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
                         .split(y, y, groups))
        elif splitter == "random":
            folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(y, y))
        else:
            raise ConfigError(f"unknown splitter {splitter!r}", "grouped or random")
        for vname, fname, X in matrices:
            for cname in classifiers:
                pred = np.empty_like(y)
                fold_bacc = []
                for tr, te in folds:
                    clf = _chip_classifier(cname, n_estimators, seed, n_jobs)
                    clf.fit(X[tr], y[tr])
                    pred[te] = clf.predict(X[te])
                    with warnings.catch_warnings():  # a photo fold may lack a class
                        warnings.simplefilter("ignore", UserWarning)
                        fold_bacc.append(balanced_accuracy_score(y[te], pred[te]))
                rows.append({"images": vname, "feature": fname, "classifier": cname,
                             "splitter": splitter,
                             "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                             "macro_f1": float(f1_score(y, pred, average="macro")),
                             "fold_std": float(np.std(fold_bacc)), "n_folds": len(folds)})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    """``python -m bench.data.sealion chips <path>`` prints the size table and the experiment;
    ``python -m bench.data.sealion scenes <out_dir> [--n-scenes N] [--seed S]`` writes scenes."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.data.sealion")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chips", help="crop-size leak check of a sea-lion chips folder")
    c.add_argument("path")
    c.add_argument("--resize", type=int, default=64)
    c.add_argument("--crop", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("scenes", help="write synthetic scenes and annotations.csv")
    s.add_argument("out_dir")
    s.add_argument("--n-scenes", type=int, default=12)
    s.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "chips":
        table = chip_size_table(args.path)
        print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
        res = chip_leak_experiment(args.path, resize=args.resize, crop=args.crop, seed=args.seed)
        res = res.round(3)
        print()
        print(res.to_markdown(index=False) if _has_tabulate() else res.to_string(index=False))
    else:
        print(generate_scenes(args.out_dir, n_scenes=args.n_scenes, seed=args.seed))
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

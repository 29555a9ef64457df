"""Synthetic sea-lion scenes (determinism, class appearance, caching, the patch dataset)
and the crop-size leak of the real sea-lion chips."""
import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from sklearn.model_selection import StratifiedGroupKFold

from bench.data.sealion import (LOOKS, SEALION_CLASSES, center_crop, chip_leak_experiment,
                                chip_photo_id, chip_size_table, generate_scenes, load_chips,
                                make_scene, scenes_folder, synthetic_sealion)
from bench.errors import ConfigError
from bench.imaging import Prepare
from bench.registry import DATASETS

SMALL = dict(n_scenes=3, scene_size=(128, 160), animals_per_scene=(8, 12))


# --------------------------------------------------------------- generator
def test_generate_scenes_is_deterministic(tmp_path):
    a = generate_scenes(tmp_path / "a", seed=4, **SMALL)
    b = generate_scenes(tmp_path / "b", seed=4, **SMALL)
    c = generate_scenes(tmp_path / "c", seed=5, **SMALL)
    assert a.read_text() == b.read_text() and a.read_text() != c.read_text()
    for k in range(3):
        name = f"scene_{k:03d}.png"
        pa, pb, pc = (np.asarray(Image.open(d.parent / name)) for d in (a, b, c))
        np.testing.assert_array_equal(pa, pb)
        assert pa.shape == (128, 160, 3) and pa.dtype == np.uint8
        assert not np.array_equal(pa, pc)
    df = pd.read_csv(a)
    assert list(df.columns) == ["image", "x", "y", "class"]
    assert set(df["class"]) <= set(SEALION_CLASSES)
    assert df.groupby("image").size().between(1, 12).all()
    assert json.loads((a.parent / "params.json").read_text())["seed"] == 4


def test_scene_k_does_not_depend_on_the_number_of_scenes(tmp_path):
    a = generate_scenes(tmp_path / "a", seed=1, **dict(SMALL, n_scenes=2))
    b = generate_scenes(tmp_path / "b", seed=1, **SMALL)
    np.testing.assert_array_equal(np.asarray(Image.open(a.parent / "scene_001.png")),
                                  np.asarray(Image.open(b.parent / "scene_001.png")))


def _animal_pixels(n_scenes=6):
    """Per class: areas (pixels) and mean luminance of every rendered animal."""
    area, lum = defaultdict(list), defaultdict(list)
    for s in range(n_scenes):
        img, animals, mask = make_scene([s, 7], (160, 200), 24, return_mask=True)
        gray = img.astype(float).mean(2)
        for k, a in enumerate(animals):
            m = mask == k + 1
            if m.sum() < 5:
                continue
            area[a["class"]].append(m.sum())
            lum[a["class"]].append(gray[m].mean())
    return ({c: np.mean(v) for c, v in area.items()}, {c: np.mean(v) for c, v in lum.items()})


def test_classes_differ_as_the_real_animals_do():
    area, lum = _animal_pixels()
    assert set(area) == set(SEALION_CLASSES)
    # size: adult males > subadult males > adult females > juveniles > pups
    order = ["adult_males", "subadult_males", "adult_females", "juveniles", "pups"]
    assert [area[c] for c in order] == sorted(area.values(), reverse=True), area
    # colour: adult males darkest of the grown-ups, females and juveniles alike, pups dark
    assert lum["adult_males"] < lum["subadult_males"] < lum["adult_females"]
    assert abs(lum["adult_females"] - lum["juveniles"]) < 0.1 * lum["adult_females"]
    assert lum["pups"] < 0.7 * lum["juveniles"]


def test_a_32px_patch_contains_the_largest_body():
    biggest = LOOKS["adult_males"].length * 1.1 * 1.1   # per-animal and per-scene jitter
    assert biggest < 32


def test_generator_parameter_errors(tmp_path):
    with pytest.raises(ConfigError, match="animals_per_scene"):
        generate_scenes(tmp_path, n_scenes=1, animals_per_scene=(5, 2))
    with pytest.raises(ConfigError, match="scene_size"):
        generate_scenes(tmp_path, n_scenes=1, scene_size=(10, 10))
    with pytest.raises(ConfigError, match="class_shares"):
        generate_scenes(tmp_path, n_scenes=1, class_shares={"walrus": 1})


def test_class_shares_steer_the_mix(tmp_path):
    csv = generate_scenes(tmp_path, seed=0, class_shares={c: 0 for c in SEALION_CLASSES[1:]}, **SMALL)
    assert set(pd.read_csv(csv)["class"]) == {"adult_males"}


def test_class_mix_varies_the_mix_per_scene(tmp_path):
    """class_mix draws each scene's class shares from a Dirichlet: the share of adult
    females varies much more across scenes than with the fixed shares; null keeps them."""
    from bench.data.sealion import scene_shares

    fixed = [scene_shares(None, None, 0, i) for i in range(40)]
    mixed = [scene_shares(None, 2.0, 0, i) for i in range(40)]
    assert all(f == fixed[0] for f in fixed)
    fem = np.array([m["adult_females"] for m in mixed])
    assert fem.std() > 0.1 and all(abs(sum(m.values()) - 1) < 1e-9 for m in mixed)
    assert scene_shares(None, 2.0, 0, 3) == mixed[3] != scene_shares(None, 2.0, 1, 3)
    a = pd.read_csv(generate_scenes(tmp_path / "a", n_scenes=4, scene_size=(96, 128),
                                    animals_per_scene=(30, 30), seed=0, class_mix=0.5))
    b = pd.read_csv(generate_scenes(tmp_path / "b", n_scenes=4, scene_size=(96, 128),
                                    animals_per_scene=(30, 30), seed=0))
    share = lambda df: df.groupby("image")["class"].apply(lambda c: (c == "adult_females").mean())  # noqa: E731
    assert share(a).std() > share(b).std()
    with pytest.raises(ConfigError, match="class_mix"):
        generate_scenes(tmp_path / "c", n_scenes=1, class_mix=-1)


# --------------------------------------------------------------- the dataset
def test_synthetic_sealion_dataset_is_cached_and_grouped(tmp_path):
    ds = DATASETS.create("synthetic-sealion", cache_dir=str(tmp_path), seed=2, patch_size=32, **SMALL)
    folder = tmp_path / next(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    mtime = (folder / "annotations.csv").stat().st_mtime_ns
    again = synthetic_sealion(cache_dir=tmp_path, seed=2, patch_size=32, **SMALL)
    assert (folder / "annotations.csv").stat().st_mtime_ns == mtime      # reused, not rewritten
    assert again.keys == ds.keys
    assert ds.name == "synthetic-sealion" and ds.class_names == list(SEALION_CLASSES) + ["background"]
    assert set(ds.groups) == {f"scene_{k:03d}.png" for k in range(3)}
    assert ds.load(0).shape == (32, 32, 3)
    assert ds.meta["generator"]["seed"] == 2
    # other patch parameters reuse the same scenes
    other = synthetic_sealion(cache_dir=tmp_path, seed=2, patch_size=48, **SMALL)
    assert other.meta["folder"] == ds.meta["folder"] and other.load(0).shape == (48, 48, 3)
    # a different seed is a different folder
    assert scenes_folder(tmp_path, seed=3, class_shares=None, animal_scale=1.0, pup_near_female=0.5,
                         **SMALL) != folder


def test_synthetic_patches_grouped_splits_and_background_distance(tmp_path):
    ds = synthetic_sealion(cache_dir=tmp_path, seed=0, n_scenes=4, scene_size=(128, 160),
                           animals_per_scene=(10, 14), min_distance=20)
    table, pts = ds.meta["patches"], ds.meta["points"]
    for scene, g in table[table["label"] == ds.meta["background_index"]].groupby("scene"):
        a = pts[pts["image"] == scene][["x", "y"]].to_numpy(float)
        assert cdist(g[["x", "y"]].to_numpy(float), a).min() >= 20
    for train, test in StratifiedGroupKFold(4).split(np.zeros(len(ds)), ds.labels, ds.groups):
        assert set(ds.groups[train]).isdisjoint(ds.groups[test])
    # an animal patch is darker or lighter in its centre than its own border ring:
    # the annotated point really is on an animal
    diffs = []
    for i in np.flatnonzero(ds.labels != ds.meta["background_index"])[:40]:
        p = ds.load(i).astype(float).mean(2)
        diffs.append(abs(p[13:19, 13:19].mean() - np.r_[p[:3].ravel(), p[-3:].ravel()].mean()))
    bg = [abs((p := ds.load(i).astype(float).mean(2))[13:19, 13:19].mean()
              - np.r_[p[:3].ravel(), p[-3:].ravel()].mean())
          for i in np.flatnonzero(ds.labels == ds.meta["background_index"])[:40]]
    assert np.median(diffs) > 2 * np.median(bg)


# --------------------------------------------------------------- real chips
def test_chip_photo_id():
    assert chip_photo_id("/x/pups/41_pups_3.png") == "41"
    assert chip_photo_id("43_adult_males_10.png") == "43"


def test_center_crop():
    img = np.arange(10 * 12).reshape(10, 12)
    np.testing.assert_array_equal(center_crop(img, 4), img[3:7, 4:8])
    with pytest.raises(ValueError):
        center_crop(img, 11)


def _chips(shared_data):
    path = shared_data / "sea_lion_chips"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def test_chip_sizes_give_the_class_away(shared_data):
    path = _chips(shared_data)
    table = chip_size_table(path)
    modal = table.sort_values("count", ascending=False).groupby("class").head(1).set_index("class")
    assert modal["height"].to_dict() == {"adult_females": 80, "adult_males": 120, "juveniles": 60,
                                         "pups": 40, "subadult_males": 100}
    assert (modal["share_of_class"] > 0.95).all()
    assert table["count"].sum() == 1229


def test_size_leak_and_its_removal_on_chips(shared_data):
    """The original size alone classifies the chips; prepared chips all have one size."""
    path = _chips(shared_data)
    res = chip_leak_experiment(path, features=[], splitters=("grouped",), classifiers=("random_forest",),
                               n_estimators=50)
    score = res[res["feature"] == "size [h, w]"].set_index("images")["balanced_accuracy"]
    assert score["original"] > 0.95               # the leak
    assert score["resize-64"] < 0.3 and score["center-crop-40"] < 0.3  # size is gone (chance 0.2)
    chips = load_chips(path)
    assert len(chips["images"]) == 1229 and len(set(chips["groups"])) == 10
    prep = Prepare(size=(64, 64))
    assert {prep(im).shape for im in chips["images"][::50]} == {(64, 64, 3)}


@pytest.mark.slow
def test_resampling_fingerprint_is_weaker_after_center_crop(shared_data):
    """Resizing leaves the original size readable as blur/sharpness; cropping does not."""
    path = _chips(shared_data)
    res = chip_leak_experiment(path, features=["sharpness-probe"], splitters=("grouped",),
                               classifiers=("random_forest",))
    s = res[res["feature"] == "sharpness-probe"].set_index("images")["balanced_accuracy"]
    assert s["resize-64"] > s["center-crop-40"] + 0.05

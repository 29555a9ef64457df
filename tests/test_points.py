"""The ``points`` dataset: CSV validation, patch cutting and borders, background sampling,
grouped splits, keys and laziness."""
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from sklearn.model_selection import StratifiedGroupKFold

from bench.data.points import (BACKGROUND, PatchLoader, cut_patch, load_points, read_annotations,
                               sample_background)
from bench.errors import ConfigError, DataError
from bench.registry import DATASETS


def _scene(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_folder(root, points, sizes=None, csv_name="annotations.csv"):
    """Scenes ``a.png`` (120x160) and ``b.png`` (100x90) with random pixels + the CSV."""
    sizes = sizes or {"a.png": (120, 160), "b.png": (100, 90)}
    scenes = {}
    for k, (name, (h, w)) in enumerate(sizes.items()):
        scenes[name] = _scene(h, w, k)
        Image.fromarray(scenes[name]).save(root / name)
    pd.DataFrame(points, columns=["image", "x", "y", "class"]).to_csv(root / csv_name, index=False)
    return scenes


POINTS = [("a.png", 40, 50, "cat"), ("a.png", 100, 60, "dog"), ("a.png", 2, 3, "dog"),
          ("b.png", 45, 50, "cat"), ("b.png", 80, 90, "cat")]


# --------------------------------------------------------------- CSV validation
def _csv(tmp_path, text):
    _write_folder(tmp_path, POINTS)
    (tmp_path / "annotations.csv").write_text(text)
    return tmp_path / "annotations.csv"


@pytest.mark.parametrize("text,needles", [
    ("image,x,class\na.png,1,cat\n", ["annotations.csv", "missing column", "y"]),
    ("image,x,y,class\na.png,1,2,cat\na.png,abc,2,cat\n", ["line 3", "'x'", "'abc'", "not a number"]),
    ("image,x,y,class\na.png,1,,cat\n", ["line 2", "'y'"]),
    ("image,x,y,class\na.png,1,-5,cat\n", ["line 2", "'y'", "negative"]),
    ("image,x,y,class\na.png,1,2,cat\nzz.png,1,2,cat\n", ["line 3", "'image'", "zz.png", "not found"]),
    ("image,x,y,class\na.png,1,2,\n", ["line 2", "'class'", "empty"]),
    ("image,x,y,class\na.png,1,2,background\n", ["line 2", "'class'", "reserved"]),
    ("image,x,y,class\na.png,1,2,cat\nb.png,95,2,cat\n", ["line 3", "'x'", "95", "outside", "90x100"]),
    ("image,x,y,class\n", ["no annotation rows"]),
])
def test_csv_errors_name_file_line_and_column(tmp_path, text, needles):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_annotations(path)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert err.value.hint


def test_csv_reading_rounds_coordinates_and_resolves_stems(tmp_path):
    _write_folder(tmp_path, POINTS)
    (tmp_path / "annotations.csv").write_text("image,x,y,class,extra\na,1.6,2.4,cat,zz\nb.png,0,0,dog,\n")
    df = read_annotations(tmp_path / "annotations.csv")
    assert df[["x", "y"]].to_numpy().tolist() == [[2, 2], [0, 0]]
    assert df["path"].iloc[0].endswith("a.png")
    assert list(df.columns) == ["image", "x", "y", "class", "path"]


def test_missing_csv_and_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_points(tmp_path / "nope")
    with pytest.raises(DataError, match="annotations.csv"):
        load_points(tmp_path)


def test_classes_param_checks(tmp_path):
    _write_folder(tmp_path, POINTS)
    with pytest.raises(DataError, match=r"line 3.*'class'.*'dog'"):
        load_points(tmp_path, classes=["cat"])
    with pytest.raises(ConfigError, match="background"):
        load_points(tmp_path, classes=["cat", "background"])
    with pytest.raises(ConfigError, match="duplicate"):
        load_points(tmp_path, classes=["cat", "cat", "dog"])


@pytest.mark.parametrize("params,needle", [
    ({"patch_size": 1}, "patch_size"), ({"border": "wrap"}, "border"),
    ({"background_ratio": -1}, "background_ratio"), ({"min_distance": -2}, "min_distance"),
    ({"hard_negatives": 1.5}, "hard_negatives"), ({"max_per_class": 0}, "max_per_class"),
])
def test_bad_parameters_raise_config_errors(tmp_path, params, needle):
    _write_folder(tmp_path, POINTS)
    with pytest.raises(ConfigError, match=needle):
        load_points(tmp_path, **params)


# --------------------------------------------------------------- patches and borders
def test_patches_labels_groups_and_meta(tmp_path):
    scenes = _write_folder(tmp_path, POINTS)
    ds = DATASETS.create("points", path=str(tmp_path), patch_size=16, background_ratio=1.0, seed=3)
    assert ds.class_names == ["cat", "dog", BACKGROUND]
    assert ds.modality == "rgb"
    pts = ds.meta["patches"]
    assert len(ds) == 10 and (pts["kind"] == "point").sum() == 5
    assert np.bincount(ds.labels).tolist() == [3, 2, 5]
    assert set(ds.groups) == {"a.png", "b.png"}
    # background patches per image: background_ratio x animals of that image
    assert pts[pts["label"] == 2].groupby("scene").size().to_dict() == {"a.png": 3, "b.png": 2}
    # a patch centred on an interior point is the plain crop
    i = int(np.flatnonzero((pts["scene"] == "a.png") & (pts["x"] == 40))[0])
    np.testing.assert_array_equal(ds.load(i), scenes["a.png"][50 - 8:50 + 8, 40 - 8:40 + 8])
    assert ds.load(i).shape == (16, 16, 3) and ds.load(i).dtype == np.uint8
    assert ds.meta["patch_size"] == 16 and ds.meta["background_index"] == 2
    assert ds.meta["points"][["image", "x", "y", "class"]].shape == (5, 4)
    assert [s["id"] for s in ds.meta["scenes"]] == ["a.png", "b.png"]


@pytest.mark.parametrize("size", [16, 15])
def test_reflect_and_zero_borders_match_numpy_padding(size):
    scene = _scene(20, 25, 7)
    half = size // 2
    pad = ((half, size - half), (half, size - half), (0, 0))
    ref = {"reflect": np.pad(scene, pad, mode="reflect"), "zero": np.pad(scene, pad)}
    for border, padded in ref.items():
        for x, y in [(0, 0), (24, 19), (3, 10), (12, 1), (24, 0)]:
            got = cut_patch(scene, x, y, size, border)
            np.testing.assert_array_equal(got, padded[y:y + size, x:x + size], err_msg=f"{border} {x},{y}")


def test_reflect_border_on_patch_larger_than_image_matches_cv2():
    import cv2
    scene = _scene(5, 6, 1)
    big = cv2.copyMakeBorder(scene, 30, 30, 30, 30, cv2.BORDER_REFLECT_101)
    for x, y in [(0, 0), (5, 4), (2, 3)]:
        np.testing.assert_array_equal(cut_patch(scene, x, y, 21, "reflect"),
                                      big[30 + y - 10:30 + y + 11, 30 + x - 10:30 + x + 11])


def test_drop_border_drops_points_and_keeps_background_inside(tmp_path):
    _write_folder(tmp_path, POINTS)
    ds = load_points(tmp_path, patch_size=16, border="drop", background_ratio=3)
    pts = ds.meta["patches"]
    assert not ((pts["scene"] == "a.png") & (pts["x"] == 2)).any()   # (2, 3) leaves the image
    assert (pts["kind"] == "point").sum() == 4
    for i in range(len(ds)):
        assert ds.load(i).shape == (16, 16, 3)
    for _, r in pts.iterrows():
        w, h = (160, 120) if r["scene"] == "a.png" else (90, 100)
        assert 8 <= r["x"] <= w - 8 and 8 <= r["y"] <= h - 8
    # every annotated point still counts for the per-image truth
    assert len(ds.meta["points"]) == 5


def test_pad_is_an_alias_of_reflect(tmp_path):
    _write_folder(tmp_path, POINTS)
    a = load_points(tmp_path, patch_size=16, border="pad")
    b = load_points(tmp_path, patch_size=16, border="reflect")
    assert a.keys == b.keys and a.meta["border"] == "reflect"


# --------------------------------------------------------------- background sampling
def test_background_keeps_min_distance_from_every_point(tmp_path):
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 160, 12), rng.integers(0, 120, 12)
    pts = [("a.png", int(x), int(y), "cat") for x, y in zip(xs, ys)]
    _write_folder(tmp_path, pts + [("b.png", 45, 50, "dog")])
    ds = load_points(tmp_path, patch_size=16, min_distance=20, background_ratio=2.0, hard_negatives=0.5)
    table = ds.meta["patches"]
    for scene, g in table.groupby("scene"):
        ann = ds.meta["points"]
        a = ann[ann["image"] == scene][["x", "y"]].to_numpy(float)
        bgc = g[g["label"] == ds.meta["background_index"]][["x", "y"]].to_numpy(float)
        assert len(bgc)
        assert cdist(bgc, a).min() >= 20
    # hard negatives lie in the ring min_distance .. min_distance + patch_size / 2
    near = table[table["kind"] == "near-background"]
    assert len(near) > 0
    for _, r in near.iterrows():
        ann = ds.meta["points"]
        a = ann[ann["image"] == r["scene"]][["x", "y"]].to_numpy(float)
        d = np.hypot(a[:, 0] - r["x"], a[:, 1] - r["y"]).min()
        assert 20 <= d <= 20 + 8 + 1


def test_sample_background_returns_fewer_when_no_room():
    rng = np.random.default_rng(0)
    pts = np.array([[10, 10]])
    got = sample_background(pts, 20, 20, 50, 100.0, 8, "reflect", rng)
    assert got.shape == (0, 2)
    got = sample_background(pts, 40, 40, 5, 12.0, 8, "reflect", rng)
    assert got.shape == (5, 2) and len({tuple(p) for p in got}) == 5
    assert (np.hypot(*(got - pts).T) >= 12).all()


def test_background_sampling_is_seeded(tmp_path):
    _write_folder(tmp_path, POINTS)
    a = load_points(tmp_path, patch_size=16, seed=1)
    b = load_points(tmp_path, patch_size=16, seed=1)
    c = load_points(tmp_path, patch_size=16, seed=2)
    assert a.keys == b.keys and a.keys != c.keys


def test_max_per_class_caps_every_class(tmp_path):
    pts = [("a.png", 10 + 12 * k, 60, "cat") for k in range(10)] + [("b.png", 45, 50, "dog")]
    _write_folder(tmp_path, pts)
    ds = load_points(tmp_path, patch_size=8, min_distance=4, max_per_class=4)
    assert np.bincount(ds.labels).tolist() == [4, 1, 4]
    assert len(ds.meta["points"]) == 11


# --------------------------------------------------------------- grouped splits
def test_grouped_kfold_never_puts_a_test_scene_in_training(tmp_path):
    rng = np.random.default_rng(1)
    sizes, pts = {}, []
    for k in range(6):
        name = f"s{k}.png"
        sizes[name] = (64, 64)
        for _ in range(6):
            x, y, c = rng.integers(0, 64), rng.integers(0, 64), ["a", "b"][int(rng.integers(2))]
            pts.append((name, int(x), int(y), c))
    _write_folder(tmp_path, pts, sizes)
    ds = load_points(tmp_path, patch_size=16, min_distance=4)
    splitter = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)
    for train, test in splitter.split(np.zeros(len(ds)), ds.labels, ds.groups):
        assert set(ds.groups[train]).isdisjoint(ds.groups[test])
        # and therefore no patch pixels of a test scene were seen in training
        assert {ds.ids[i].split("@")[0] for i in test}.isdisjoint({ds.ids[i].split("@")[0] for i in train})


# --------------------------------------------------------------- keys, laziness, pickling
def test_keys_follow_content_position_size_and_border(tmp_path):
    _write_folder(tmp_path, POINTS)
    a = load_points(tmp_path, patch_size=16)
    assert len(set(a.keys)) == len(a)
    b = load_points(tmp_path, patch_size=18)
    c = load_points(tmp_path, patch_size=16, border="zero")
    assert not set(a.keys) & set(b.keys) and not set(a.keys) & set(c.keys)
    # changing the pixels of one scene changes exactly that scene's keys
    Image.fromarray(_scene(120, 160, 99)).save(tmp_path / "a.png")
    d = load_points(tmp_path, patch_size=16)
    same = [k1 == k2 for k1, k2 in zip(a.keys, d.keys)]
    assert same == [g == "b.png" for g in a.groups]


def test_loader_caches_scenes_and_pickles(tmp_path, monkeypatch):
    _write_folder(tmp_path, POINTS)
    ds = load_points(tmp_path, patch_size=16)
    calls = []
    import bench.data.points as points_mod
    real = points_mod.read_scene
    monkeypatch.setattr(points_mod, "read_scene", lambda p: calls.append(p) or real(p))
    first = [ds.load(i) for i in range(len(ds))]
    assert len(calls) == 2                       # one decode per scene in order
    loader = pickle.loads(pickle.dumps(ds.loader))
    assert isinstance(loader, PatchLoader) and not loader._cache
    for i in range(len(ds)):
        np.testing.assert_array_equal(loader(i), first[i])

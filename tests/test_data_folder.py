"""The ``folder`` dataset: formats, layout rules, groups, errors, keys, laziness, real data."""
import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bench.data.datasets  # noqa: F401  (registers the loaders)
from bench.data import folder as folder_mod
from bench.data.folder import decode_image, folder_dataset, read_image, subsample_per_class
from bench.errors import ConfigError, DataError
from bench.registry import DATASETS
from data_helpers import make_tree, rng_image, write, write_cv2, write_palette_gif


# ---------------------------------------------------------------- decoding ---
def _bytes(tmp_path, name, arr, **kw):
    return write(tmp_path / name, arr, **kw).read_bytes()


@pytest.mark.parametrize("name,arr", [
    ("g.png", rng_image((9, 7))),
    ("c.png", rng_image((9, 7, 3))),
    ("g.bmp", rng_image((9, 7))),
    ("c.bmp", rng_image((9, 7, 3))),
    ("g16.png", rng_image((9, 7), np.uint16)),
    ("g16.tif", rng_image((9, 7), np.uint16)),
    ("f.tif", rng_image((9, 7), np.float32)),
    ("c.tif", rng_image((9, 7, 3))),
])
def test_lossless_formats_roundtrip_exactly(tmp_path, name, arr):
    out = decode_image(_bytes(tmp_path, name, arr), name)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("name,arr", [
    ("c16.png", rng_image((9, 7, 3), np.uint16, seed=1)),   # Pillow would keep 8 bits: OpenCV path
    ("c16.tif", rng_image((9, 7, 3), np.uint16, seed=2)),
    ("cf.tif", rng_image((9, 7, 3), np.float32, seed=3)),   # Pillow cannot open it
])
def test_deep_colour_png_tiff_keep_their_depth(tmp_path, name, arr):
    out = decode_image(write_cv2(tmp_path / name, arr).read_bytes(), name)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)  # RGB order, not OpenCV's BGR


def test_rgba_drops_alpha_and_la_gives_gray(tmp_path):
    rgba = rng_image((6, 5, 4))
    out = decode_image(_bytes(tmp_path, "a.png", rgba), "a.png")
    np.testing.assert_array_equal(out, rgba[..., :3])
    la = Image.fromarray(rgba[..., :2].copy(), mode="LA")
    la.save(tmp_path / "la.png")
    out = decode_image((tmp_path / "la.png").read_bytes(), "la.png")
    np.testing.assert_array_equal(out, rgba[..., 0])


def test_palette_gif_gray_and_colour(tmp_path):
    idx = rng_image((10, 8)) % 16
    gray_pal = np.repeat(np.arange(0, 256, 16)[:, None], 3, 1)
    out = decode_image(write_palette_gif(tmp_path / "g.gif", idx, gray_pal).read_bytes(), "g.gif")
    assert out.shape == (10, 8) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, gray_pal[idx, 0])
    col_pal = rng_image((16, 3), seed=5)
    out = decode_image(write_palette_gif(tmp_path / "c.gif", idx, col_pal).read_bytes(), "c.gif")
    assert out.shape == (10, 8, 3)
    np.testing.assert_array_equal(out, col_pal[idx])


def test_palette_png_with_transparency_gives_rgb_without_warning(tmp_path, recwarn):
    idx = (rng_image((6, 6)) % 4).astype(np.uint8)
    pal = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(pal.ravel().tolist())
    im.save(tmp_path / "t.png", transparency=3)
    out = decode_image((tmp_path / "t.png").read_bytes(), "t.png")
    np.testing.assert_array_equal(out, pal[idx])
    assert not [w for w in recwarn if "ransparency" in str(w.message)]


def test_jpeg_matches_pillow_and_is_close_to_source(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    arr = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).astype(np.uint8)
    data = _bytes(tmp_path, "c.jpg", arr, quality=95)
    out = decode_image(data, "c.jpg")
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(out.astype(int) - arr).mean() < 3


def test_npy_depth_and_integer_arrays(tmp_path):
    depth = rng_image((5, 6), np.float64) * 1000
    depth[0, 0] = np.nan
    out = decode_image(_bytes(tmp_path, "d.npy", depth), "d.npy")
    assert out.dtype == np.float32 and out[0, 0] == 0.0
    np.testing.assert_allclose(out[1:], depth[1:], rtol=1e-6)
    gray = rng_image((5, 6))
    np.testing.assert_array_equal(decode_image(_bytes(tmp_path, "g.npy", gray), "g.npy"), gray)
    with pytest.raises(ValueError, match="shape"):
        decode_image(_bytes(tmp_path, "bad.npy", np.zeros((2, 3, 4, 5))), "bad.npy")


def test_read_image_wraps_errors_in_dataerror(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="x.png"):
        read_image(tmp_path / "x.png")


# ---------------------------------------------------------- folder layout ---
def _formats_tree(root):
    """Every supported format in two classes, gray and colour, mixed sizes."""
    expect = {}
    expect["a/1.png"] = write(root / "a/1.png", rng_image((12, 10), seed=1))
    expect["a/2.jpg"] = write(root / "a/2.jpg", rng_image((8, 9, 3), seed=2))
    expect["a/3.tif"] = write(root / "a/3.tif", rng_image((7, 7), np.uint16, seed=3))
    expect["a/4.tiff"] = write(root / "a/4.tiff", rng_image((7, 5), np.float32, seed=4))
    expect["b/5.gif"] = write_palette_gif(root / "b/5.gif", rng_image((6, 6)) % 8, rng_image((8, 3), seed=6))
    expect["b/6.bmp"] = write(root / "b/6.bmp", rng_image((5, 11, 3), seed=7))
    expect["b/7.PNG"] = write(root / "b/7.PNG", rng_image((9, 9, 4), seed=8))   # RGBA, upper-case ext
    expect["b/8.jpeg"] = write(root / "b/8.jpeg", rng_image((10, 10), seed=9))
    (root / "b/notes.txt").write_text("not an image")
    (root / "b/.hidden.png").write_bytes(b"garbage that would fail")
    (root / ".git").mkdir()
    (root / "README.md").write_text("root files are ignored")
    (root / "a/nested").mkdir()
    write(root / "a/nested/x.png", rng_image((4, 4)))  # nested folders are not read
    return expect


def test_folder_reads_every_format_mixed_gray_colour_as_rgb(tmp_path):
    expect = _formats_tree(tmp_path)
    ds = folder_dataset(tmp_path)
    assert ds.class_names == ["a", "b"]
    assert ds.ids == sorted(expect, key=lambda r: (r.split("/")[0], r.split("/")[1]))
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ds.modality == "rgb"  # mixed gray and colour -> all RGB
    for i, rel in enumerate(ds.ids):
        img = ds.load(i)
        ref = decode_image(expect[rel].read_bytes(), rel)
        assert img.ndim == 3 and img.shape[2] == 3 and img.shape[:2] == ref.shape[:2]
        assert img.dtype == ref.dtype  # uint16 / float32 kept
        np.testing.assert_array_equal(img, ref if ref.ndim == 3 else np.repeat(ref[..., None], 3, 2))
    # explicit gray: every image 2-D, colour converted with the 601 weights
    gray = folder_dataset(tmp_path, color="gray")
    assert gray.modality == "gray"
    assert all(gray.load(i).ndim == 2 for i in range(len(gray)))
    i = gray.ids.index("b/6.bmp")
    rgb = ds.load(i).astype(float)
    np.testing.assert_allclose(gray.load(i), rgb @ [0.299, 0.587, 0.114], atol=1)
    assert gray.keys[i] != ds.keys[i]  # different pixels, different cache key


def test_gray_only_folder_stays_2d_and_rgb_forces_3(tmp_path):
    make_tree(tmp_path, shape=(7, 6))
    ds = folder_dataset(tmp_path)
    assert ds.modality == "gray" and ds.load(0).shape == (7, 6)
    ds = folder_dataset(tmp_path, color="rgb")
    assert ds.modality == "rgb" and ds.load(0).shape == (7, 6, 3)


def test_registry_creates_folder_dataset(tmp_path):
    make_tree(tmp_path)
    ds = DATASETS.create("folder", path=str(tmp_path))
    assert len(ds) == 6 and ds.name == tmp_path.name
    with pytest.raises(ConfigError, match="group_patern"):
        DATASETS.create("folder", path=str(tmp_path), group_patern="x")


def test_depth_npy_folder(tmp_path):
    for c in ("flat", "bump"):
        for k in range(2):
            write(tmp_path / c / f"{k}.npy", rng_image((6, 6), np.float32, seed=k) * 100)
    ds = folder_dataset(tmp_path)
    assert ds.modality == "depth" and ds.load(0).dtype == np.float32
    with pytest.raises(ConfigError, match="rgb"):
        folder_dataset(tmp_path, color="rgb")
    write(tmp_path / "flat" / "x.png", rng_image((6, 6)))
    with pytest.raises(DataError, match="mixes depth"):
        folder_dataset(tmp_path)


# ------------------------------------------------------------------ groups ---
def test_group_pattern_first_capture_group_or_whole_match(tmp_path):
    for rel in ["pups/41_pups_1.png", "pups/41_pups_2.png", "pups/43_pups_1.png",
                "males/42_males_1.png", "males/43_males_9.png"]:
        write(tmp_path / rel, rng_image((5, 5)))
    ds = folder_dataset(tmp_path, group_pattern=r"^(\d+)_")
    assert dict(zip(ds.ids, ds.groups)) == {
        "males/42_males_1.png": "42", "males/43_males_9.png": "43",
        "pups/41_pups_1.png": "41", "pups/41_pups_2.png": "41", "pups/43_pups_1.png": "43"}
    ds = folder_dataset(tmp_path, group_pattern=r"\d+")  # no group: the whole match
    assert ds.groups.tolist() == ["42", "43", "41", "41", "43"]
    assert folder_dataset(tmp_path).groups is None


def test_unmatched_file_names_file_and_pattern(tmp_path):
    make_tree(tmp_path, name="7_img{k}")
    write(tmp_path / "a" / "odd.png", rng_image((5, 5)))
    with pytest.raises(DataError) as exc:
        folder_dataset(tmp_path, group_pattern=r"^(\d+)_")
    assert "odd.png" in exc.value.message and r"^(\d+)_" in exc.value.message
    assert "regex" in exc.value.hint


def test_invalid_regex_is_config_error(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(ConfigError, match="dataset.group_pattern"):
        folder_dataset(tmp_path, group_pattern="(unclosed")


# ------------------------------------------------------------------ errors ---
def test_missing_path(tmp_path):
    with pytest.raises(DataError) as exc:
        folder_dataset(tmp_path / "nope")
    assert "dataset.path" in exc.value.message and "does not exist" in exc.value.message
    assert "one subfolder per class" in exc.value.hint


def test_path_is_a_file(tmp_path):
    p = write(tmp_path / "x.png", rng_image((4, 4)))
    with pytest.raises(DataError, match="is a file"):
        folder_dataset(p)


def test_no_class_subfolders(tmp_path):
    write(tmp_path / "x.png", rng_image((4, 4)))
    with pytest.raises(DataError, match="no class subfolders"):
        folder_dataset(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "empty_cls").mkdir()
    (tmp_path / "empty_cls" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as exc:
        folder_dataset(tmp_path)
    assert "empty_cls" in exc.value.message and exc.value.hint


def test_single_class(tmp_path):
    make_tree(tmp_path, classes=("only",))
    with pytest.raises(DataError) as exc:
        folder_dataset(tmp_path)
    assert "only one class" in exc.value.message and ">= 2 classes" in exc.value.hint


@pytest.mark.parametrize("kw,field", [({"on_bad_image": "ignore"}, "on_bad_image"),
                                      ({"color": "bgr"}, "color"),
                                      ({"max_per_class": 0}, "max_per_class"),
                                      ({"extensions": []}, "extensions")])
def test_bad_options_are_config_errors(tmp_path, kw, field):
    make_tree(tmp_path)
    with pytest.raises(ConfigError, match=f"dataset.{field}"):
        folder_dataset(tmp_path, **kw)


def test_extensions_option(tmp_path):
    make_tree(tmp_path)
    make_tree(tmp_path, ext=".bmp", name="other{k}")
    assert len(folder_dataset(tmp_path)) == 12
    assert len(folder_dataset(tmp_path, extensions=["BMP"])) == 6


# --------------------------------------------------------------- bad files ---
def _tree_with_bad_files(root):
    make_tree(root, n=3)
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "b" / "garbage.png").write_bytes(b"\x00\x01 definitely not a png" * 10)
    return {str(root / "a" / "zero.png"), str(root / "b" / "garbage.png")}


def test_bad_files_error_at_construction(tmp_path):
    _tree_with_bad_files(tmp_path)
    with pytest.raises(DataError) as exc:
        folder_dataset(tmp_path)
    assert "zero.png" in exc.value.message and "garbage.png" in exc.value.message
    assert "empty file" in exc.value.message
    assert "on_bad_image: skip" in exc.value.hint


def test_bad_files_skipped_with_one_warning(tmp_path, caplog):
    bad = _tree_with_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bench.data.folder"):
        ds = folder_dataset(tmp_path, on_bad_image="skip")
    assert len(ds) == 6 and "zero.png" not in " ".join(ds.ids)
    assert {p for p, _ in ds.bad} == bad and all(r for _, r in ds.bad)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "zero.png" in warnings[0].getMessage() and "garbage.png" in warnings[0].getMessage()
    assert ds.meta["n_bad"] == 2


def test_truncated_png_caught_at_construction(tmp_path):
    make_tree(tmp_path)
    data = write(tmp_path / "a" / "t.png", rng_image((40, 40, 3))).read_bytes()
    (tmp_path / "a" / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.png"):
        folder_dataset(tmp_path)


def test_truncated_jpeg_error_at_load_or_skipped(tmp_path):
    make_tree(tmp_path)
    data = write(tmp_path / "a" / "t.jpg", rng_image((64, 64, 3)), quality=90).read_bytes()
    (tmp_path / "a" / "t.jpg").write_bytes(data[: len(data) // 2])
    ds = folder_dataset(tmp_path)  # header is fine: only a full decode finds it
    i = ds.ids.index("a/t.jpg")
    with pytest.raises(DataError, match="t.jpg"):
        ds.load(i)
    ds = folder_dataset(tmp_path, on_bad_image="skip")  # full decode at construction
    assert "a/t.jpg" not in ds.ids and len(ds.bad) == 1 and "truncated" in ds.bad[0][1]


def test_all_files_of_a_class_bad_with_skip(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"class folder\(s\) c in .* no images left"):
        folder_dataset(tmp_path, on_bad_image="skip")


# -------------------------------------------------------------------- keys ---
def test_keys_are_content_hashes(tmp_path):
    arr = rng_image((8, 8, 3), seed=42)
    write(tmp_path / "a" / "one.png", arr)
    write(tmp_path / "b" / "copy_elsewhere.png", arr)
    write(tmp_path / "b" / "other.png", rng_image((8, 8, 3), seed=43))
    ds = folder_dataset(tmp_path)
    k = dict(zip(ds.ids, ds.keys))
    assert k["a/one.png"] == k["b/copy_elsewhere.png"] != k["b/other.png"]
    assert folder_dataset(tmp_path).keys == ds.keys  # stable across constructions
    other_root = tmp_path.parent / (tmp_path.name + "_moved")
    write(other_root / "x" / "renamed.png", arr)
    write(other_root / "y" / "z.png", arr)
    assert folder_dataset(other_root).keys[0] == k["a/one.png"]


def test_file_changed_after_construction_is_detected(tmp_path):
    make_tree(tmp_path)
    ds = folder_dataset(tmp_path)
    write(tmp_path / ds.ids[0], rng_image((12, 10), seed=999))
    with pytest.raises(DataError, match="changed on disk"):
        ds.load(0)
    ds.load(1)  # the others still load


# ----------------------------------------------------------------- laziness ---
def test_images_are_decoded_only_on_access(tmp_path, monkeypatch):
    make_tree(tmp_path, n=4, shape=(6, 6, 3))
    calls = []
    real = folder_mod.decode_image
    monkeypatch.setattr(folder_mod, "decode_image", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    ds = folder_dataset(tmp_path)  # 'error': header probe only
    assert calls == []
    images = ds.images([2, 5])
    assert calls == []
    assert images[1].shape == (6, 6, 3)
    assert calls == [Path(ds.ids[5]).name]


def test_dataset_pickles_and_loads_in_another_process_shape(tmp_path):
    make_tree(tmp_path)
    ds = folder_dataset(tmp_path, group_pattern=r"img(\d)")
    ds2 = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(ds2.load(3), ds.load(3))
    assert ds2.keys == ds.keys and ds2.groups.tolist() == ds.groups.tolist()


# -------------------------------------------------------------- subsampling ---
def test_max_per_class_is_stratified_and_seeded(tmp_path):
    make_tree(tmp_path, classes=("a", "b", "c"), n=10, shape=(4, 4))
    full = folder_dataset(tmp_path)
    s0 = folder_dataset(tmp_path, max_per_class=4, seed=0)
    assert np.bincount(s0.labels).tolist() == [4, 4, 4]
    assert set(s0.ids) <= set(full.ids)
    assert folder_dataset(tmp_path, max_per_class=4, seed=0).ids == s0.ids
    assert folder_dataset(tmp_path, max_per_class=4, seed=1).ids != s0.ids
    assert len(folder_dataset(tmp_path, max_per_class=50)) == 30


def test_subsample_per_class_is_independent_per_class():
    labels = np.repeat([0, 1], [20, 5])
    a = subsample_per_class(labels, 3, seed=7)
    b = subsample_per_class(np.repeat([0, 1, 2], [20, 5, 9]), 3, seed=7)
    assert a.tolist() == b[:6].tolist()  # adding a class leaves the others' choice unchanged
    assert subsample_per_class(labels, None).tolist() == list(range(25))


# ------------------------------------------------------------- shared data ---
def test_brodatz20(shared_data):
    root = shared_data / "brodatz20"
    if not root.is_dir():
        pytest.skip("brodatz20 not present")
    ds = folder_dataset(root)
    assert len(ds) == 320 and ds.n_classes == 20 and ds.modality == "gray"
    assert np.bincount(ds.labels).tolist() == [16] * 20
    img = ds.load(0)
    assert img.shape == (160, 160) and img.dtype == np.uint8 and img.std() > 10
    ref = np.asarray(Image.open(root / ds.ids[0]).convert("L"))
    np.testing.assert_array_equal(img, ref)
    assert len(set(ds.keys)) == 320


def test_sea_lion_chips(shared_data):
    root = shared_data / "sea_lion_chips"
    if not root.is_dir():
        pytest.skip("sea_lion_chips not present")
    ds = folder_dataset(root, group_pattern=r"^(\d+)_")
    assert len(ds) == 1229 and ds.n_classes == 5 and ds.modality == "rgb"
    assert ds.class_names == ["adult_females", "adult_males", "juveniles", "pups", "subadult_males"]
    assert np.bincount(ds.labels).tolist() == [676, 77, 150, 281, 45]
    # photos 41..50 (the chip set's README says 41-49; one adult male comes from photo 50)
    assert sorted(set(ds.groups)) == [str(g) for g in range(41, 51)]
    assert all(Path(i).name.startswith(g + "_") for i, g in zip(ds.ids, ds.groups))
    img = ds.load(0)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8

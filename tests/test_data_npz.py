"""The ``npz`` dataset: MedMNIST layout, official split, keys, memory, bad files."""
import os
import pickle

import numpy as np
import pytest

from bench.data.base import array_key, suggest_prepare
from bench.data.npz import npz_dataset
from bench.errors import ConfigError, DataError

SALT_GRAY = "bench.npz/1/gray"


def medmnist(tmp_path, name="m.npz", compressed=True, sizes=(30, 6, 12), shape=(28, 28), classes=3,
             seed=0, label_shape="col", **extra):
    """A MedMNIST-style file: train/val/test images (n, h, w[, c]) uint8, labels (n, 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        lab = rng.integers(0, classes, n)
        lab[:classes] = np.arange(classes)  # every class in every split
        arrays[f"{split}_labels"] = lab[:, None] if label_shape == "col" else lab
    arrays.update(extra)
    path = tmp_path / name
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path, arrays


@pytest.mark.parametrize("compressed", [True, False])
def test_medmnist_layout_loads_with_official_split(tmp_path, compressed):
    path, a = medmnist(tmp_path, compressed=compressed)
    ds = npz_dataset(path, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 48 and ds.modality == "gray" and ds.name == "m"
    assert ds.split.tolist() == ["train"] * 30 + ["val"] * 6 + ["test"] * 12
    images = np.concatenate([a["train_images"], a["val_images"], a["test_images"]])
    labels = np.concatenate([a["train_labels"], a["val_labels"], a["test_labels"]])[:, 0]
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names == ["0", "1", "2"]
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.load(i), images[i])
        assert ds.keys[i] == array_key(images[i], salt=SALT_GRAY)
    assert ds.ids[0] == "train_images/0" and ds.ids[-1] == "test_images/11"
    assert ds.meta["split_counts"] == [["train", 30], ["val", 6], ["test", 12]]
    assert ds.meta["storage"].startswith("extracted" if compressed else "in place")
    # compressed members go to the cache once; uncompressed ones are read in place
    extracted = sorted((tmp_path / "cache").glob("*.npy")) if (tmp_path / "cache").exists() else []
    assert (len(extracted) == 6) == compressed and (not extracted) == (not compressed)


@pytest.mark.parametrize("compressed", [True, False])
def test_fortran_ordered_arrays(tmp_path, compressed):
    im = np.asfortranarray(np.random.default_rng(5).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8))
    (np.savez_compressed if compressed else np.savez)(tmp_path / "f.npz", images=im, labels=np.arange(5) % 2)
    ds = npz_dataset(tmp_path / "f.npz", images_key="images", labels_key="labels",
                     cache_dir=str(tmp_path / "c"))
    for i in range(5):
        np.testing.assert_array_equal(ds.load(i), im[i])
        assert ds.keys[i] == array_key(im[i], salt="bench.npz/1/rgb")


def test_compressed_members_are_extracted_once(tmp_path):
    path, _ = medmnist(tmp_path)
    npz_dataset(path, cache_dir=str(tmp_path / "cache"))
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")}
    ds = npz_dataset(path, cache_dir=str(tmp_path / "cache"))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")} == files
    assert len(ds) == 48


def test_same_pixels_same_key_across_files_and_splits(tmp_path):
    rng = np.random.default_rng(1)
    im = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    im[3] = im[0]
    lab = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "a.npz", train_images=im[:2], train_labels=lab[:2], test_images=im[2:],
             test_labels=lab[2:])
    np.savez_compressed(tmp_path / "b.npz", images=im, labels=lab)
    a = npz_dataset(tmp_path / "a.npz", cache_dir=str(tmp_path / "c"))
    b = npz_dataset(tmp_path / "b.npz", images_key="images", labels_key="labels",
                    cache_dir=str(tmp_path / "c"))
    assert a.keys == b.keys and a.keys[0] == a.keys[3] and len(set(a.keys)) == 3
    assert b.split is None and a.split.tolist() == ["train", "train", "test", "test"]


def test_colour_float_and_class_names(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.random((6, 10, 12, 3)).astype(np.float32)
    gray = rng.random((4, 10, 12, 1)).astype(np.float32)
    np.savez(tmp_path / "c.npz", train_images=rgb, train_labels=np.array([2, 0, 2, 0, 2, 0]),
             test_images=gray, test_labels=np.array([[0], [2], [0], [2]]),
             class_names=np.array(["cat", "dog", "eel"]))
    ds = npz_dataset(tmp_path / "c.npz", splits=["train", "test"])
    assert ds.modality == "rgb" and ds.class_names == ["cat", "dog", "eel"]
    assert ds.load(0).dtype == np.float32 and ds.load(0).shape == (10, 12, 3)
    np.testing.assert_array_equal(ds.load(7), np.repeat(gray[1], 3, axis=2))  # gray split as RGB
    np.testing.assert_array_equal(ds.labels, [2, 0, 2, 0, 2, 0, 0, 2, 0, 2])
    named = npz_dataset(tmp_path / "c.npz", class_names={0: "a", 1: "b", 2: "c"})
    assert named.class_names == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"label .*= 2 has no class name"):
        npz_dataset(tmp_path / "c.npz", class_names=["a", "b"])


def test_string_labels_and_sparse_integer_labels(tmp_path):
    im = np.zeros((4, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=im, labels=np.array(["b", "a", "b", "c"]))
    ds = npz_dataset(tmp_path / "s.npz", images_key="images", labels_key="labels")
    assert ds.class_names == ["a", "b", "c"] and ds.labels.tolist() == [1, 0, 1, 2]
    np.savez(tmp_path / "i.npz", images=im, labels=np.array([10, 30, 10, 20]))
    ds = npz_dataset(tmp_path / "i.npz", images_key="images", labels_key="labels")
    assert ds.class_names == ["10", "20", "30"] and ds.labels.tolist() == [0, 2, 0, 1]


def test_max_per_class_subsamples_each_split(tmp_path):
    path, a = medmnist(tmp_path, sizes=(60, 12, 30))
    ds = npz_dataset(path, max_per_class=4, seed=3, cache_dir=str(tmp_path / "cache"))
    for s, cap in (("train", 4), ("val", 4), ("test", 4)):
        counts = np.bincount(ds.labels[ds.split == s], minlength=3)
        assert counts.max() <= cap and counts.min() >= 1
    # each kept image is the stored one of its id
    for i in range(len(ds)):
        key, row = ds.ids[i].split("/")
        np.testing.assert_array_equal(ds.load(i), a[key][int(row)])
        assert ds.keys[i] == array_key(a[key][int(row)], salt=SALT_GRAY)


def test_loader_pickles_small_and_holds_no_pixels(tmp_path):
    path, _ = medmnist(tmp_path, sizes=(3000, 10, 1000), compressed=False)
    ds = npz_dataset(path)
    blob = pickle.dumps(ds.loader)
    assert len(blob) < 4096  # a path and offsets, not 3 MB of pixels
    other = pickle.loads(blob)
    np.testing.assert_array_equal(other(3005), ds.load(3005))


def test_file_rewritten_during_run_is_detected(tmp_path):
    path, a = medmnist(tmp_path, compressed=False)
    ds = npz_dataset(path)
    ds.load(0)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = pickle.loads(pickle.dumps(ds.loader))  # a worker process opens the file anew
    with pytest.raises(DataError, match="changed on disk"):
        fresh(1)


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        npz_dataset(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        npz_dataset(tmp_path / "junk.npz")
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 4, 4)), y=np.zeros(3))
    with pytest.raises(DataError, match=r"no arrays named train_images.*the file has: x, y") as e:
        npz_dataset(tmp_path / "x.npz")
    assert "images_key" in e.value.hint
    np.savez(tmp_path / "ml.npz", train_images=np.zeros((3, 4, 4)), train_labels=np.zeros((3, 14)))
    with pytest.raises(DataError, match=r"shape \(3, 14\).*expected \(n,\) or \(n, 1\)"):
        npz_dataset(tmp_path / "ml.npz")
    np.savez(tmp_path / "len.npz", train_images=np.zeros((3, 4, 4)), train_labels=np.zeros(4))
    with pytest.raises(DataError, match="3 images but 'train_labels' 4 labels"):
        npz_dataset(tmp_path / "len.npz")
    np.savez(tmp_path / "nolab.npz", train_images=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="labels array 'train_labels' is missing"):
        npz_dataset(tmp_path / "nolab.npz")
    np.savez(tmp_path / "shape.npz", train_images=np.zeros((3, 4)), train_labels=np.zeros(3))
    with pytest.raises(DataError, match=r"shape \(3, 4\)"):
        npz_dataset(tmp_path / "shape.npz")
    np.savez(tmp_path / "frac.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match=r"train_labels\[0\] = 0.5 is not an integer"):
        npz_dataset(tmp_path / "frac.npz")
    with pytest.raises(ConfigError, match="both use"):
        npz_dataset(tmp_path / "x.npz", images_key="x", labels_key="{split}_y")


def test_size_suggestion_for_small_images(tmp_path):
    path, _ = medmnist(tmp_path, compressed=False)
    s = suggest_prepare(npz_dataset(path))
    assert s["size"] is None and s["native"] == [28, 28]
    assert "native size" in s["reason"] and "upscale" in s["reason"]


def test_perf_memory_case_measures_peak_rss_and_writes_its_section(tmp_path):
    """`bench perf --only memory`, reduced: a fresh interpreter opens a compressed npz and runs
    LBP; its VmHWM is reported against the 600 MB bound, in a section of its own."""
    from bench import perf
    rows = perf.run_memory_npz(n=3000)
    (r,) = rows
    assert r["n_images"] == 3000 and r["within_bound"] and 50 < r["peak_rss_mb"] < perf.NPZ_MEMORY_BOUND_MB
    assert r["import_rss_mb"] <= r["open_rss_mb"] <= r["peak_rss_mb"]
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n## Cache, parallelism and memory\n\nold table\n\n"
                  "<!-- notes -->\n## Notes\n\nx\n")
    perf.write_markdown(rows, md, quick=False, only="memory")
    text = md.read_text()
    assert "## Peak memory of an npz dataset" in text and "python -m bench perf --only memory" in text
    assert "old table" in text and text.count("<!-- notes -->") == 1 and text.rstrip().endswith("x")

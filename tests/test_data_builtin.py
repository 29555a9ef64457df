"""Built-in datasets: scikit-learn digits and scikit-image's LFW face subset."""
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits

import bench.data.datasets  # noqa: F401  (registers the loaders)
from bench.data import builtin
from bench.errors import DataError
from bench.registry import DATASETS


def test_digits_matches_sklearn_scaled_to_uint8():
    ds = DATASETS.create("digits")
    ref = load_digits()
    assert len(ds) == 1797 and ds.class_names == [str(d) for d in range(10)]
    assert ds.modality == "gray" and ds.groups is None
    np.testing.assert_array_equal(ds.labels, ref.target)
    imgs = np.stack(list(ds.images()))
    assert imgs.shape == (1797, 8, 8) and imgs.dtype == np.uint8
    assert imgs.max() == 255 and imgs.min() == 0
    np.testing.assert_array_equal(imgs, np.rint(ref.images * 255 / 16).astype(np.uint8))
    # same pixels, same key; different pixels, different key
    by_key = {}
    for k, im in zip(ds.keys, imgs):
        by_key.setdefault(k, im)
        np.testing.assert_array_equal(by_key[k], im)
    assert len(by_key) == len({im.tobytes() for im in imgs})


def test_faces_matches_skimage_lfw_subset():
    from skimage.data import lfw_subset

    ds = DATASETS.create("faces")
    raw = lfw_subset()
    assert len(ds) == 200 and ds.class_names == ["face", "non-face"]
    assert ds.labels.tolist() == [0] * 100 + [1] * 100
    img = ds.load(150)
    assert img.shape == (25, 25) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.rint(raw[150] * 255).astype(np.uint8))
    assert ds.meta["source"] == "skimage.data.lfw_subset"


def test_loader_returns_copies():
    ds = builtin.digits()
    ds.load(0)[:] = 0
    assert ds.load(0).any()


def test_max_per_class_is_stratified_seeded_and_keeps_pixels():
    full = builtin.digits()
    sub = builtin.digits(max_per_class=5, seed=3)
    assert np.bincount(sub.labels).tolist() == [5] * 10
    assert builtin.digits(max_per_class=5, seed=3).ids == sub.ids
    assert builtin.digits(max_per_class=5, seed=4).ids != sub.ids
    for i in (0, 17, 49):
        j = int(sub.ids[i].split("/")[1])
        np.testing.assert_array_equal(sub.load(i), full.load(j))
        assert sub.keys[i] == full.keys[j] and sub.labels[i] == full.labels[j]
    faces = builtin.faces(max_per_class=7)
    assert np.bincount(faces.labels).tolist() == [7, 7]


def test_pickles():
    ds = builtin.faces(max_per_class=3)
    ds2 = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(ds2.load(4), ds.load(4))


def test_faces_unavailable_is_a_clear_dataerror(monkeypatch):
    import skimage.data

    def boom():
        raise ModuleNotFoundError("The requested file is part of the scikit-image distribution, "
                                  "but requires the installation of an optional dependency, pooch.")

    monkeypatch.setattr(skimage.data, "lfw_subset", boom)
    with pytest.raises(DataError) as exc:
        builtin.faces()
    assert "lfw_subset" in exc.value.message and "digits" in exc.value.hint

"""The `cnn` extractor: pooling, layers, weights provenance, image preparation, batching.

Everything runs on MobileNetV2 at 96 px with weights made here (no download): a source
model with random weights and randomised batch-norm statistics is saved to a file, and
the extractor's embeddings are compared with an independently built Keras sub-model.
"""
import logging
import os
import pickle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest
from sklearn.base import clone

from bench import weights as weights_mod
from bench.errors import ConfigError, DataError, WeightsError
from bench.features.backbones import get_backbone
from bench.features import deep
from bench.features.deep import CNNFeatures
from bench.registry import FEATURES

SIZE = 96
V2_96 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
V2_224 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
TOL = dict(rtol=2e-4, atol=2e-5)  # frozen-graph batch-norm folding changes float rounding only


@pytest.fixture(autouse=True)
def _empty_keras_home(tmp_path, monkeypatch):
    """Every test sees an empty Keras cache unless it fills one; warnings are not deduplicated."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(weights_mod, "_warned", set())
    return home


def _save_like_keras_notop(model, path):
    """Write weights in the layout of Keras' published *_notop.h5 files (legacy HDF5)."""
    try:
        import h5py
        from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group
        with h5py.File(path, "w") as f:
            save_weights_to_hdf5_group(f, model)
    except ImportError:  # pragma: no cover - private helper moved: a legacy model file loads too
        model.save(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A MobileNetV2 (no top, 96 px) with non-trivial weights, saved in two formats."""
    keras = pytest.importorskip("keras")
    model = get_backbone("mobilenetv2").build(SIZE)
    # Data-dependent batch-norm statistics: random init alone makes the last layer's
    # activations vanish (~1e-11), which would make every comparison vacuous, and
    # non-trivial statistics make the frozen graph's batch-norm folding really tested.
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (16, SIZE, SIZE, 3)).astype(np.float32)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    momenta = [la.momentum for la in bns]
    for la in bns:
        la.momentum = 0.0
    model(calib, training=True)
    for la, m in zip(bns, momenta):
        la.momentum = m
    folder = tmp_path_factory.mktemp("weights")
    modern = folder / "mnv2_96.weights.h5"
    model.save_weights(modern)
    legacy = folder / V2_96
    _save_like_keras_notop(model, legacy)
    return {"model": model, "weights": str(modern), "legacy": str(legacy), "keras": keras}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    out = []
    for i in range(5):  # smooth-ish RGB images of different sizes
        h, w = 80 + 12 * i, 130 - 7 * i
        base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
        out.append(base)
    return out


def _variant(extractor, **params):
    """A copy sharing the built network, with other input-side parameters (no rebuild)."""
    c = object.__new__(type(extractor))  # not copy.copy: pickling state drops the model
    c.__dict__.update({k: v for k, v in extractor.__dict__.items()
                       if k not in ("_small_warned", "_small_lock", "_max_forward")})
    return c.set_params(**params)


def _reference(source, x, layer_name):
    """Activations of `layer_name` from an independently built Keras sub-model."""
    keras = source["keras"]
    m = source["model"]
    sub = keras.Model(m.input, m.get_layer(layer_name).output)
    return np.asarray(sub.predict(x, verbose=0))


@pytest.fixture(scope="module")
def file_extractor(source):
    e = CNNFeatures(input_size=SIZE, weights=source["weights"], pooling="avg", layer="last")
    e.fit()
    return e


# -- image preparation ---------------------------------------------------------------
def test_preprocess_is_cv2_resize_then_keras_preprocess_input(file_extractor, images):
    import keras
    x = file_extractor.preprocess(images)
    assert x.shape == (len(images), SIZE, SIZE, 3) and x.dtype == np.float32
    def cv2_resize(im):  # area when shrinking both sides by 2x or more, bilinear otherwise
        big = im.shape[0] >= 2 * SIZE or im.shape[1] >= 2 * SIZE
        shrink = big and im.shape[0] >= SIZE and im.shape[1] >= SIZE
        return cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    images = list(images) + [cv2.resize(images[0], (2 * SIZE + 10, 2 * SIZE + 4))]  # a >= 2x reduction
    assert any(im.shape[0] >= 2 * SIZE and im.shape[1] >= 2 * SIZE for im in images)
    assert any(SIZE <= im.shape[0] < 2 * SIZE and SIZE <= im.shape[1] < 2 * SIZE for im in images)
    assert any(im.shape[0] < SIZE for im in images)
    x = file_extractor.preprocess(images)
    ref = np.stack([cv2_resize(im) for im in images])
    ref = keras.applications.mobilenet_v2.preprocess_input(ref.astype(np.float32))
    np.testing.assert_allclose(x, ref, atol=1e-6)


# -- weights: file, Keras cache, missing -----------------------------------------------------
def test_weights_file_gives_the_source_models_embeddings(file_extractor, source, images):
    feats = file_extractor.transform(images)
    x = file_extractor.preprocess(images)
    ref = _reference(source, x, "out_relu").mean(axis=(1, 2))
    assert np.abs(ref).max() > 0.05 and ref.std(axis=0).mean() > 1e-3  # a meaningful comparison
    assert feats.shape == (len(images), 1280) and feats.dtype == np.float32
    assert file_extractor.forward_how_ == "tf.function"
    np.testing.assert_allclose(feats, ref, **TOL)
    d = file_extractor.describe()
    assert d["weights"] == "file:" + str(os.path.realpath(source["weights"]))
    assert d["weights_file"] == os.path.realpath(source["weights"])
    assert d["backbone"] == "mobilenetv2" and d["layer"] == "last" and d["pooling"] == "avg"
    assert d["input_size"] == [SIZE, SIZE] and d["device"] in ("CPU", "GPU:0")


def test_imagenet_weights_are_read_from_the_keras_cache_folder(_empty_keras_home, source, images):
    models = _empty_keras_home / "models"
    models.mkdir()
    target = models / V2_96
    target.write_bytes(open(source["legacy"], "rb").read())
    e = CNNFeatures(input_size=SIZE, weights="imagenet", on_missing_weights="error")
    d = e.describe()  # resolved before any build
    assert d["weights"] == "imagenet" and d["weights_file"] == str(target)
    feats = e.transform(images)
    ref = _reference(source, e.preprocess(images), "out_relu").mean(axis=(1, 2))
    np.testing.assert_allclose(feats, ref, **TOL)
    assert e.describe()["weights"] == "imagenet"


def test_efficientnet_imagenet_is_keras_own_imagenet_model(_empty_keras_home, images):
    """Keras adds an input rescaling (1/sqrt(std)) to EfficientNet only for ImageNet weights."""
    import keras
    bb = get_backbone("efficientnetb0")
    src = bb.build(64)
    models = _empty_keras_home / "models"
    models.mkdir()
    _save_like_keras_notop(src, models / "efficientnetb0_notop.h5")
    e = CNNFeatures(backbone="efficientnetb0", input_size=64, weights="imagenet",
                    on_missing_weights="error", layer="block2")
    feats = e.transform(images)
    assert e.describe()["weights"] == "imagenet"
    x = e.preprocess(images)
    # in-model preprocessing: the network gets the resized 0..255 pixels as they are
    assert x.max() > 2.0 and np.array_equal(x, np.round(x)) and x.min() >= 0
    scale = 1.0 / np.sqrt(np.array([0.229, 0.224, 0.225], np.float32))
    sub = keras.Model(src.input, src.get_layer("block3a_expand_activation").output)
    ref = np.asarray(sub.predict(x * scale, verbose=0)).mean(axis=(1, 2))
    assert feats.shape == (len(images), 144) and np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(feats, ref, **TOL)
    plain = np.asarray(sub.predict(x, verbose=0)).mean(axis=(1, 2))
    assert np.abs(feats - plain).max() > 0.01 * np.abs(plain).max()  # not the weights=None graph


def test_mobilenetv2_accepts_the_224_file_at_other_sizes(_empty_keras_home):
    models = _empty_keras_home / "models"
    models.mkdir()
    (models / V2_224).write_bytes(b"x")
    r = CNNFeatures(input_size=SIZE, weights="imagenet").resolve_weights()
    assert r.label == "imagenet" and r.path == str(models / V2_224)
    (models / V2_96).write_bytes(b"x")  # the exact resolution wins, as in Keras
    assert CNNFeatures(input_size=SIZE).resolve_weights().path == str(models / V2_96)


def test_missing_imagenet_weights_error_names_file_and_folder(_empty_keras_home):
    e = CNNFeatures(backbone="resnet50", weights="imagenet", on_missing_weights="error")
    with pytest.raises(WeightsError) as info:
        e.cache_key()
    msg = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(_empty_keras_home / "models") in msg
    assert "weights:" in info.value.hint


def test_missing_imagenet_weights_fall_back_to_labelled_random_with_one_warning(
        _empty_keras_home, caplog):
    caplog.set_level(logging.WARNING)
    e = CNNFeatures(backbone="vgg16", weights="imagenet")
    for _ in range(3):
        d = e.describe()
        key = e.cache_key()
    CNNFeatures(backbone="vgg16", pooling="max").describe()  # same backbone: no new warning
    assert d["weights"] == "random-init" and d["weights_file"] is None
    assert "not found" in d["weights_note"]
    assert '"weights": "random|seed=0' in key
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in text
    assert str(_empty_keras_home / "models") in text and "RANDOM" in text and "weights:" in text


def test_bad_weights_paths(tmp_path, source):
    with pytest.raises(WeightsError, match="not found"):
        CNNFeatures(weights=str(tmp_path / "nope.h5"), on_missing_weights="random").cache_key()
    txt = tmp_path / "w.txt"
    txt.write_text("x")
    with pytest.raises(WeightsError, match="extension"):
        CNNFeatures(weights=str(txt)).cache_key()
    # the right format but another architecture: a clear WeightsError at build time
    e = CNNFeatures(backbone="mobilenetv3small", input_size=64, weights=source["weights"])
    with pytest.raises(WeightsError, match="could not be loaded into mobilenetv3small"):
        e.transform([np.zeros((64, 64, 3), np.uint8)])


def test_explicit_random_weights_are_seeded_and_labelled(images):
    a = CNNFeatures(input_size=SIZE, weights="random", layer="block2", seed=0)
    b = CNNFeatures(input_size=SIZE, weights="random", layer="block2", seed=0)
    c = CNNFeatures(input_size=SIZE, weights="random", layer="block2", seed=1)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    fc = c.transform(images[:2])
    assert np.random.rand() == expected  # the global RNGs are left as they were
    fa, fb = a.transform(images[:2]), b.transform(images[:2])
    np.testing.assert_array_equal(fa, fb)
    assert np.abs(fa - fc).max() > 0.1 * np.abs(fa).max()
    assert a.describe()["weights"] == "random-init" and "weights_note" not in a.describe()
    assert a.cache_key() == b.cache_key() != c.cache_key()


# -- cache key -----------------------------------------------------------------------
def test_cache_key_needs_no_model_and_tracks_what_changes_the_numbers(tmp_path, source, monkeypatch):
    from bench.features import backbones
    monkeypatch.setattr(backbones.Backbone, "build", lambda *a, **k: pytest.fail("built a model"))
    base = CNNFeatures(input_size=SIZE, weights=source["weights"])
    k0 = base.cache_key()
    base.describe()
    assert clone(base).set_params(batch_size=7).cache_key() == k0
    for change in (dict(pooling="max"), dict(layer="block4"), dict(input_size=128),
                   dict(backbone="mobilenetv3small"), dict(depth_range=[0, 5]),
                   dict(precision="mixed"), dict(weights="random")):
        assert clone(base).set_params(**change).cache_key() != k0, change
    # same path, new content: new key
    copy = tmp_path / "copy.weights.h5"
    copy.write_bytes(open(source["weights"], "rb").read())
    k1 = CNNFeatures(input_size=SIZE, weights=str(copy)).cache_key()
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    assert CNNFeatures(input_size=SIZE, weights=str(copy)).cache_key() != k1


# -- pooling and layers --------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax"])
def test_pooling_of_an_earlier_layer_matches_keras_activations(pooling, source, images, monkeypatch):
    if pooling == "avgmax":  # also check the frozen graph (batch-norm folded) against Keras
        monkeypatch.setattr(deep, "FREEZE_MIN_IMAGES", 1)
    e = CNNFeatures(input_size=SIZE, weights=source["weights"], layer="block4", pooling=pooling)
    feats = e.transform(images)
    assert e.forward_how_ == ("tf.function (frozen graph)" if pooling == "avgmax" else "tf.function")
    act = _reference(source, e.preprocess(images), "block_13_expand_relu")
    assert act.shape[-1] == 576 == get_backbone("mobilenetv2").channels["block4"]
    gap, gmp = act.mean(axis=(1, 2)), act.max(axis=(1, 2))
    expected = {"avg": gap, "max": gmp, "avgmax": np.concatenate([gap, gmp], axis=1)}[pooling]
    assert feats.shape == expected.shape
    np.testing.assert_allclose(feats, expected, **TOL)
    assert e.describe()["n_features"] == expected.shape[1]


def test_raw_keras_layer_names_and_bad_names(source, images):
    e = CNNFeatures(input_size=SIZE, weights=source["weights"], layer="block_6_expand_relu")
    assert e.transform(images[:1]).shape == (1, 192)
    with pytest.raises(ConfigError, match="no layer 'block9'") as info:
        CNNFeatures(input_size=SIZE, weights="random", layer="block9").transform(images[:1])
    assert "block4" in info.value.hint


# -- inputs: gray, depth, tiny, lazy -------------------------------------------------------
def test_gray_and_depth_inputs(file_extractor):
    rng = np.random.default_rng(3)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (70, 90), dtype=np.uint8), (0, 0), 2)
    depth = rng.uniform(0.5, 3.0, (60, 60)).astype(np.float32)
    depth[:10] = 0.0  # missing measurements
    feats = file_extractor.transform([gray, np.repeat(gray[..., None], 3, 2), depth, gray[..., None]])
    assert feats.shape == (4, 1280) and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0], feats[1], rtol=1e-6, atol=1e-7)  # gray == gray as RGB
    np.testing.assert_allclose(feats[0], feats[3], rtol=1e-6, atol=1e-7)


def test_depth_range_minmax_vs_fixed(file_extractor):
    rng = np.random.default_rng(4)
    depth = rng.uniform(1.0, 2.0, (64, 64)).astype(np.float32)
    a, b = file_extractor.transform([depth, depth * 2.0])  # per-image min-max: scale is irrelevant
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    fixed = _variant(file_extractor, depth_range=[0.0, 5.0])  # fixed range: absolute heights matter
    c, d = fixed.transform([depth, depth * 2.0])
    assert np.abs(c - d).max() > 0.05 * np.abs(c).max()


def test_tiny_images_are_upscaled_with_one_warning(file_extractor, caplog):
    e = _variant(file_extractor)
    caplog.set_level(logging.WARNING, logger="bench.features.deep")
    tiny = [np.full((16, 16, 3), v, np.uint8) for v in (10, 120, 250)]
    feats = e.transform(tiny)
    assert feats.shape == (3, 1280) and np.isfinite(feats).all()
    msgs = [r.getMessage() for r in caplog.records if "upscaled" in r.getMessage()]
    assert len(msgs) == 1 and "32 px" in msgs[0] and "16x16" in msgs[0]


class _CountingImages:
    """A lazy image sequence like bench.data.LazyImages: decodes on __getitem__."""

    def __init__(self, arrays, fail_at=None):
        self.arrays, self.fail_at, self.calls = arrays, fail_at, []

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        self.calls.append(i)
        if i == self.fail_at:
            raise DataError(f"cannot decode image {i}")
        return self.arrays[i]


def test_batches_are_prefetched_lazily_and_equal_one_big_batch(file_extractor, images):
    seven = (images * 2)[:7]
    whole = file_extractor.transform(seven)
    e = _variant(file_extractor, batch_size=3)
    lazy = _CountingImages(seven)
    seen = []
    feats = e.transform(lazy, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(feats, whole, **TOL)
    assert sorted(lazy.calls) == list(range(7))  # each image read exactly once
    assert seen == [(3, 7), (6, 7), (7, 7)]
    assert e.transform([]).shape == (0, 1280)


def test_loader_errors_reach_the_caller(file_extractor, images):
    e = _variant(file_extractor, batch_size=2)
    with pytest.raises(DataError, match="image 3"):
        e.transform(_CountingImages((images * 2)[:6], fail_at=3))
    with pytest.raises(DataError, match="shape"):
        e.transform([np.zeros((4, 4, 3, 2), np.uint8)])


def test_generic_forward_route_gives_the_same_embeddings(file_extractor, images):
    """The route JAX / PyTorch backends take (predict_on_batch), checked on TensorFlow."""
    x = file_extractor.prepare(images)
    assert x.dtype == np.uint8 and x.shape == (len(images), SIZE, SIZE, 3)
    fn, how = deep.compile_forward(file_extractor.model_, file_extractor.input_hw_,
                                   file_extractor.preprocess_, generic=True)
    assert how == "predict_on_batch"
    np.testing.assert_allclose(fn(x), file_extractor.forward_(x), **TOL)


def test_out_of_memory_retries_with_smaller_batches(file_extractor, images, caplog):
    e = _variant(file_extractor)
    expected = file_extractor.transform(images)
    real = e.forward_

    class ResourceExhaustedError(RuntimeError):
        pass

    def flaky(batch):
        if len(batch) > 2:
            raise ResourceExhaustedError("OOM when allocating tensor")
        return real(batch)
    e.forward_ = flaky
    caplog.set_level(logging.WARNING, logger="bench.features.deep")
    np.testing.assert_allclose(e.transform(images), expected, **TOL)
    assert any("out of memory" in r.getMessage() for r in caplog.records)


# -- parameters, registry, sklearn ---------------------------------------------------------
def test_bad_parameters_are_config_errors():
    for params, match in ((dict(pooling="mean"), "pooling"), (dict(precision="half"), "precision"),
                          (dict(batch_size=0), "batch_size"), (dict(depth_range=[3, 1]), "depth_range"),
                          (dict(input_size=16), "minimum 32"), (dict(on_missing_weights="skip"),
                                                                "on_missing_weights")):
        with pytest.raises(ConfigError, match=match):
            CNNFeatures(**params).cache_key()
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        CNNFeatures(backbone="resnet5").cache_key()


def test_registered_as_deep_feature_and_sklearn_friendly(file_extractor, images):
    e = FEATURES.create("cnn", backbone="mobilenetv2", pooling="max")
    assert isinstance(e, CNNFeatures) and e.family == "deep" and not hasattr(e, "model_")
    assert FEATURES.entry("cnn").meta["family"] == "deep"
    c = clone(file_extractor)
    assert not hasattr(c, "model_") and c.get_params() == file_extractor.get_params()
    restored = pickle.loads(pickle.dumps(file_extractor))  # the compiled model is not pickled
    assert not hasattr(restored, "model_")
    np.testing.assert_allclose(restored.transform(images[:2]), file_extractor.transform(images[:2]),
                               **TOL)


def test_mixed_precision_gives_float32_close_to_float32(source, images):
    import keras
    before = keras.mixed_precision.global_policy().name
    e32 = CNNFeatures(input_size=SIZE, weights=source["weights"], layer="block2")
    e16 = clone(e32).set_params(precision="mixed")
    f32, f16 = e32.transform(images[:2]), e16.transform(images[:2])
    assert f16.dtype == np.float32 and np.isfinite(f16).all()
    np.testing.assert_allclose(f16, f32, rtol=0.05, atol=0.02 * np.abs(f32).max())
    assert keras.mixed_precision.global_policy().name == before  # policy restored
    assert e16.model_.output.dtype == "float32"

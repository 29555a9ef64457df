"""The backbone registry: sizes, named layers, preprocessing and weight file names.

Layer names and weight file names are checked against Keras itself: the models are
built (``weights=None``) and Keras' own ``get_file`` call is intercepted to read the
file name it would download (nothing is downloaded). Three cheap backbones run in the
default suite; all of them in the slow tests.
"""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.features.backbones import NAMED_LAYERS, OUTPUT, Backbone, get_backbone
from bench.registry import BACKBONES

REQUIRED = ["vgg16", "vgg19", "resnet50", "resnet50v2", "inceptionv3", "xception", "mobilenetv2",
            "mobilenetv3small", "mobilenetv3large", "efficientnetb0", "efficientnetb1",
            "efficientnetb2", "efficientnetb3", "densenet121", "convnexttiny"]
PACKAGED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CHEAP = ["mobilenetv2", "mobilenetv3small", "convnexttiny"]  # name, ':input' and <output> refs
STRIDE = {"block2": 4, "block3": 8, "block4": 16, "last": 32}


def test_registry_lists_every_backbone_with_sizes_and_layers():
    assert len(BACKBONES) >= 17
    assert set(REQUIRED) | set(PACKAGED) <= set(BACKBONES.names())
    for entry in BACKBONES:
        bb = entry.obj
        assert isinstance(bb, Backbone) and bb.name == entry.name and entry.description
        assert 32 <= bb.min_size <= bb.default_size
        assert entry.meta["default_size"] == bb.default_size and entry.meta["min_size"] == bb.min_size
        assert {"block3", "block4", "last"} <= set(bb.layers) <= set(NAMED_LAYERS)
        assert set(bb.channels) == set(bb.layers) and all(c > 0 for c in bb.channels.values())
        assert bb.preprocessing in ("caffe", "tf", "torch", "in-model")
        assert entry.meta["source"] == bb.source
        if bb.source == "package":    # built by bench, weights from a pip package's checkpoint
            assert bb.weights_file.endswith(".pth") and bb.package.file.endswith(bb.weights_file)
            assert bb.preprocessing == "in-model" and bb.builder and bb.pretrained and bb.converter
            continue
        assert bb.source == "keras"
        assert bb.weights_file.endswith(".h5") and ("notop" in bb.weights_file
                                                    or "no_top" in bb.weights_file)
        assert bb.weights_url.startswith("https://")


def test_known_default_sizes():
    assert get_backbone("inceptionv3").default_size == 299 == get_backbone("xception").default_size
    assert [get_backbone(f"efficientnetb{i}").default_size for i in range(4)] == [224, 240, 260, 300]
    assert get_backbone("inceptionv3").min_size == 75 and get_backbone("xception").min_size == 71


def test_input_sizes():
    bb = get_backbone("mobilenetv2")
    assert bb.input_hw(None) == (224, 224)
    assert bb.input_hw(96) == (96, 96)
    assert bb.input_hw([64, 80]) == (64, 80)
    for bad in (16, [20, 64], "big", [1, 2, 3]):
        with pytest.raises(ConfigError):
            bb.input_hw(bad)


def test_weights_file_names_depend_on_size_only_for_mobilenetv2():
    bb = get_backbone("mobilenetv2")
    stem = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_"
    assert bb.weights_filenames(96) == [stem + "96_no_top.h5", stem + "224_no_top.h5"]
    assert bb.weights_filenames(224) == [stem + "224_no_top.h5"]
    assert bb.weights_filenames(100) == [stem + "224_no_top.h5"]  # Keras' rule: 224 otherwise
    assert bb.weights_filenames([96, 128]) == [stem + "224_no_top.h5"]
    assert get_backbone("resnet50").weights_filenames(64) == [
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"]


def test_unknown_backbone_has_a_hint():
    with pytest.raises(ConfigError) as info:
        get_backbone("mobilenet_v2")
    assert "mobilenetv2" in info.value.hint


def test_importing_the_extractor_does_not_import_a_framework():
    code = ("import sys, bench.features.deep, bench.features.backbones, bench.weights;"
            "print(any(m in sys.modules for m in ('tensorflow', 'keras', 'jax', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"


def test_preprocess_functions_follow_each_backbones_mode():
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    caffe = x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    torch = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    expected = {"tf": x / 127.5 - 1.0, "caffe": caffe, "torch": torch, "in-model": x}
    for entry in BACKBONES:
        bb = entry.obj
        got = np.asarray(bb.preprocess_fn()(x.copy()))
        np.testing.assert_allclose(got, expected[bb.preprocessing], rtol=1e-5, atol=1e-4,
                                   err_msg=bb.name)


def test_preprocess_functions_work_inside_a_compiled_graph():
    """bench runs preprocess_input inside its tf.function, on uint8 batches cast to float."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow backend only")
    import tensorflow as tf
    x = np.random.default_rng(1).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    for mode in ("caffe", "tf", "torch"):
        bb = next(e.obj for e in BACKBONES if e.obj.preprocessing == mode)
        fn = bb.preprocess_fn()
        graph = tf.function(lambda t: fn(tf.cast(t, tf.float32)), autograph=False)
        np.testing.assert_allclose(np.asarray(graph(tf.constant(x))), fn(x.astype(np.float32)),
                                   rtol=1e-6, atol=1e-5, err_msg=mode)


def _check_layers(bb, size):
    model = bb.build(size)
    for name in bb.layers:
        t = bb.feature_tensor(model, name)
        assert t.shape[-1] == bb.channels[name], (bb.name, name)
        assert abs(np.log2(size / t.shape[1]) - np.log2(STRIDE[name])) < 0.3, (bb.name, name, t.shape)
    assert bb.feature_tensor(model, "last") is model.output or \
        model.get_layer(bb.layers["last"]).output is model.output
    return model


@pytest.mark.parametrize("name", CHEAP)
def test_named_layers_exist_with_their_channels_and_strides(name):
    bb = get_backbone(name)
    model = _check_layers(bb, 64)
    assert any(":input" in r for r in bb.layers.values()) or name == "mobilenetv2"
    with pytest.raises(ConfigError, match="no layer"):
        bb.feature_tensor(model, "block7")
    if bb.layers["last"] != OUTPUT:
        assert bb.feature_tensor(model, bb.layers["last"]) is model.output  # raw Keras name


def _keras_weights_file(name, size):
    """The file name Keras itself asks for with weights='imagenet' (the download is cut off)."""
    import keras
    from keras.src.utils import file_utils

    class Asked(Exception):
        pass

    def fake_get_file(fname=None, origin=None, **kwargs):
        raise Asked(fname, origin, kwargs.get("cache_subdir"))
    real = file_utils.get_file
    file_utils.get_file = fake_get_file
    try:
        bb = get_backbone(name)
        getattr(keras.applications, bb.constructor)(weights="imagenet", include_top=False,
                                                    input_shape=(size, size, 3))
    except Asked as asked:
        return asked.args
    finally:
        file_utils.get_file = real
    pytest.fail(f"Keras did not ask for a weights file for {name}")


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square:UserWarning")
@pytest.mark.parametrize("name,size", [("mobilenetv2", 96), ("mobilenetv2", 100), ("resnet50", 32)])
def test_weights_file_names_are_the_ones_keras_asks_for(name, size):
    fname, origin, subdir = _keras_weights_file(name, size)
    bb = get_backbone(name)
    assert fname == bb.weights_filenames(size)[0] and subdir == "models"
    assert origin == bb.weights_url + fname


@pytest.mark.slow
@pytest.mark.parametrize("name", REQUIRED)
def test_all_backbones_layers_and_weight_files(name, tmp_path, monkeypatch):
    bb = get_backbone(name)
    model = _check_layers(bb, bb.default_size)
    fname, origin, subdir = _keras_weights_file(name, bb.default_size)
    assert fname == bb.weights_filenames(bb.default_size)[0] and subdir == "models"
    assert origin == bb.weights_url + fname
    # a file in the Keras cache layout loads into Keras' own ImageNet model, every weight
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group
    from bench import weights
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    with h5py.File(tmp_path / "models" / fname, "w") as f:
        save_weights_to_hdf5_group(f, model)
    resolved = weights.resolve(bb, "imagenet", bb.default_size, on_missing="error")
    assert resolved.label == "imagenet" and resolved.path == str(tmp_path / "models" / fname)
    loaded = weights.build_model(bb, bb.default_size, resolved)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name}: {a.path}")

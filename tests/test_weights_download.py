"""Keras' download of keras.applications ImageNet weights, against a server on 127.0.0.1.

The served file is a MobileNetV3-Small no-top weights file made here (legacy HDF5, the
layout of Keras' published files, 32 px model: same shapes); Keras' own hash for it is
replaced by this file's md5 where the test needs a match. ``BENCH_WEIGHTS_URL_BASE``
points Keras' URL at the local server (test-only switch); the session-wide
``BENCH_OFFLINE=1`` of conftest.py is lifted here.
"""
import hashlib
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench import engine, weights
from bench.config import load_config
from bench.errors import WeightsError
from bench.features import backbones
from bench.features.backbones import get_backbone

FNAME = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder with the weights file (and a damaged copy), served over HTTP on 127.0.0.1."""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group
    root = tmp_path_factory.mktemp("served")
    keras.utils.set_random_seed(3)
    model = get_backbone("mobilenetv3small").build(32)
    with h5py.File(root / FNAME, "w") as f:
        save_weights_to_hdf5_group(f, model)
    (root / "bad").mkdir()
    (root / "bad" / FNAME).write_bytes((root / FNAME).read_bytes()[:-1000])  # a cut-off download
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"root": root, "url": f"http://127.0.0.1:{server.server_address[1]}", "requests": requests,
           "md5": hashlib.md5((root / FNAME).read_bytes()).hexdigest(),
           "weights": [np.asarray(w) for w in model.weights]}
    server.shutdown()
    server.server_close()


@pytest.fixture
def online(tmp_path, monkeypatch, served):
    """Online, an empty Keras cache, fresh memory of failed downloads, the server's URL."""
    monkeypatch.delenv("BENCH_OFFLINE", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(weights.URL_BASE_ENV, served["url"])
    monkeypatch.setattr(weights, "_download_failed", {})
    monkeypatch.setattr(weights, "_warned", set())
    monkeypatch.setattr(backbones, "_REQUESTS", {})  # keras_hash changes Keras' own answer
    served["requests"].clear()
    return tmp_path / "keras" / "models"


@pytest.fixture
def keras_hash(monkeypatch, served):
    """Keras' own expected hash of the no-top file set to the served file's md5."""
    from keras.src.applications import mobilenet_v3
    top, _ = mobilenet_v3.WEIGHTS_HASHES["small_224_1.0_float"]
    monkeypatch.setitem(mobilenet_v3.WEIGHTS_HASHES, "small_224_1.0_float", (top, served["md5"]))
    return served["md5"]


def _cfg(tmp_path, *extra):
    return load_config(None, [
        "name=dl", "dataset.kind=synthetic-parcel", "dataset.n_per_class=6", "dataset.size=32",
        "features=[{name: cnn, params: {backbone: mobilenetv3small, input_size: 32}}]",
        "classifiers=[logreg]", "protocol.n_splits=2", "parallel.n_jobs=1",
        f"output.results_dir={tmp_path / 'results'}", "output.formats=[]",
        "report.tsne=false", "report.learning_curves=false", "report.gallery=0", "report.retrieval=false",
        *extra])


def test_download_success_lands_in_the_keras_cache_and_rows_say_imagenet(tmp_path, online, keras_hash,
                                                                         served):
    ctx = engine.run(_cfg(tmp_path))
    assert (online / FNAME).is_file()
    assert hashlib.md5((online / FNAME).read_bytes()).hexdigest() == keras_hash
    assert served["requests"] == [f"/{FNAME}"]
    rows = ctx.records()
    assert rows and {r["weights"] for r in rows} == {"imagenet"} and {r["feature"] for r in rows} == {"cnn"}
    assert [p.name for p in online.iterdir()] == [FNAME]      # no temporary folder left
    # the model got the served weights (Keras' own ImageNet model, file handed in)
    bb = get_backbone("mobilenetv3small")
    model = weights.build_model(bb, 32, weights.resolve(bb, "imagenet", 32, on_missing="error"))
    for a, b in zip(model.weights, served["weights"]):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert served["requests"] == [f"/{FNAME}"]                # found in the cache: no second request


def test_hash_mismatch_is_a_clear_error_and_leaves_no_file(online, keras_hash, served, monkeypatch):
    monkeypatch.setenv(weights.URL_BASE_ENV, served["url"] + "/bad")
    with pytest.raises(WeightsError) as info:
        weights.resolve(get_backbone("mobilenetv3small"), "imagenet", 32, on_missing="error")
    msg = info.value.message
    assert "hash" in msg and keras_hash in msg and "deleted" in msg and f"/bad/{FNAME}" in msg
    assert served["requests"] == [f"/bad/{FNAME}"]
    assert not online.exists() or list(online.iterdir()) == []


def test_refused_connection_falls_back_to_random_init_within_seconds(online, monkeypatch):
    import socket
    with socket.socket() as s:                 # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(weights.URL_BASE_ENV, f"http://127.0.0.1:{port}")
    bb = get_backbone("mobilenetv3small")
    t0 = time.perf_counter()
    r = weights.resolve(bb, "imagenet", 32, on_missing="random")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"fallback took {elapsed:.1f} s"
    assert r.label == "random-init" and r.is_random
    assert "download" in r.note and "failed" in r.note and str(port) in r.note
    assert not online.exists() or list(online.iterdir()) == []
    with pytest.raises(WeightsError, match="failed"):     # remembered: no second attempt
        weights.resolve(bb, "imagenet", 32, on_missing="error")


def test_offline_run_makes_no_connection(tmp_path, online, keras_hash, served):
    ctx = engine.run(_cfg(tmp_path, "offline=true"))
    assert served["requests"] == []
    assert not (online / FNAME).exists()
    rows = ctx.records()
    assert rows and {r["weights"] for r in rows} == {"random-init"}
    import json
    feats = json.loads((ctx.run_dir / "features.json").read_text())
    note = next(iter(feats.values()))["describe"]["weights_note"]
    assert "offline" in note


def test_offline_environment_variable(online, keras_hash, served, monkeypatch):
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    r = weights.resolve(get_backbone("mobilenetv3small"), "imagenet", 32)
    assert r.is_random and "offline" in r.note and served["requests"] == []


def test_a_second_resolution_in_one_process_builds_no_model(online, monkeypatch):
    """Learning Keras' URL and hash costs one model construction (~1.5 s at 96 px): the
    answer is kept, so a cached second feature stage (bench perf's cache row) does not pay it."""
    import keras
    bb = get_backbone("mobilenetv3small")
    first = backbones.keras_weights_request(bb, 32)
    assert first["fname"] == FNAME and first["origin"].endswith(FNAME)

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built for a request already answered")

    monkeypatch.setattr(keras.applications, bb.constructor, no_build)
    assert backbones.keras_weights_request(bb, 32) == first
    with pytest.raises(AssertionError, match="already answered"):  # another size is another request
        backbones.keras_weights_request(bb, 64)

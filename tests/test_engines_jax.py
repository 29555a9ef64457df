"""The ``cnn`` extractor under ``KERAS_BACKEND=jax`` (bench/features/jax_forward.py) gives the
TensorFlow backend's embeddings within 1e-4.

Slow (a JAX subprocess compiles two networks): run with ``make test-all`` or ``pytest -m slow``.
EfficientNet-Lite0 has its packaged ImageNet weights (real); MobileNetV2 random weights with
calibrated BatchNorm statistics, written to a file both backends load (plain random init
would give ~1e-11 embeddings and a vacuous comparison). 5 images in batches of 4: the last
batch is padded to the compiled shape.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SIZE = 96

_SCRIPT = r"""
import json, sys
import numpy as np
import keras
from bench.features.deep import CNNFeatures
args = json.loads(sys.argv[1])
images = list(np.load(args["images"]))
out = {}
for name, weights in args["models"].items():
    e = CNNFeatures(backbone=name, weights=weights, input_size=args["size"], batch_size=4)  # engine auto
    np.save(args["out"] + f"/{name}.npy", e.transform(images))
    out[name] = {"how": e.forward_how_, "engine": e.describe()["engine"], "backend": keras.backend.backend()}
print(json.dumps(out))
"""


def test_jax_backend_embeddings_equal_tensorflow(tmp_path):
    pytest.importorskip("jax")
    from bench.features.deep import CNNFeatures
    from bench.perf_deep import calibrated_weights
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:120, 0:110] / 120.0
    images = np.stack([np.clip(np.stack([xx, yy, xx * yy], -1) * 255 * rng.random(3)
                               + rng.normal(0, 25, (120, 110, 3)), 0, 255).astype(np.uint8)
                       for _ in range(5)])
    np.save(tmp_path / "images.npy", images)
    models = {"efficientnet_lite0": "imagenet",
              "mobilenetv2": calibrated_weights("mobilenetv2", SIZE, tmp_path)}
    ref = {name: CNNFeatures(backbone=name, weights=w, input_size=SIZE, engine="keras").transform(list(images))
           for name, w in models.items()}
    args = {"images": str(tmp_path / "images.npy"), "models": models, "size": SIZE, "out": str(tmp_path)}
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], capture_output=True,
                          text=True, env=env, timeout=1800, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in models:
        assert info[name]["backend"] == "jax" and info[name]["engine"] == "keras"
        assert info[name]["how"].startswith("jax.jit") and "BatchNorm folded" in info[name]["how"]
        assert not info[name]["how"].startswith("jax.jit (stateless, batch 4, 0 ")  # something folded
        got = np.load(tmp_path / f"{name}.npy")
        assert got.shape == ref[name].shape == (5, 1280)
        assert (ref[name].std(axis=0) > 1e-3).mean() > 0.1, name  # not vacuous
        assert np.abs(got - ref[name]).max() <= 1e-4, (name, np.abs(got - ref[name]).max())

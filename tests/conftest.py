"""Test isolation: a private feature cache, Keras home, no network, headless plotting.

``BENCH_OFFLINE=1`` for the whole session: no test may reach for Keras' download of
ImageNet weights; the download tests (tests/test_weights_download.py) lift it and
serve files from 127.0.0.1.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_dirs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench-cache")
    keras_home = tmp_path_factory.mktemp("keras-home")
    old = {k: os.environ.get(k) for k in ("BENCH_CACHE_DIR", "KERAS_HOME", "BENCH_OFFLINE",
                                          "BENCH_WEIGHTS_URL_BASE")}
    os.environ["BENCH_CACHE_DIR"] = str(cache)
    os.environ["KERAS_HOME"] = str(keras_home)
    os.environ["BENCH_OFFLINE"] = "1"
    os.environ.pop("BENCH_WEIGHTS_URL_BASE", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present in the project workspace)")
    return SHARED_DATA

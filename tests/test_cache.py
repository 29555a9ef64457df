"""Feature cache: content addressing, memory-mapped reads, two concurrent writers, and what a
run gets from it: every feature its own matrix, nothing written when the cache is off."""
import itertools
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

from bench import engine
from bench.cache import FeatureCache, make_key
from bench.registry import DATASETS, FEATURES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import toy_config  # noqa: E402


def _compute_once(root, key, out_q):
    cache = FeatureCache(root)
    with cache.lock(key):
        hit = cache.get(key)
        if hit is None:
            time.sleep(0.5)  # a slow extraction: the other process must wait, then load
            cache.put(key, np.arange(12, dtype=np.float32).reshape(3, 4), {"ms_per_image": 1.0})
            out_q.put("computed")
        else:
            out_q.put("loaded")


def test_two_concurrent_runs_compute_a_key_once(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    key = make_key("dataset", "extractor", "prepare")
    procs = [ctx.Process(target=_compute_once, args=(str(tmp_path), key, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(q.get(timeout=5) for _ in procs) == ["computed", "loaded"]
    arr, meta = FeatureCache(tmp_path).get(key)
    assert isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert meta["kind"] == "dense"
    assert not list((tmp_path / "features").glob("*.tmp*"))


def test_key_changes_with_each_of_its_parts():
    """Dataset fingerprint, extractor key and preparation each change the key, alone or together."""
    variants = [("ds-a", "ds-b"), ('{"cls": "HOG"}', '{"cls": "LBP"}'), ("size=None", "size=(32, 32)")]
    keys = {combo: make_key(*combo) for combo in itertools.product(*variants)}
    assert len(set(keys.values())) == 8, "two different (dataset, extractor, preparation) share a key"
    for combo, key in keys.items():
        assert make_key(*combo) == key                     # deterministic
        assert len(key) == 32 and int(key, 16) >= 0
    # the parts are separated: moving text from one part to the next gives another key
    assert make_key("ab", "c", "p") != make_key("a", "bc", "p")
    assert make_key("a", "bc", "p") != make_key("a", "b", "cp")


def test_keys_are_content_addressed_and_object_arrays_round_trip(tmp_path):
    cache = FeatureCache(tmp_path)
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = np.ones((3, 128), np.float32), np.zeros((0, 128), np.float32)
    cache.put("k", obj, {})
    back, meta = cache.get("k")
    assert meta["kind"] == "ragged" and back[0].shape == (3, 128) and back[1].shape == (0, 128)
    np.testing.assert_array_equal(back[0], obj[0])
    # a damaged entry is a miss, not a crash
    (tmp_path / "features" / "k.npz").write_bytes(b"garbage")
    assert cache.get("k") is None
    assert FeatureCache(tmp_path, enabled=False).get("k") is None
    assert cache.info()["entries"] == 1 and cache.clear() == 1 and cache.info()["entries"] == 0


def _direct(name, params, dataset):
    return FEATURES.create(name, **params).transform([dataset.load(i) for i in range(len(dataset))])


FEATS = ("features=[hog, lbp, {name: lbp, label: lbp-r2, params: {radii: [2, 3, 4]}}, "
         "{name: lbp, label: lbp-small, prepare: {size: [12, 12]}}]")


def test_each_feature_of_a_run_gets_its_own_matrix(tmp_path):
    """Through the engine and a shared cache: no feature is served another one's features
    (different extractor, different parameters, different preparation)."""
    ctx = engine.run(toy_config(tmp_path, FEATS, "output.run_id=a"))
    ds = DATASETS.create("toy-blobs", n_per_class=8)
    meta = json.loads((ctx.run_dir / "features.json").read_text())
    direct = {"hog": _direct("hog", {}, ds), "lbp": _direct("lbp", {}, ds),
              "lbp-r2": _direct("lbp", {"radii": [2, 3, 4]}, ds)}
    assert direct["hog"].shape[1] == 1764 and direct["lbp"].shape[1] == direct["lbp-r2"].shape[1] == 30
    for label, X in direct.items():
        np.testing.assert_allclose(np.asarray(ctx.per_image(label)), X, rtol=1e-6, err_msg=label)
        assert meta[label]["n_features"] == X.shape[1]
        assert {r["n_features"] for r in ctx.records() if r["feature"] == label} == {X.shape[1]}
    small = np.asarray(ctx.per_image("lbp-small"))
    assert small.shape == direct["lbp"].shape and not np.allclose(small, direct["lbp"])
    assert not any(m["cached"] for m in meta.values())
    # a second run (other results folder, same cache) reads every matrix back, each its own
    ctx2 = engine.run(toy_config(tmp_path, FEATS, "output.run_id=b"))
    meta2 = json.loads((ctx2.run_dir / "features.json").read_text())
    assert all(m["cached"] for m in meta2.values())
    for label in meta:
        np.testing.assert_array_equal(np.asarray(ctx2.per_image(label)), np.asarray(ctx.per_image(label)))
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 4


def test_disabled_cache_writes_nothing_and_gives_the_same_results(tmp_path):
    on = engine.run(toy_config(tmp_path / "on", "features=[lbp, hog]", "classifiers=[logreg, knn]"))
    cache_dir = tmp_path / "off" / "cache"
    off = engine.run(toy_config(tmp_path / "off", "features=[lbp, hog]", "classifiers=[logreg, knn]",
                                "cache.enabled=false"))
    assert not cache_dir.exists() or not any(cache_dir.rglob("*")), list(cache_dir.rglob("*"))
    score = lambda ctx: sorted((r["cell_id"], r["macro_f1"], r["accuracy"], r["n_features"])
                               for r in ctx.records())
    assert len(score(off)) == 2 * 2 * 3 and score(off) == score(on)
    assert all(not m["cached"] for m in json.loads((off.run_dir / "features.json").read_text()).values())

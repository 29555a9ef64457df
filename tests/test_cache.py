"""Feature cache: content addressing, memory-mapped reads, two concurrent writers."""
import multiprocessing as mp
import time

import numpy as np

from bench.cache import FeatureCache, make_key


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


def test_keys_are_content_addressed_and_object_arrays_round_trip(tmp_path):
    assert make_key("a", "x", "p") != make_key("b", "x", "p") != make_key("a", "y", "p")
    assert make_key("a", "x", "p") == make_key("a", "x", "p")
    cache = FeatureCache(tmp_path)
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = np.ones((3, 128), np.float32), np.zeros((0, 128), np.float32)
    cache.put("k", obj, {})
    back, meta = cache.get("k")
    assert meta["kind"] == "object" and back[0].shape == (3, 128) and back[1].shape == (0, 128)
    # a damaged entry is a miss, not a crash
    (tmp_path / "features" / "k.pkl").write_bytes(b"garbage")
    assert cache.get("k") is None
    assert FeatureCache(tmp_path, enabled=False).get("k") is None
    assert cache.info()["entries"] == 1 and cache.clear() == 1 and cache.info()["entries"] == 0

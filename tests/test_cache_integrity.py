"""Issue 11, defects 1, 3 and 4: the feature cache is checked on every load, never unpickles,
and a cache folder that cannot be written is used read-only when complete, else exit 2.

The run-level tests go through the command line (``bench.cli.main`` in this process) on the
toy plugin dataset (a second or two per run)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.cache import FeatureCache, decode_ragged, encode_ragged, file_checksum

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import PLUGIN, run_cli  # noqa: E402

QUIET = ["report.tsne=false", "report.learning_curves=false", "report.gallery=0", "report.retrieval=false",
         "report.explain=false", "parallel.n_jobs=1", "output.formats=[html]", "--no-report"]


def _pipeline(tmp_path, cache_dir=None, features=("column_profile",)) -> Path:
    cfg = {"name": "t", "plugins": [PLUGIN], "dataset": {"kind": "toy-blobs", "n_per_class": 6},
           "features": list(features), "classifiers": ["logreg"], "protocol": {"n_splits": 2},
           "output": {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports")}}
    if cache_dir is not None:
        cfg["cache"] = {"dir": str(cache_dir)}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(tmp_path, run_id, *extra, cache_dir=None, features=("column_profile",)):
    cfg = _pipeline(tmp_path, cache_dir, features)
    return run_cli("run", "--config", cfg, f"output.run_id={run_id}", *QUIET, *extra)


def _records(tmp_path, run_id) -> list:
    files = list((tmp_path / "results").rglob(f"{run_id}/records.jsonl"))
    assert len(files) <= 1, files
    return [json.loads(x) for x in files[0].read_text().splitlines()] if files else []


def _scores(recs) -> list:
    return sorted((r["cell_id"], r["status"], r.get("macro_f1")) for r in recs)


def _user_error(res, *words):
    assert res.returncode == 2, res
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr, res
    lines = res.stderr.splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, res
    assert any(line.startswith("hint:") and len(line) > 8 for line in lines), res
    for w in words:
        assert w in res.stderr, (w, res)


# --------------------------------------------------------------------------- no pickle (defect 3)
class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_a_planted_pickle_is_never_unpickled(tmp_path, caplog):
    cache = FeatureCache(tmp_path / "cache")
    flag = tmp_path / "PWNED"
    boom = _Boom()
    boom.flag = flag
    d = tmp_path / "cache" / "features"
    d.mkdir(parents=True)
    (d / "k.pkl").write_bytes(pickle.dumps(boom))
    (d / "k.json").write_text(json.dumps({"kind": "object"}))
    # the planted file does run code when unpickled: the test is able to fail
    with caplog.at_level(logging.WARNING, logger="bench.cache"):
        assert cache.get("k", label="sift") is None
    assert not flag.exists(), "the cache unpickled a planted .pkl"
    assert "k (sift)" in caplog.text and "unpickle" in caplog.text
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
                    str(d / "k.pkl")], check=True)
    assert flag.exists()
    # a fresh entry replaces it, and the stale pickle is removed
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = np.ones((2, 4), np.float32), np.zeros((0, 4), np.float32)
    cache.put("k", obj, {})
    assert not (d / "k.pkl").exists() and cache.get("k")[1]["kind"] == "ragged"
    src = Path(sys.modules["bench.cache"].__file__).read_text()
    assert "joblib" not in src and "import pickle" not in src and "allow_pickle=True" not in src


def test_ragged_object_arrays_round_trip_without_pickle(tmp_path):
    """1-D (SIFT descriptor sets) and 2-D (concat parts: vectors beside sets) object arrays,
    mixed dtypes and empty cells, come back equal, read with allow_pickle=False."""
    rng = np.random.default_rng(0)
    one = np.empty(3, dtype=object)
    one[0], one[1], one[2] = rng.random((5, 128)).astype(np.float32), np.zeros((0, 128), np.float32), \
        rng.random((1, 128)).astype(np.float32)
    two = np.empty((2, 2), dtype=object)
    two[0, 0], two[1, 0] = rng.random(7), rng.random(7)                 # float64 vectors
    two[0, 1], two[1, 1] = rng.random((3, 4)).astype(np.float32), np.arange(8, dtype=np.int32).reshape(2, 4)
    cache = FeatureCache(tmp_path)
    for key, arr in (("one", one), ("two", two)):
        cache.put(key, arr, {"label": key})
        back, meta = FeatureCache(tmp_path).get(key, rows=len(arr))
        assert back.dtype == object and back.shape == arr.shape and meta["shape"] == list(arr.shape)
        for a, b in zip(arr.reshape(-1), back.reshape(-1)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    with np.load(tmp_path / "features" / "two.npz", allow_pickle=False) as z:
        assert decode_ragged(z)[1, 1].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    bad = np.empty(1, dtype=object)
    bad[0] = {"not": "numeric"}
    assert encode_ragged(bad) is None
    cache.put("bad", bad, {"label": "bad"})
    assert cache.get("bad") is None  # not cached (and never pickled)


# --------------------------------------------------------------------------- checked entries (defect 4)
def _entry(cache_dir) -> tuple[Path, Path]:
    metas = list((Path(cache_dir) / "features").glob("*.json"))
    assert len(metas) == 1, metas
    return metas[0].with_suffix(".npy"), metas[0]


def _plant(npy: Path, meta_path: Path, arr: np.ndarray, fix_sidecar: bool) -> None:
    with open(npy, "wb") as fh:
        np.save(fh, arr)
    if fix_sidecar:  # a consistent sidecar: only the expected row count can catch it
        meta = json.loads(meta_path.read_text())
        meta.update(shape=list(arr.shape), dtype=str(arr.dtype), checksum=file_checksum(npy))
        meta_path.write_text(json.dumps(meta))


def test_entry_checks_shape_dtype_checksum_and_rows(tmp_path, caplog):
    cache = FeatureCache(tmp_path)
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    cache.put("k", X, {"label": "f"})
    npy, meta_path = _entry(tmp_path)
    assert json.loads(meta_path.read_text())["shape"] == [4, 3]
    np.testing.assert_array_equal(FeatureCache(tmp_path).get("k", rows=4)[0], X)
    cases = [(X[:, :2].copy(), False, "checksum"),                 # other columns, sidecar untouched
             (X.astype(np.float64), True, None),                   # consistent, and rows right: valid
             (X[:3].copy(), True, "3 rows for 4 images")]          # consistent sidecar, rows wrong
    for arr, fix, reason in cases:
        cache.put("k", X, {"label": "f"})
        _plant(npy, meta_path, arr, fix)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bench.cache"):
            hit = FeatureCache(tmp_path).get("k", rows=4, label="f")
        if reason is None:
            assert hit is not None and hit[0].dtype == np.float64
            continue
        assert hit is None, reason
        assert f"k (f)" in caplog.text and reason in caplog.text and "cache clear" in caplog.text
    # a sidecar of an older bench (no checksum) is stale too
    cache.put("k", X, {"label": "f"})
    meta = json.loads(meta_path.read_text())
    del meta["checksum"]
    meta_path.write_text(json.dumps(meta))
    assert FeatureCache(tmp_path).get("k") is None


def test_one_flipped_byte_is_caught_and_earlier_blake2b_sidecars_still_verify(tmp_path):
    cache = FeatureCache(tmp_path)
    X = np.random.default_rng(0).random((50, 40)).astype(np.float32)
    cache.put("k", X, {"label": "f"})
    npy, meta_path = _entry(tmp_path)
    assert json.loads(meta_path.read_text())["checksum"].startswith("crc32:")
    data = bytearray(npy.read_bytes())
    data[-7] ^= 0x01  # one bit of one value: shape and dtype unchanged
    npy.write_bytes(bytes(data))
    assert FeatureCache(tmp_path).get("k", rows=50) is None
    cache.put("k", X, {"label": "f"})  # an entry written by a bench that used blake2b
    meta = json.loads(meta_path.read_text())
    meta["checksum"] = file_checksum(npy, "blake2b")
    assert meta["checksum"].startswith("blake2b:")
    meta_path.write_text(json.dumps(meta))
    np.testing.assert_array_equal(FeatureCache(tmp_path).get("k", rows=50)[0], X)
    npy.write_bytes(bytes(data))
    assert FeatureCache(tmp_path).get("k", rows=50) is None


# ------------------------------------------------------------------------- checks that cost nothing on hits
class _Counting:
    """``bench.cache.file_checksum`` replaced by a counting wrapper."""

    def __init__(self, monkeypatch):
        import bench.cache as cache_mod
        self.calls, real = [], cache_mod.file_checksum

        def counted(path, *a, **k):
            self.calls.append(Path(path).name)
            return real(path, *a, **k)
        monkeypatch.setattr(cache_mod, "file_checksum", counted)


def test_an_unchanged_entry_is_not_hashed_again_and_any_write_to_it_is(tmp_path, monkeypatch):
    X = np.random.default_rng(0).random((64, 32)).astype(np.float32)
    FeatureCache(tmp_path).put("k", X, {"label": "f"})
    npy, meta_path = _entry(tmp_path)
    count = _Counting(monkeypatch)
    np.testing.assert_array_equal(FeatureCache(tmp_path).get("k", rows=64)[0], X)
    assert count.calls == []  # verified when written, unchanged since: not read in full
    # a write that keeps the size and puts the mtime back is still seen (the ctime moves)
    st = npy.stat()
    data = bytearray(npy.read_bytes())
    data[-5] ^= 0x10
    with open(npy, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert npy.stat().st_size == st.st_size and npy.stat().st_mtime_ns == st.st_mtime_ns
    assert FeatureCache(tmp_path).get("k", rows=64) is None
    assert count.calls == [npy.name]
    # ... also when the sidecar is written again afterwards (newer than the change): the
    # recorded identity, ctime included, is what vouches for the bytes
    FeatureCache(tmp_path).put("k", X, {"label": "f"})
    st = npy.stat()
    with open(npy, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    meta_path.write_text(meta_path.read_text())
    count.calls.clear()
    assert FeatureCache(tmp_path).get("k", rows=64) is None
    assert count.calls == [npy.name]
    # a sidecar not newer than the file's last change ("racily clean") means: hash it
    FeatureCache(tmp_path).put("k", X, {"label": "f"})
    count.calls.clear()
    os.utime(meta_path, ns=(npy.stat().st_ctime_ns, npy.stat().st_ctime_ns))
    np.testing.assert_array_equal(FeatureCache(tmp_path).get("k", rows=64)[0], X)
    assert count.calls == [npy.name]
    # ... and once hashed, the identity is recorded: the next run does not hash it again
    assert json.loads(meta_path.read_text())["file"][1] == npy.stat().st_size
    count.calls.clear()
    assert FeatureCache(tmp_path).get("k", rows=64) is not None and count.calls == []


def test_cache_verify_rehashes_every_entry_and_removes_bad_ones(tmp_path):
    """A change the identity cannot see (bytes altered below the filesystem: simulated by
    recording the altered file's identity) is what ``bench cache verify`` is for."""
    cache = FeatureCache(tmp_path)
    X = np.random.default_rng(1).random((20, 8)).astype(np.float32)
    cache.put("good", X, {"label": "a"})
    cache.put("bad", X, {"label": "b"})
    bad = tmp_path / "features" / "bad.npy"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0x01
    bad.write_bytes(bytes(data))
    meta = json.loads((tmp_path / "features" / "bad.json").read_text())
    st = bad.stat()
    meta["file"] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    (tmp_path / "features" / "bad.json").write_text(json.dumps(meta))
    assert FeatureCache(tmp_path).get("bad") is not None  # trusted by its identity
    res = run_cli("cache", "verify", "--dir", tmp_path)
    assert res.returncode == 1, res
    assert "checked: 2 entries" in res.stdout and "bad (removed): 1" in res.stdout and "bad" in res.stderr
    assert not bad.exists() and FeatureCache(tmp_path).get("bad") is None
    np.testing.assert_array_equal(FeatureCache(tmp_path).get("good")[0], X)
    res = run_cli("cache", "verify", "--dir", tmp_path)
    assert res.returncode == 0 and "checked: 1 entries" in res.stdout and "bad (removed): 0" in res.stdout


def test_ragged_cells_are_aligned_views_of_one_memory_map_and_other_npz_layouts_load(tmp_path):
    import zipfile
    rng = np.random.default_rng(2)
    obj = np.empty(40, dtype=object)
    for i in range(40):
        obj[i] = rng.random((int(rng.integers(0, 30)), 128)).astype(np.float32)
    obj[3] = np.arange(6, dtype=np.int64).reshape(2, 3)  # a second dtype
    cache = FeatureCache(tmp_path)
    cache.put("r", obj, {"label": "sift"})
    path = tmp_path / "features" / "r.npz"
    with zipfile.ZipFile(path) as zf:  # a standard npz: numpy reads it
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(decode_ragged(z)[7], obj[7])
    back = FeatureCache(tmp_path).get("r", rows=40)[0]
    for a, b in zip(obj, back):
        assert b.dtype == a.dtype and b.flags.aligned and not b.flags.writeable
        np.testing.assert_array_equal(a, b)
    base = [b for b in back if b.dtype == np.float32 and b.size]
    assert all(np.shares_memory(base[0], b) is False for b in base[1:])  # distinct cells ...
    roots = set()
    for b in base:
        while getattr(b, "base", None) is not None and not isinstance(b, np.memmap):
            b = b.base
        roots.add(id(b))
    assert len(roots) == 1  # ... of one memory map, not copies
    # npz files of np.savez (unaligned) and np.savez_compressed load too, equal
    from bench.cache import encode_ragged as enc
    for save in (np.savez, np.savez_compressed):
        with open(path, "wb") as fh:
            save(fh, **enc(obj))
        meta = json.loads((tmp_path / "features" / "r.json").read_text())
        meta["checksum"] = file_checksum(path)
        (tmp_path / "features" / "r.json").write_text(json.dumps(meta))
        back = FeatureCache(tmp_path).get("r", rows=40)[0]
        assert all(b.flags.aligned for b in back)
        for a, b in zip(obj, back):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fix_sidecar", [False, True], ids=["checksum", "rows"])
def test_a_bad_entry_is_recomputed_and_rewritten_by_the_next_run(tmp_path, fix_sidecar):
    cache_dir = tmp_path / "cache"
    first = _run(tmp_path, "a", cache_dir=cache_dir)
    assert first.returncode == 0, first
    good = _scores(_records(tmp_path, "a"))
    assert good and all(s == "ok" for _, s, _ in good)
    npy, meta_path = _entry(cache_dir)
    X = np.load(npy)
    _plant(npy, meta_path, np.zeros((X.shape[0] - 1, X.shape[1]), np.float32), fix_sidecar)
    second = _run(tmp_path, "b", cache_dir=cache_dir)
    assert second.returncode == 0, second
    assert "feature cache entry" in second.stderr and "column_profile" in second.stderr, second
    assert _scores(_records(tmp_path, "b")) == good
    np.testing.assert_array_equal(np.load(npy), X)            # rewritten
    assert json.loads(meta_path.read_text())["checksum"] == file_checksum(npy)


# --------------------------------------------------------------------------- unwritable cache (defect 1)
@contextlib.contextmanager
def _unwritable(root: Path):
    """``root`` and everything under it made unwritable for this process: chmod for a normal
    user, the immutable attribute for root (skip where neither works)."""
    paths = [root, *sorted(root.rglob("*"))]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            yield
        finally:
            for p in reversed(paths):
                p.chmod(modes[p])
        return
    done = []
    try:
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
                pytest.skip("running as root where chattr +i is not supported")
            done.append(p)
        try:
            (root / "probe").touch()
            pytest.skip("the cache folder is still writable")
        except OSError:
            pass
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)


def test_an_unwritable_complete_cache_is_used_read_only(tmp_path):
    cache_dir = tmp_path / "cache"
    first = _run(tmp_path, "a", cache_dir=cache_dir)
    assert first.returncode == 0, first
    files = {p: p.read_bytes() for p in (cache_dir / "features").iterdir()}
    with _unwritable(cache_dir):
        res = _run(tmp_path, "b", cache_dir=cache_dir)
        assert res.returncode == 0, res
        assert _scores(_records(tmp_path, "b")) == _scores(_records(tmp_path, "a")), res
        assert "read-only" in res.stderr, res
        # a feature the cache lacks: one clear error, exit 2, no failed cells
        res = _run(tmp_path, "c", cache_dir=cache_dir, features=("column_profile", "lbp"))
        _user_error(res, str(cache_dir), "lbp", "cache.dir")
        assert not [r for r in _records(tmp_path, "c") if r["status"] != "ok"]
    assert {p: p.read_bytes() for p in (cache_dir / "features").iterdir()} == files


def test_bench_cache_dir_pointing_at_a_file_is_a_user_error(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "cachefile"
    not_a_dir.write_text("I am a file")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(not_a_dir))
    res = _run(tmp_path, "a")
    _user_error(res, str(not_a_dir), "BENCH_CACHE_DIR")
    assert not [r for r in _records(tmp_path, "a") if r["status"] != "ok"]
    assert not_a_dir.read_text() == "I am a file"
    # with the cache off the same run works
    res = _run(tmp_path, "b", "cache.enabled=false")
    assert res.returncode == 0 and _records(tmp_path, "b"), res

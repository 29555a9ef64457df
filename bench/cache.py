"""Content-addressed feature cache.

A per-image feature matrix is stored under a key that hashes

* the dataset's per-image content keys, in order (hash of image bytes, or of the
  generator's seed and parameters),
* the extractor's ``cache_key()`` (class, version, parameters; CNN extractors add
  their resolved weights identity) and
* the image preparation.

Dense matrices are ``.npy`` files opened memory-mapped, so a run over data larger
than RAM reads rows on demand; object outputs (e.g. SIFT descriptor sets) are
joblib pickles. Writes go to a temporary file renamed into place; a per-key lock
file makes two concurrent runs compute a key once (the second waits and loads).

Location: ``cache.dir`` in the config, else ``$BENCH_CACHE_DIR``, else
``~/.cache/bench``. ``python -m bench cache info|clear`` inspects or empties it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import joblib
import numpy as np

CACHE_VERSION = "1"


def default_dir() -> Path:
    env = os.environ.get("BENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bench"


def make_key(dataset_fingerprint: str, extractor_key: str, prepare_key: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (CACHE_VERSION, dataset_fingerprint, extractor_key, prepare_key):
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()


class FeatureCache:
    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root).expanduser() if root else default_dir()
        self.enabled = enabled

    def _dir(self) -> Path:
        d = self.root / "features"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def paths(self, key: str) -> dict:
        d = self.root / "features"
        return {"npy": d / f"{key}.npy", "pkl": d / f"{key}.pkl", "meta": d / f"{key}.json",
                "lock": d / f"{key}.lock"}

    def get(self, key: str):
        """``(array, meta)`` or ``None``. Dense arrays come back memory-mapped read-only."""
        if not self.enabled:
            return None
        p = self.paths(key)
        if not p["meta"].exists():
            return None
        try:
            meta = json.loads(p["meta"].read_text())
            if meta.get("kind") == "dense":
                arr = np.load(p["npy"], mmap_mode="r")
            else:
                arr = joblib.load(p["pkl"])
        except (OSError, ValueError, EOFError, json.JSONDecodeError):
            return None  # a damaged entry is recomputed
        return arr, meta

    def put(self, key: str, arr, meta: dict) -> None:
        if not self.enabled:
            return
        d = self._dir()
        p = self.paths(key)
        tmp_suffix = f".tmp{os.getpid()}"
        if isinstance(arr, np.ndarray) and arr.dtype != object:
            kind = "dense"
            tmp = d / f"{key}.npy{tmp_suffix}"
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr))
            os.replace(tmp, p["npy"])
        else:
            kind = "object"
            tmp = d / f"{key}.pkl{tmp_suffix}"
            joblib.dump(arr, tmp)
            os.replace(tmp, p["pkl"])
        meta = {**meta, "kind": kind, "created": time.time()}
        tmp = d / f"{key}.json{tmp_suffix}"
        tmp.write_text(json.dumps(meta, default=str))
        os.replace(tmp, p["meta"])  # the meta file is written last: it marks the entry complete

    def stream_path(self, key: str) -> Path:
        """Temporary path a dense matrix can be streamed into, then :meth:`commit_stream`."""
        self._dir()
        return self.paths(key)["npy"].with_suffix(f".npy.tmp{os.getpid()}")

    def commit_stream(self, key: str, meta: dict) -> np.ndarray:
        """Move a streamed ``.npy`` into place, write its meta, return it memory-mapped."""
        p = self.paths(key)
        os.replace(self.stream_path(key), p["npy"])
        meta = {**meta, "kind": "dense", "created": time.time()}
        tmp = p["meta"].with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta, default=str))
        os.replace(tmp, p["meta"])
        return np.load(p["npy"], mmap_mode="r")

    @contextlib.contextmanager
    def lock(self, key: str):
        """Exclusive per-key lock (POSIX flock); a no-op where unsupported or disabled."""
        if not self.enabled:
            yield
            return
        self._dir()
        fd = os.open(self.paths(key)["lock"], os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_EX)
            except (ImportError, OSError):  # pragma: no cover
                pass
            yield
        finally:
            os.close(fd)

    def info(self) -> dict:
        d = self.root / "features"
        entries = list(d.glob("*.json")) if d.exists() else []
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file()) if d.exists() else 0
        return {"dir": str(self.root), "entries": len(entries), "bytes": size}

    def clear(self) -> int:
        d = self.root / "features"
        n = len(list(d.glob("*.json"))) if d.exists() else 0
        if d.exists():
            shutil.rmtree(d)
        return n

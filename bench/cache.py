"""Content-addressed feature cache, checked on every load.

A per-image feature matrix is stored under a key that hashes

* the dataset's per-image content keys, in order (hash of image bytes, or of the
  generator's seed and parameters),
* the extractor's ``cache_key()`` (class, version, parameters; CNN extractors add
  their resolved weights identity) and
* the image preparation.

Files of an entry ``K`` under ``<root>/features/``:

* ``K.npy``: a dense matrix, opened memory-mapped, so a run over data larger than RAM
  reads rows on demand; or ``K.npz``: an object output (e.g. SIFT descriptor sets, one
  array per image) stored *ragged*: flat numeric arrays plus per-cell shapes and
  offsets. Both are read with ``allow_pickle=False``: **nothing in the cache is ever
  unpickled** (a planted ``.pkl`` or a ``"kind": "object"`` sidecar is a stale entry,
  recomputed).
* ``K.json``: the sidecar, written last (it marks the entry complete): ``kind``
  (``dense`` / ``ragged``), ``shape``, ``dtype`` and ``checksum`` (CRC-32 of the data
  file: it detects truncated or altered files at ~2 GB/s, 4x faster than blake2b, whose
  ``blake2b:`` sidecars of earlier entries are still verified). :meth:`FeatureCache.get`
  checks all of them (and the caller's expected row count); a mismatch logs a warning naming the entry and the entry is recomputed and
  rewritten.
* ``K.lock``: the per-key lock, so two concurrent runs compute a key once (the second
  waits and loads).

A cache folder that cannot be written: :meth:`FeatureCache.ensure_usable` turns it
into read-only use when every entry a run needs is present and valid (no locks, no
writes), and otherwise raises a :class:`~bench.errors.ResultsError` (exit 2) with a hint.

Location: ``cache.dir`` in the config, else ``$BENCH_CACHE_DIR``, else
``~/.cache/bench``. ``python -m bench cache info|clear`` inspects or empties it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from .errors import ResultsError

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
CHECKSUM = "crc32"
CLEAR_HINT = "python -m bench cache clear"


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


def file_checksum(path: Path, algorithm: str = CHECKSUM) -> str:
    """``"crc32:<hex>"`` (or ``"blake2b:<hex>"``, the sidecars of earlier entries) of a
    file's bytes, read in 4 MiB blocks. Not a defence against forgery (whoever can write
    the data file can write its sidecar): a check that the bytes are the ones stored."""
    with open(path, "rb") as fh:
        blocks = iter(lambda: fh.read(1 << 22), b"")
        if algorithm == "blake2b":
            h = hashlib.blake2b(digest_size=20)
            for block in blocks:
                h.update(block)
            return f"blake2b:{h.hexdigest()}"
        crc = 0
        for block in blocks:
            crc = zlib.crc32(block, crc)
    return f"crc32:{crc:08x}"


# --------------------------------------------------------------------------- ragged (object) arrays
def encode_ragged(arr: np.ndarray) -> dict | None:
    """The arrays of an ``npz`` holding an object array whose cells are numeric arrays
    (any shapes, any numeric dtypes), or ``None`` when a cell is not numeric."""
    cells = [np.asarray(c) for c in arr.reshape(-1)]
    if any(c.dtype.kind not in "biuf" for c in cells):
        return None
    dtypes = sorted({c.dtype.str for c in cells})
    which = np.array([dtypes.index(c.dtype.str) for c in cells], dtype=np.int64)
    offsets, data = np.zeros(len(cells), np.int64), {i: [] for i in range(len(dtypes))}
    used = [0] * len(dtypes)
    for j, c in enumerate(cells):
        offsets[j] = used[which[j]]
        used[which[j]] += c.size
        data[which[j]].append(c.reshape(-1))
    out = {"outer_shape": np.array(arr.shape, np.int64), "dtypes": np.array(dtypes, dtype="U"),
           "which": which, "offsets": offsets,
           "ndims": np.array([c.ndim for c in cells], np.int64),
           "dims": np.array([d for c in cells for d in c.shape], np.int64)}
    for i, parts in data.items():
        out[f"data_{i}"] = np.concatenate(parts) if parts else np.zeros(0, np.dtype(dtypes[i]))
    return out


def decode_ragged(z) -> np.ndarray:
    """The object array of :func:`encode_ragged`'s arrays (``z``: a loaded npz)."""
    which, offsets, ndims, dims = z["which"], z["offsets"], z["ndims"], z["dims"]
    data = [z[f"data_{i}"] for i in range(len(z["dtypes"]))]
    flat = np.empty(len(which), dtype=object)
    d = 0
    for j in range(len(which)):
        shape = tuple(int(v) for v in dims[d:d + ndims[j]])
        d += int(ndims[j])
        size = int(np.prod(shape)) if shape else 1
        flat[j] = data[which[j]][offsets[j]:offsets[j] + size].reshape(shape)
    return flat.reshape(tuple(int(v) for v in z["outer_shape"]))


class _Stale(Exception):
    """An entry that fails a check: the reason, for the warning."""


class FeatureCache:
    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root).expanduser() if root else default_dir()
        self.enabled = enabled
        self.read_only = False   # set by ensure_usable: no locks, no writes
        self._checked: dict = {}  # key -> (data file mtime_ns, size) already verified
        self._streams: dict = {}  # key -> temporary path of a streamed matrix

    def _dir(self) -> Path:
        d = self.root / "features"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def paths(self, key: str) -> dict:
        d = self.root / "features"
        return {"npy": d / f"{key}.npy", "npz": d / f"{key}.npz", "pkl": d / f"{key}.pkl",
                "meta": d / f"{key}.json", "lock": d / f"{key}.lock"}

    # ------------------------------------------------------------------ reading
    def get(self, key: str, rows: int | None = None, label: str | None = None):
        """``(array, meta)`` of a valid entry, or ``None`` (missing, or stale: a warning
        names it). Dense arrays come back memory-mapped read-only; ``rows``: the row count
        the caller expects (the dataset's size)."""
        if not self.enabled:
            return None
        p = self.paths(key)
        if not p["meta"].exists():
            return None
        try:
            return self._load(key, p, rows)
        except _Stale as why:
            log.warning("feature cache entry %s%s is stale (%s): recomputing it (to clear the "
                        "cache: %s)", key, f" ({label})" if label else "", why, CLEAR_HINT)
            self._checked.pop(key, None)
            return None

    def _load(self, key: str, p: dict, rows: int | None):
        try:
            meta = json.loads(p["meta"].read_text())
        except (OSError, ValueError) as exc:
            raise _Stale(f"unreadable sidecar: {exc}") from None
        if not isinstance(meta, dict):
            raise _Stale("sidecar is not a JSON object")
        kind = meta.get("kind")
        if kind not in ("dense", "ragged"):
            raise _Stale(f"kind {kind!r} is not loaded (the cache never unpickles)")
        if not all(k in meta for k in ("shape", "dtype", "checksum")):
            raise _Stale("sidecar lacks shape, dtype or checksum (an entry of an older bench)")
        path = p["npy"] if kind == "dense" else p["npz"]
        try:
            st = path.stat()
            if self._checked.get(key) != (st.st_mtime_ns, st.st_size):
                if file_checksum(path, str(meta["checksum"]).split(":")[0]) != meta["checksum"]:
                    raise _Stale(f"checksum of {path.name} does not match its sidecar")
            if kind == "dense":
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                with np.load(path, allow_pickle=False) as z:
                    arr = decode_ragged(z)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise _Stale(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from None
        shape, dtype = tuple(arr.shape), str(arr.dtype)
        if list(shape) != list(meta["shape"]) or dtype != meta["dtype"]:
            raise _Stale(f"file holds {shape} {dtype}, sidecar says {tuple(meta['shape'])} {meta['dtype']}")
        if rows is not None and shape[0] != rows:
            raise _Stale(f"{shape[0]} rows for {rows} images")
        self._checked[key] = (st.st_mtime_ns, st.st_size)
        return arr, meta

    # ------------------------------------------------------------------ writing
    def _tmp(self, path: Path) -> Path:
        return path.with_name(f"{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def put(self, key: str, arr, meta: dict) -> None:
        """Store ``arr`` (dense numeric, or an object array of numeric arrays) with its
        sidecar; an object array with non-numeric cells is not cached (warning)."""
        if not self.enabled or self.read_only:
            return
        self._dir()
        p = self.paths(key)
        if isinstance(arr, np.ndarray) and arr.dtype != object:
            kind, path = "dense", p["npy"]
            tmp = self._tmp(path)
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
            shape, dtype = arr.shape, arr.dtype
        else:
            arr = arr if isinstance(arr, np.ndarray) else np.asarray(arr, dtype=object)
            parts = encode_ragged(arr)
            if parts is None:
                log.warning("feature cache: %s has non-numeric cells and is not cached", meta.get("label", key))
                return
            kind, path = "ragged", p["npz"]
            tmp = self._tmp(path)
            with open(tmp, "wb") as fh:
                np.savez(fh, **parts)
            shape, dtype = arr.shape, arr.dtype
        checksum = file_checksum(tmp)
        os.replace(tmp, path)
        self._write_meta(key, {**meta, "kind": kind, "shape": list(shape), "dtype": str(dtype),
                               "checksum": checksum})

    def _write_meta(self, key: str, meta: dict) -> None:
        p = self.paths(key)
        p["pkl"].unlink(missing_ok=True)  # a stale pickle of an older bench is never read: drop it
        tmp = self._tmp(p["meta"])
        tmp.write_text(json.dumps({**meta, "created": time.time()}, default=str))
        os.replace(tmp, p["meta"])  # the sidecar is written last: it marks the entry complete

    def stream_path(self, key: str) -> Path:
        """Temporary path a dense matrix can be streamed into, then :meth:`commit_stream`."""
        self._dir()
        if key not in self._streams:
            self._streams[key] = self._tmp(self.paths(key)["npy"])
        return self._streams[key]

    def commit_stream(self, key: str, meta: dict) -> np.ndarray:
        """Move a streamed ``.npy`` into place, write its sidecar, return it memory-mapped."""
        p = self.paths(key)
        tmp = self._streams.pop(key)
        checksum = file_checksum(tmp)
        os.replace(tmp, p["npy"])
        arr = np.load(p["npy"], mmap_mode="r", allow_pickle=False)
        self._write_meta(key, {**meta, "kind": "dense", "shape": list(arr.shape),
                               "dtype": str(arr.dtype), "checksum": checksum})
        st = p["npy"].stat()
        self._checked[key] = (st.st_mtime_ns, st.st_size)
        return arr

    def discard_stream(self, key: str) -> None:
        tmp = self._streams.pop(key, None)
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ locks, writability
    @contextlib.contextmanager
    def lock(self, key: str):
        """Exclusive per-key lock (POSIX flock); a no-op where unsupported, disabled or
        read-only (:meth:`ensure_usable`)."""
        if not self.enabled or self.read_only:
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

    def writable(self) -> bool:
        """Whether entries (and lock files) can be created under the cache folder."""
        try:
            d = self._dir()
            with tempfile.NamedTemporaryFile(dir=d, prefix=".probe"):
                pass
        except OSError:
            return False
        return True

    def ensure_usable(self, needed: dict) -> None:
        """Before a run's extraction: ``needed`` maps each cache key to ``(label, rows)``.
        A writable cache (or a disabled one) is used as usual; an unwritable one becomes
        read-only when every needed entry is present and valid, else :class:`ResultsError`."""
        if not self.enabled or self.writable():
            return
        missing = [label for key, (label, rows) in needed.items() if self.get(key, rows, label) is None]
        if missing:
            raise ResultsError(
                f"feature cache {self.root} cannot be written and lacks the features "
                f"{', '.join(map(repr, missing))}",
                "point cache.dir (or BENCH_CACHE_DIR) at a writable folder, "
                "or run without the cache: cache.enabled=false")
        self.read_only = True
        log.warning("feature cache %s cannot be written: using its %d complete entries read-only",
                    self.root, len(needed))

    # ------------------------------------------------------------------ maintenance
    def info(self) -> dict:
        d = self.root / "features"
        entries = list(d.glob("*.json")) if d.is_dir() else []
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file()) if d.is_dir() else 0
        return {"dir": str(self.root), "entries": len(entries), "bytes": size}

    def clear(self) -> int:
        d = self.root / "features"
        n = len(list(d.glob("*.json"))) if d.is_dir() else 0
        if d.is_dir():
            shutil.rmtree(d)
        return n

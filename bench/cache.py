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
  offsets, uncompressed, each member's data 64-byte aligned in the file, so the cells
  come back as views of one memory map (no copy; an npz of another layout is read the
  usual way). Both are read with ``allow_pickle=False``: **nothing in the cache is ever
  unpickled** (a planted ``.pkl`` or a ``"kind": "object"`` sidecar is a stale entry,
  recomputed).
* ``K.json``: the sidecar, written last (it marks the entry complete): ``kind``
  (``dense`` / ``ragged``), ``shape``, ``dtype`` and ``checksum`` (CRC-32 of the data
  file: it detects truncated or altered files at ~2 GB/s, 4x faster than blake2b, whose
  ``blake2b:`` sidecars of earlier entries are still verified) and ``file``, the data
  file's identity when it was last verified (inode, size, mtime and ctime, in ns).
  :meth:`FeatureCache.get` checks all of them (and the caller's expected row count); a
  mismatch logs a warning naming the entry and the entry is recomputed and rewritten.
  The checksum is recomputed whenever the data file may have changed since it was last
  verified: its identity differs from ``file``, or the sidecar is not strictly newer than
  the file's ctime (a change within the same clock tick as the verification; git's
  "racily clean" rule). Any write to the file changes its ctime, which ``os.utime``
  cannot set back, so an unchanged identity means unchanged bytes, short of corruption
  below the filesystem; a large memory-mapped matrix is then not read in full on every
  run. ``python -m bench cache verify`` recomputes every checksum.
* ``K.lock``: the per-key lock, so two concurrent runs compute a key once (the second
  waits and loads).

A cache folder that cannot be written: :meth:`FeatureCache.ensure_usable` turns it
into read-only use when every entry a run needs is present and valid (no locks, no
writes), and otherwise raises a :class:`~bench.errors.ResultsError` (exit 2) with a hint.

Location: ``cache.dir`` in the config, else ``$BENCH_CACHE_DIR``, else
``~/.cache/bench``. ``python -m bench cache info|verify|clear`` inspects, checks or
empties it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import struct
import tempfile
import time
import uuid
import zipfile
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


_ALIGN = 64                 # npy data offset within a member is a multiple of 64 (numpy's own)
_PAD_ID = 0xD935            # the zip "extra field" id zipalign uses for alignment padding
_LOCAL_HEADER = 30          # fixed part of a zip local file header


def save_ragged(path: Path, parts: dict) -> None:
    """An uncompressed ``.npz`` of ``parts`` (what :func:`np.load` reads) in which each
    member's array data starts at a multiple of 64 bytes in the file: the local headers
    are padded with an extra field, as Android's zipalign does."""
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in parts.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            fixed = _LOCAL_HEADER + len(info.filename.encode()) + 20  # + the zip64 extra record
            pad = (-(fh.tell() + fixed + 4)) % _ALIGN
            info.extra = struct.pack("<HH", _PAD_ID, pad) + b"\0" * pad
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


def load_npz_mapped(path: Path) -> dict | None:
    """The arrays of an uncompressed ``.npz`` as read-only views of one memory map, or
    ``None`` when a member is compressed or of an npy version not read here. A member
    whose data is not aligned for its dtype (an npz written by :func:`np.savez`) is
    copied, so no caller meets an unaligned array."""
    size = path.stat().st_size
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                return None
            h = info.header_offset
            if bytes(mm[h:h + 4]) != b"PK\x03\x04":
                raise ValueError(f"member {info.filename}: no local header at {h}")
            n_name, n_extra = struct.unpack("<HH", bytes(mm[h + 26:h + 30]))
            start = h + _LOCAL_HEADER + n_name + n_extra
            head = io.BytesIO(bytes(mm[start:start + min(info.file_size, 1 << 16)]))
            version = np.lib.format.read_magic(head)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
            else:
                return None
            if dtype.hasobject:
                raise ValueError(f"member {info.filename} holds objects")
            offset = start + head.tell()
            count = int(np.prod(shape)) if shape else 1
            if offset + count * dtype.itemsize > min(size, start + info.file_size):
                raise ValueError(f"member {info.filename} is truncated")
            arr = np.frombuffer(mm, dtype=dtype, count=count, offset=offset)
            arr = arr.reshape(shape, order="F" if fortran else "C")
            out[info.filename[:-4]] = arr if arr.flags.aligned else arr.copy()
    return out


def _identity(st: os.stat_result) -> list:
    """What changes whenever a file's bytes may have changed: inode, size, mtime, ctime."""
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class _Stale(Exception):
    """An entry that fails a check: the reason, for the warning."""


class FeatureCache:
    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root).expanduser() if root else default_dir()
        self.enabled = enabled
        self.read_only = False   # set by ensure_usable: no locks, no writes
        self._checked: dict = {}  # key -> identity of the data file verified in this process
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

    def _load(self, key: str, p: dict, rows: int | None, meta: dict | None = None):
        if meta is None:
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
            verified = False
            if not self._trusted(key, p, meta, st):
                if file_checksum(path, str(meta["checksum"]).split(":")[0]) != meta["checksum"]:
                    raise _Stale(f"checksum of {path.name} does not match its sidecar")
                verified = True
            if kind == "dense":
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                parts = load_npz_mapped(path)
                if parts is None:  # compressed, or another npy version: the usual reader
                    with np.load(path, allow_pickle=False) as z:
                        arr = decode_ragged(z)
                else:
                    arr = decode_ragged(parts)
        except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile, struct.error) as exc:
            raise _Stale(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from None
        shape, dtype = tuple(arr.shape), str(arr.dtype)
        if list(shape) != list(meta["shape"]) or dtype != meta["dtype"]:
            raise _Stale(f"file holds {shape} {dtype}, sidecar says {tuple(meta['shape'])} {meta['dtype']}")
        if rows is not None and shape[0] != rows:
            raise _Stale(f"{shape[0]} rows for {rows} images")
        self._checked[key] = _identity(st)
        if verified:
            self._record_identity(key, p, meta, st)
        return arr, meta

    def _trusted(self, key: str, p: dict, meta: dict, st: os.stat_result) -> bool:
        """Whether the data file is the one verified before, so its checksum need not be
        recomputed (see the module docstring): verified in this process with this
        identity, or the sidecar records this identity and is strictly newer than the
        file's last change."""
        ident = _identity(st)
        if self._checked.get(key) == ident:
            return True
        if meta.get("file") != ident:
            return False
        try:
            return p["meta"].stat().st_mtime_ns > st.st_ctime_ns
        except OSError:
            return False

    def _record_identity(self, key: str, p: dict, meta: dict, st: os.stat_result) -> None:
        """After a full check, store the file's identity in its sidecar (rewritten
        atomically; not in a read-only cache), so the next run need not hash it again."""
        if self.read_only or not self.enabled:
            return
        try:
            if json.loads(p["meta"].read_text()) != meta:  # rewritten meanwhile: leave it
                return
            tmp = self._tmp(p["meta"])
            tmp.write_text(json.dumps({**meta, "file": _identity(st)}, default=str))
            os.replace(tmp, p["meta"])
        except (OSError, ValueError) as exc:  # the entry stays valid: it is checked in full again
            log.debug("feature cache: could not record the identity of %s: %s", key, exc)

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
                log.warning("feature cache: %s has non-numeric cells and is not cached",
                            meta.get("label", key))
                return
            kind, path = "ragged", p["npz"]
            tmp = self._tmp(path)
            save_ragged(tmp, parts)
            shape, dtype = arr.shape, arr.dtype
        os.replace(tmp, path)
        checksum = file_checksum(path)  # after the rename, so the sidecar is newer than its ctime
        self._write_meta(key, {**meta, "kind": kind, "shape": list(shape), "dtype": str(dtype),
                               "checksum": checksum, "file": _identity(path.stat())})

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
        os.replace(tmp, p["npy"])
        checksum = file_checksum(p["npy"])
        arr = np.load(p["npy"], mmap_mode="r", allow_pickle=False)
        st = p["npy"].stat()
        self._write_meta(key, {**meta, "kind": "dense", "shape": list(arr.shape),
                               "dtype": str(arr.dtype), "checksum": checksum, "file": _identity(st)})
        self._checked[key] = _identity(st)
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

    def verify(self) -> tuple[int, list[str]]:
        """Recompute the checksum of every entry, whatever its recorded identity:
        ``(entries checked, keys of the bad ones)``. A bad entry is removed (its sidecar
        first), so the next run recomputes it."""
        d = self.root / "features"
        bad = []
        metas = sorted(d.glob("*.json")) if d.is_dir() else []
        for meta_path in metas:
            key = meta_path.stem
            self._checked.pop(key, None)
            try:
                meta = json.loads(meta_path.read_text())
                meta.pop("file", None)  # forget the identity: hash the bytes
                self._load(key, self.paths(key), None, meta=meta)
            except (_Stale, OSError, ValueError, AttributeError) as why:
                log.warning("feature cache entry %s is bad (%s): removed", key, why)
                bad.append(key)
                if not self.read_only:
                    for path in self.paths(key).values():
                        path.unlink(missing_ok=True)
        return len(metas), bad

    def clear(self) -> int:
        d = self.root / "features"
        n = len(list(d.glob("*.json"))) if d.is_dir() else 0
        if d.is_dir():
            shutil.rmtree(d)
        return n

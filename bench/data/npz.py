"""``npz``: images and labels as arrays in one NumPy ``.npz`` file (MedMNIST's layout).

Layout (the defaults; MedMNIST's ``pathmnist.npz`` etc.)::

    train_images (n, h, w) or (n, h, w, c)     train_labels (n,) or (n, 1)
    val_images   ...                           val_labels
    test_images  ...                           test_labels

``images_key`` / ``labels_key`` are templates filled with each name in ``splits``
(``"{split}_images"``, ``"{split}_labels"``, splits ``train, val, test``); a split
whose arrays are absent is skipped, and each image's ``dataset.split`` is the name
its keys were filled with, which ``protocol: {kind: predefined}`` uses. A template
without ``{split}`` names one pair of arrays (e.g. ``images_key: x, labels_key: y``)
and the dataset has no split of its own.

* Images: any numeric dtype (``uint8``, ``uint16``, ``float`` in [0, 1], ``bool``),
  delivered as stored; ``(n, h, w, 1)`` is gray, ``(n, h, w, 3)`` RGB, ``(n, h, w, 4)``
  RGB with the alpha channel dropped. If one split is gray and another colour, every
  image is delivered as RGB.
* Labels: integers, integral floats or strings; ``(n, k > 1)`` (multi-label, e.g.
  ChestMNIST) is rejected. Class names come from ``class_names`` (a list, or a
  mapping ``{label: name}`` like MedMNIST's ``INFO[...]["label"]``), else from a
  string array ``class_names_key`` in the file, else from the label values.

Memory. ``np.load(f.npz, mmap_mode="r")`` does *not* memory-map the members of an
``.npz`` (a zip): it would decompress each array into RAM. Here nothing is read
whole:

* a member stored uncompressed (``np.savez``) is read in place at its offset in the
  zip, nothing copied;
* a compressed member (``np.savez_compressed``, what MedMNIST ships) is streamed
  once, 1 MiB at a time, to a raw ``.npy`` under ``<cache>/npz/`` (``cache.dir``,
  else ``$BENCH_CACHE_DIR``, else ``~/.cache/bench``), named after the file's path,
  size, modification time and the member's CRC-32, and reused by later runs
  (``bench cache clear`` leaves these; delete ``<cache>/npz`` to reclaim the space).

Images are then read one at a time with ``os.pread`` (streamed; the page cache
does the buffering, so the process's resident memory does not grow with the file).
``keys[i]`` is :func:`bench.data.base.array_key` of image ``i`` as stored, salted
with the loader version and the delivered layout, computed block by block. A source
file whose size or modification time changed after the dataset was built raises a
``DataError`` at the next read, so the feature cache is never poisoned.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import SPLIT_NAMES, Dataset
from .folder import check_max_per_class, subsample_per_class

log = logging.getLogger(__name__)

LOADER_VERSION = "1"  # bump when the delivered pixels of the same bytes change
HASH_BLOCK_BYTES = 8 << 20


# --------------------------------------------------------------------------- arrays on disk
@dataclass(frozen=True)
class ArrayOnDisk:
    """A C- or Fortran-ordered array at ``offset`` in ``path`` (an ``.npy`` or a zip member)."""

    path: str
    offset: int
    dtype: str
    shape: tuple
    fortran: bool
    size: int       # st_size of ``path`` when opened
    mtime_ns: int   # st_mtime_ns of ``path`` when opened

    @property
    def item_shape(self) -> tuple:
        return tuple(self.shape[1:])

    @property
    def item_bytes(self) -> int:
        return int(np.prod(self.item_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def memmap(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset,
                         shape=self.shape, order="F" if self.fortran else "C")


def _read_npy_header(fh) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    return np.lib.format._read_array_header(fh, version)  # (3, 0): utf-8 field names


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def _member_in_place(path: Path, info: zipfile.ZipInfo) -> ArrayOnDisk:
    """An uncompressed zip member: the array starts after its local header and npy header."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise DataError(f"{path}: member {info.filename!r} has a damaged zip header",
                            "the file is truncated or not a valid .npz; write it again with np.savez")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + n_name + n_extra)
        shape, fortran, dtype = _read_npy_header(fh)
        offset = fh.tell()
    size, mtime = _stat(path)
    return ArrayOnDisk(str(path), int(offset), dtype.str, tuple(int(s) for s in shape), bool(fortran),
                       size, mtime)


def _member_extracted(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, cache_dir: Path) -> ArrayOnDisk:
    """A compressed member, streamed once into ``cache_dir`` as a raw ``.npy`` (then reused)."""
    size, mtime = _stat(path)
    ident = hashlib.blake2b(digest_size=12)
    ident.update(f"{LOADER_VERSION}|{path.resolve()}|{size}|{mtime}|{info.filename}|{info.CRC}|"
                 f"{info.file_size}".encode())
    out = cache_dir / f"{Path(info.filename).stem}-{ident.hexdigest()}.npy"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            with zf.open(info) as src:
                shape, fortran, dtype = _read_npy_header(src)
                if dtype.hasobject:
                    raise DataError(f"{path}: array {info.filename!r} holds Python objects",
                                    "store images and labels as numeric (or string) arrays")
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape,
                                               fortran_order=fortran)
                start, nbytes = mm.offset, mm.nbytes
                del mm
                with open(tmp, "r+b") as dst:
                    dst.seek(start)
                    shutil.copyfileobj(src, dst, 1 << 20)
                    written = dst.tell() - start
            if written != nbytes:
                raise DataError(f"{path}: member {info.filename!r} holds {written} bytes of data, "
                                f"its header promises {nbytes}", "the file is damaged; write it again")
            os.replace(tmp, out)
            log.log(logging.INFO if nbytes > (8 << 20) else logging.DEBUG,
                    "npz: extracted %s from %s to %s (%.1f MB, once)", info.filename, path, out, nbytes / 1e6)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DataError(f"{path}: cannot extract {info.filename!r}: {exc}",
                            "the file is damaged, or the cache folder is not writable "
                            "(set cache.dir to a writable folder with free space)") from exc
        finally:
            if tmp.exists():
                tmp.unlink()
    with open(out, "rb") as fh:
        shape, fortran, dtype = _read_npy_header(fh)
        offset = fh.tell()
    osize, omtime = _stat(out)
    return ArrayOnDisk(str(out), int(offset), dtype.str, tuple(int(s) for s in shape), bool(fortran),
                       osize, omtime)


class NpzFile:
    """The arrays of one ``.npz`` as :class:`ArrayOnDisk`, opened lazily by name."""

    def __init__(self, path: Path, cache_dir: Path):
        self.path = path
        self.cache_dir = cache_dir
        try:
            self._zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path} is not a readable .npz file ({exc})",
                            "write it with np.savez or np.savez_compressed") from exc
        self.infos = {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i
                      for i in self._zf.infolist() if not i.is_dir()}

    def close(self) -> None:
        self._zf.close()

    def names(self) -> list[str]:
        return sorted(self.infos)

    def array(self, name: str) -> ArrayOnDisk:
        info = self.infos[name]
        if info.flag_bits & 0x1:
            raise DataError(f"{self.path}: member {info.filename!r} is encrypted", "store it unencrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            arr = _member_in_place(self.path, info)
        else:
            arr = _member_extracted(self.path, self._zf, info, self.cache_dir)
        if np.dtype(arr.dtype).hasobject:
            raise DataError(f"{self.path}: array {name!r} holds Python objects",
                            "store images and labels as numeric (or string) arrays")
        return arr

    def small(self, name: str) -> np.ndarray:
        """A small array (labels, class names) read into memory."""
        arr = self.array(name)
        if int(np.prod(arr.shape, dtype=np.int64)) == 0:
            return np.zeros(arr.shape, dtype=np.dtype(arr.dtype))
        return np.array(arr.memmap())


# --------------------------------------------------------------------------- the loader
@dataclass(frozen=True, eq=False)
class NpzLoader:
    """Picklable ``loader(i)``: one ``os.pread`` per image, no array held in memory.

    ``starts[p]`` is the first global index of part ``p``; ``rows`` (None = all rows in
    order) maps a global index to the row inside its part, after subsampling.
    """

    parts: tuple            # ArrayOnDisk per split
    starts: np.ndarray      # int64, len(parts) + 1
    rows: np.ndarray | None  # int64 per image, or None
    target: str             # "gray" | "rgb"
    _fds: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def where(self, i: int) -> tuple[int, int]:
        p = int(np.searchsorted(self.starts, i, side="right") - 1)
        row = int(self.rows[i]) if self.rows is not None else i - int(self.starts[p])
        return p, row

    def _fd(self, p: int) -> int:
        """A read-only descriptor per part and process (checked against the file's stat once)."""
        if self._fds.get("pid") != os.getpid():  # a forked worker opens its own
            self._fds.clear()
            self._fds["pid"] = os.getpid()
        fd = self._fds.get(p)
        if fd is None:
            a = self.parts[p]
            try:
                now = _stat(Path(a.path))
            except OSError as exc:
                raise DataError(f"cannot open {a.path}: {exc}",
                                "the file disappeared after the dataset was built") from exc
            if now != (a.size, a.mtime_ns):
                raise DataError(f"{a.path} changed on disk after the dataset was built",
                                "do not rewrite the .npz during a run; start the run again")
            fd = self._fds[p] = os.open(a.path, os.O_RDONLY)
        return fd

    def raw(self, i: int) -> np.ndarray:
        """Image ``i`` exactly as stored (before the gray/RGB conversion)."""
        p, row = self.where(i)
        a = self.parts[p]
        if a.fortran:  # rare: rows are not contiguous on disk
            return np.array(a.memmap()[row])
        nb = a.item_bytes
        data = os.pread(self._fd(p), nb, a.offset + row * nb)
        if len(data) != nb:
            raise DataError(f"{a.path}: image {row} is cut short ({len(data)} of {nb} bytes)",
                            "the file is truncated; write it again")
        return np.frombuffer(data, dtype=np.dtype(a.dtype)).reshape(a.item_shape)

    def __call__(self, i: int) -> np.ndarray:
        return deliver(self.raw(i), self.target)


def deliver(img: np.ndarray, target: str) -> np.ndarray:
    """Stored image -> delivered layout: gray ``(h, w)`` or RGB ``(h, w, 3)``, a writable copy."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if target == "rgb" and img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.array(img, copy=True)


# --------------------------------------------------------------------------- keys
def image_keys(arr: ArrayOnDisk, rows: np.ndarray, salt: str) -> list[str]:
    """``array_key(image, salt)`` of the given rows, reading ``HASH_BLOCK_BYTES`` at a time.

    Same bytes as :func:`bench.data.base.array_key` (salt, shape and dtype, then the
    pixels), so a key equals the reference computed on the image in memory.
    """
    item_shape, dtype = arr.item_shape, np.dtype(arr.dtype)
    head = hashlib.blake2b(digest_size=16)
    head.update(salt.encode())
    head.update(str(item_shape).encode() + str(dtype).encode())
    nb = arr.item_bytes
    keys: list[str] = []
    rows = np.asarray(rows, dtype=np.int64)
    if arr.fortran:
        mm = arr.memmap()
        for r in rows:
            h = head.copy()
            h.update(np.ascontiguousarray(mm[r]).tobytes())
            keys.append(h.hexdigest())
        return keys
    per_block = max(1, HASH_BLOCK_BYTES // max(nb, 1))
    buf = bytearray(per_block * nb)
    view = memoryview(buf)
    with open(arr.path, "rb", buffering=0) as fh:
        i = 0
        while i < len(rows):
            # read the contiguous run of rows starting at rows[i] (all rows when not subsampled)
            first = int(rows[i])
            j = i + 1
            while j < len(rows) and j - i < per_block and rows[j] == first + (j - i):
                j += 1
            count = j - i
            fh.seek(arr.offset + first * nb)
            got = fh.readinto(view[:count * nb])
            if got != count * nb:
                raise DataError(f"{arr.path}: the image data is cut short", "the file is truncated")
            for k in range(count):
                h = head.copy()
                h.update(view[k * nb:(k + 1) * nb])
                keys.append(h.hexdigest())
            i = j
    return keys


# --------------------------------------------------------------------------- labels
def _labels_1d(raw: np.ndarray, path: Path, key: str) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DataError(f"{path}: labels {key!r} have shape {raw.shape}; expected (n,) or (n, 1)",
                        "bench classifies one label per image; multi-label arrays (n, k) are not "
                        "supported: keep one column")
    return raw


def _class_names(class_names, file_names) -> list[str] | None:
    if class_names is None:
        return None if file_names is None else [str(c) for c in file_names]
    if isinstance(class_names, Mapping):
        try:
            by_int = {int(k): str(v) for k, v in class_names.items()}
        except (TypeError, ValueError):
            raise ConfigError("dataset.class_names: a mapping needs integer label keys, "
                              f"got {list(class_names)[:5]}", "e.g. {0: normal, 1: tumour}") from None
        if sorted(by_int) != list(range(len(by_int))):
            raise ConfigError(f"dataset.class_names: the keys must be 0..{len(by_int) - 1}, "
                              f"got {sorted(by_int)}", "name every label from 0 upwards")
        return [by_int[k] for k in range(len(by_int))]
    if isinstance(class_names, (list, tuple)) and all(isinstance(c, (str, int)) for c in class_names):
        if len(set(map(str, class_names))) != len(class_names):
            raise ConfigError("dataset.class_names has duplicate names", "give each class a distinct name")
        return [str(c) for c in class_names]
    raise ConfigError(f"dataset.class_names: expected a list of names or a mapping, got {class_names!r}",
                      "e.g. class_names: [normal, tumour]")


def encode_labels(parts: list[tuple[str, np.ndarray]], path: Path, names: list[str] | None):
    """Per-split raw labels -> (int labels per split, class names)."""
    allv = np.concatenate([v for _, v in parts]) if parts else np.zeros(0)
    kind = allv.dtype.kind
    if kind in "fc":
        bad = ~np.isfinite(allv) | (allv != np.round(allv))
        if bad.any():
            key, idx = _locate(parts, int(np.flatnonzero(bad)[0]))
            raise DataError(f"{path}: label {key}[{idx}] = {allv[bad][0].item()!r} is not an integer",
                            "labels must be class indices (integers) or class names (strings)")
        allv = allv.astype(np.int64)
        parts = [(k, v.astype(np.int64)) for k, v in parts]
        kind = "i"
    if kind in "iub":
        vals = np.unique(allv)
        if names is not None:
            bad = (allv < 0) | (allv >= len(names))
            if bad.any():
                key, idx = _locate(parts, int(np.flatnonzero(bad)[0]))
                raise DataError(f"{path}: label {key}[{idx}] = {int(allv[bad][0])} has no class name "
                                f"({len(names)} names given)",
                                "give one name per label 0..k-1 in dataset.class_names")
            return [v.astype(np.int64) for _, v in parts], names
        # label values in sorted order become 0..k-1 (the identity for MedMNIST's 0..k-1)
        pos = [np.searchsorted(vals, v).astype(np.int64) for _, v in parts]
        return pos, [str(v.item()) for v in vals]
    if kind in "US":
        dec = [(k, v.astype(str)) for k, v in parts]
        vals = sorted(set(np.concatenate([v for _, v in dec]).tolist()))
        names = names or vals
        lookup = {n: i for i, n in enumerate(names)}
        out = []
        for k, v in dec:
            missing = [x for x in dict.fromkeys(v.tolist()) if x not in lookup]
            if missing:
                raise DataError(f"{path}: labels in {k!r} name classes missing from dataset.class_names: "
                                f"{', '.join(missing[:5])}", "add them to class_names or drop class_names")
            out.append(np.array([lookup[x] for x in v], dtype=np.int64))
        return out, list(names)
    raise DataError(f"{path}: labels have dtype {allv.dtype}", "store labels as integers or strings")


def _locate(parts, flat: int) -> tuple[str, int]:
    for key, v in parts:
        if flat < len(v):
            return key, flat
        flat -= len(v)
    return parts[-1][0], flat  # pragma: no cover


# --------------------------------------------------------------------------- the factory
def _check_template(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"dataset.{name} must be a key name or a template like '{{split}}_images', "
                          f"got {value!r}", "e.g. images_key: '{split}_images'")
    return value


def _default_cache() -> Path:
    from ..cache import default_dir
    return default_dir() / "npz"


def _read_arrays(file: Path, cache: Path, pairs, class_names_key: str):
    """Locate and check the (split, images key, labels key) arrays; read labels and class names.

    Returns ``[(split, images_key, ArrayOnDisk)]``, ``[(labels_key, labels)]`` (empty splits
    dropped) and the file's class-name array or None."""
    npz = NpzFile(file, cache)
    try:
        found = [(s, ik, lk) for s, ik, lk in pairs if ik in npz.infos or lk in npz.infos]
        if not found:
            raise DataError(f"{file}: no arrays named {', '.join(ik for _, ik, _ in pairs)} "
                            f"(the file has: {', '.join(npz.names()) or 'nothing'})",
                            "set dataset.images_key / dataset.labels_key to the array names, e.g. "
                            "images_key: x_{split} or images_key: images (no split)")
        for s, ik, lk in found:
            for key in (ik, lk):
                if key not in npz.infos:
                    raise DataError(f"{file}: {'labels' if key == lk else 'images'} array {key!r} is "
                                    f"missing for split {s!r}" if s else f"{file}: array {key!r} is missing",
                                    f"the file has: {', '.join(npz.names())}")
        arrays, raw_labels = [], []
        for s, ik, lk in found:
            a = npz.array(ik)
            if len(a.shape) not in (3, 4) or (len(a.shape) == 4 and a.shape[3] not in (1, 3, 4)):
                raise DataError(f"{file}: images {ik!r} have shape {a.shape}",
                                "expected (n, h, w) gray or (n, h, w, c) with c = 1, 3 or 4")
            if np.dtype(a.dtype).kind not in "biuf":
                raise DataError(f"{file}: images {ik!r} have dtype {a.dtype}",
                                "store pixels as integers, floats in [0, 1] or booleans")
            lab = _labels_1d(npz.small(lk), file, lk)
            if len(lab) != a.shape[0]:
                raise DataError(f"{file}: {ik!r} holds {a.shape[0]} images but {lk!r} {len(lab)} labels",
                                "every image needs exactly one label")
            if a.shape[0] == 0:
                log.warning("%s: split %s is empty; skipped", file, s)
                continue
            arrays.append((s, ik, a))
            raw_labels.append((lk, lab))
        if not arrays:
            raise DataError(f"{file}: every image array is empty", "the file holds no images")
        file_names = npz.small(class_names_key) if class_names_key in npz.infos else None
    finally:
        npz.close()
    return arrays, raw_labels, file_names


@DATASETS.register("npz", "Arrays in an .npz (MedMNIST layout train_/val_/test_images|labels), "
                          "official split kept, memory-mapped",
                   example="dataset.kind=npz dataset.path=pathmnist.npz protocol.kind=predefined")
def npz_dataset(path, images_key: str = "{split}_images", labels_key: str = "{split}_labels",
                splits: Sequence[str] = SPLIT_NAMES, class_names=None, class_names_key: str = "class_names",
                max_per_class: int | None = None, seed: int = 0, name: str | None = None,
                cache_dir: str | None = None) -> Dataset:
    """Load an ``.npz`` of image and label arrays (see the module docstring).

    Args:
        path: the ``.npz`` file.
        images_key, labels_key: array names, or templates with ``{split}``.
        splits: the names filled into the templates, in dataset order; each must be
            ``train``, ``val`` or ``test`` for ``protocol: predefined``.
        class_names: list of names (label i = name i) or mapping ``{label: name}``.
        class_names_key: a string array in the file used when ``class_names`` is unset.
        max_per_class: keep at most this many images per class *in each split*
            (stratified random subsample with ``seed``).
        name: dataset name (default: the file's stem).
        cache_dir: where compressed members are extracted (default ``<cache>/npz``).
    """
    images_key = _check_template("images_key", images_key)
    labels_key = _check_template("labels_key", labels_key)
    max_per_class = check_max_per_class(max_per_class)
    if isinstance(splits, str):
        splits = [splits]
    if not isinstance(splits, (list, tuple)) or not splits \
            or not all(isinstance(s, str) and s for s in splits):
        raise ConfigError(f"dataset.splits must be a list of split names, got {splits!r}",
                          "e.g. splits: [train, val, test]")
    file = Path(os.path.expanduser(str(path)))
    if not file.is_file():
        raise DataError(f"dataset.path '{file}' does not exist" if not file.exists()
                        else f"dataset.path '{file}' is not a file",
                        "point dataset.path to an .npz file (np.savez / np.savez_compressed)")
    file = file.resolve()
    templated = "{split}" in images_key
    if templated != ("{split}" in labels_key):
        raise ConfigError("dataset.images_key and dataset.labels_key must both use '{split}' or neither",
                          f"got images_key={images_key!r}, labels_key={labels_key!r}")
    cache = Path(os.path.expanduser(cache_dir)) if cache_dir else _default_cache()
    pairs = ([(s, images_key.format(split=s), labels_key.format(split=s)) for s in splits]
             if templated else [(None, images_key, labels_key)])
    arrays, raw_labels, file_names = _read_arrays(file, cache, pairs, class_names_key)
    names = _class_names(class_names, file_names)
    labels_per, names = encode_labels(raw_labels, file, names)

    colour = any(len(a.shape) == 4 and a.shape[3] >= 3 for _, _, a in arrays)
    target = "rgb" if colour else "gray"
    salt = f"bench.npz/{LOADER_VERSION}/{target}"
    parts, starts, rows_all, keys, labels, split_names, ids = [], [0], [], [], [], [], []
    subsampled = max_per_class is not None
    for (s, ik, a), lab in zip(arrays, labels_per):
        keep = subsample_per_class(lab, max_per_class, seed)
        parts.append(a)
        starts.append(starts[-1] + len(keep))
        rows_all.append(keep)
        keys += image_keys(a, keep, salt)
        labels.append(lab[keep])
        split_names += [s] * len(keep)
        ids += [f"{ik}/{int(r)}" for r in keep]
    loader = NpzLoader(tuple(parts), np.asarray(starts, dtype=np.int64),
                       np.concatenate(rows_all).astype(np.int64) if subsampled else None, target)
    labels = np.concatenate(labels)
    in_place = all(not p.path.startswith(str(cache)) for p in parts)
    meta = {"kind": "npz", "path": str(file), "images_key": images_key, "labels_key": labels_key,
            "arrays": [ik for _, ik, _ in arrays],
            "split_counts": [[s, int(n)] for s, n in zip([s for s, _, _ in arrays], np.diff(starts))]
            if templated else None,
            "image_shape": list(arrays[0][2].item_shape), "dtype": str(np.dtype(arrays[0][2].dtype)),
            "storage": ("in place (uncompressed members)" if in_place
                        else "extracted to the cache (compressed)"),
            "max_per_class": max_per_class, "seed": seed,
            "class_counts": np.bincount(labels, minlength=len(names)).tolist()}
    log.debug("npz dataset %s: %d images, %d classes (%s)", file, len(labels), len(names), meta["storage"])
    return Dataset(name=name or file.stem, loader=loader, labels=labels, class_names=names, keys=keys,
                   groups=None, ids=ids, modality=target, meta=meta,
                   split=np.asarray(split_names, dtype=object) if templated else None)

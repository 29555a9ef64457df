"""Read the tensors of a PyTorch checkpoint with NumPy, never executing its pickle.

A ``.pth`` state dict is a pickle, and a pickle can call any Python function it names
(``os.system`` included) while it is read. :func:`load_state_dict` reads one with a
:class:`pickle.Unpickler` whose ``find_class`` admits only the handful of globals a
tensor checkpoint needs, and refuses every other one with a
:class:`~bench.errors.WeightsError` naming the file and the refused global, before
anything is called:

* ``collections.OrderedDict`` (the state dict itself, and a tensor's empty hooks),
* ``torch._utils._rebuild_tensor_v2`` (a tensor: storage, offset, shape, strides),
* the plain storage types ``torch.FloatStorage``, ``DoubleStorage``, ``HalfStorage``,
  ``LongStorage``, ``IntStorage``, ``ShortStorage``, ``CharStorage``, ``ByteStorage``
  and ``BoolStorage`` (mapped to NumPy dtypes).

Nothing else: no ``torch.nn.Parameter`` rebuild, no ``numpy`` reconstructor, no
``__builtin__`` helpers. PyTorch is never imported (it need not be installed).

Two container formats are read, the same unpickler for both:

* the legacy serialization (torch < 1.6, and ``_use_new_zipfile_serialization=False``):
  a pickle of the magic number ``0x1950a86a20f9469cfc6c``, a pickle of the protocol
  version (1001), a pickle of a system-info dict, then the main pickle (storages come
  as persistent ids ``('storage', type, key, location, size[, view])``), then a pickle
  of the list of storage keys, then for each key in that order an int64 element count
  followed by the raw little-endian data;
* the zip format (torch >= 1.6): ``<name>/data.pkl`` with the same persistent ids and
  ``<name>/data/<key>`` holding each storage's raw bytes (byte order from
  ``<name>/byteorder``, little-endian when absent).

Tensors are rebuilt as NumPy arrays honouring storage offset and strides (copied, so
views of one storage stay independent). ``tests/test_torch_checkpoint.py`` checks the
reader against files written by PyTorch itself (``scripts/make_lite_reference.py``)
and checks that a crafted pickle calling ``os.system`` is refused without running.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
"""The storage types admitted, with their element type (little-endian on disk)."""


class _StorageType:
    """Stands for ``torch.<Name>Storage`` inside the pickle: only its dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"torch.{self.name}"


class _Storage:
    """A storage announced by the pickle; ``data`` (a 1-D array) is filled in later."""

    def __init__(self, key: str, stype: _StorageType, size: int):
        self.key, self.stype, self.size = key, stype, int(size)
        self.data: np.ndarray | None = None


class _Tensor:
    """``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` recorded, made an array later
    (in the legacy format the storages' bytes come after the pickle)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def to_numpy(self, path) -> np.ndarray:
        st = self.storage
        if not isinstance(st, _Storage) or st.data is None:
            raise WeightsError(f"checkpoint {path}: a tensor refers to storage "
                               f"{getattr(st, 'key', st)!r}, which the file does not contain",
                               "the file is damaged or truncated; reinstall the package that ships it")
        n = st.data.size
        if self.size and min(self.size) == 0:
            return np.zeros(self.size, dtype=st.data.dtype)
        last = self.offset + sum((d - 1) * s for d, s in zip(self.size, self.stride))
        if self.offset < 0 or any(s < 0 for s in self.stride) or last >= n:
            raise WeightsError(f"checkpoint {path}: a tensor of shape {self.size} (offset "
                               f"{self.offset}, strides {self.stride}) lies outside its storage of "
                               f"{n} elements", "the file is damaged; reinstall the package that ships it")
        item = st.data.itemsize
        view = np.lib.stride_tricks.as_strided(st.data[self.offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride),
                                               writeable=False)
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for tensor checkpoints: admits only the globals listed in the module
    docstring and ``('storage', ...)`` persistent ids; anything else is a WeightsError."""

    def __init__(self, file, path, storages: dict | None = None, allow_persistent: bool = True):
        super().__init__(file)
        self.path = path
        self.storages = {} if storages is None else storages
        self.allow_persistent = allow_persistent

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"checkpoint {self.path} refers to the Python global {module}.{name}, which a plain "
            "tensor checkpoint never needs; refused (it was not imported or called)",
            "bench reads only tensor state dicts (OrderedDict of tensors of plain storage "
            "types); a file that names other globals may run code when loaded. Use a file from a "
            "trusted source saved with torch.save(model.state_dict())")

    def persistent_load(self, pid):
        if not self.allow_persistent or not isinstance(pid, tuple) or len(pid) not in (5, 6) \
                or pid[0] != "storage" or not isinstance(pid[1], _StorageType):
            raise WeightsError(f"checkpoint {self.path}: unexpected persistent id {pid!r:.120}",
                               "only ('storage', <torch storage type>, key, location, size) ids "
                               "are read")
        _, stype, key, _location, size = pid[:5]
        key = str(key)
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, stype, size)
        return st


def _load_pickle(f, path, storages=None, allow_persistent=False):
    try:
        return RestrictedUnpickler(f, path, storages, allow_persistent).load()
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error) as exc:
        raise WeightsError(f"checkpoint {path} could not be read: {type(exc).__name__}: {exc}",
                           "the file is damaged or not a PyTorch checkpoint") from None


def _materialize(obj, path):
    """The pickled structure with every tensor turned into a NumPy array."""
    if isinstance(obj, _Tensor):
        return obj.to_numpy(path)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _materialize(v, path)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v, path) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, path) for v in obj)
    return obj


def _read_legacy(f, path) -> object:
    magic = _load_pickle(f, path)
    if magic != LEGACY_MAGIC:
        raise WeightsError(f"{path} is not a PyTorch checkpoint (no legacy magic number, no zip archive)",
                           "give a .pth/.pt file written by torch.save")
    protocol = _load_pickle(f, path)
    if protocol != LEGACY_PROTOCOL:
        raise WeightsError(f"checkpoint {path}: unsupported legacy protocol version {protocol!r}",
                           f"only version {LEGACY_PROTOCOL} is read")
    sys_info = _load_pickle(f, path)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise WeightsError(f"checkpoint {path} was written on a big-endian machine",
                           "re-save it on a little-endian machine")
    storages: dict = {}
    obj = _load_pickle(f, path, storages, allow_persistent=True)
    keys = _load_pickle(f, path)
    if not isinstance(keys, list):
        raise WeightsError(f"checkpoint {path}: the storage key list is missing",
                           "the file is damaged or truncated")
    for key in keys:
        st = storages.get(str(key))
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"checkpoint {path} ends before storage {key!r}", "the file is truncated")
        (count,) = struct.unpack("<q", head)
        if st is None:
            raise WeightsError(f"checkpoint {path}: storage {key!r} is not used by any tensor",
                               "the file is damaged")
        nbytes = count * st.stype.dtype.itemsize
        raw = f.read(nbytes)
        if count < 0 or len(raw) < nbytes:
            raise WeightsError(f"checkpoint {path} ends inside storage {key!r}", "the file is truncated")
        st.data = np.frombuffer(raw, dtype=st.stype.dtype.newbyteorder("<"))
    return _materialize(obj, path)


def _read_zip(zf: zipfile.ZipFile, path) -> object:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise WeightsError(f"checkpoint {path}: a zip file without exactly one <name>/data.pkl",
                           "give a file written by torch.save")
    prefix = pkl[0][: -len("data.pkl")]
    order = "<"
    if prefix + "byteorder" in names:
        order = "<" if zf.read(prefix + "byteorder").strip() == b"little" else ">"
    storages: dict = {}
    obj = _load_pickle(io.BytesIO(zf.read(pkl[0])), path, storages, allow_persistent=True)
    for key, st in storages.items():
        member = f"{prefix}data/{key}"
        if member not in names:
            raise WeightsError(f"checkpoint {path}: storage {member} is missing", "the file is damaged")
        raw = zf.read(member)
        dtype = st.stype.dtype.newbyteorder(order)
        if len(raw) % dtype.itemsize:
            raise WeightsError(f"checkpoint {path}: storage {member} has a partial element",
                               "the file is damaged")
        st.data = np.frombuffer(raw, dtype=dtype).astype(st.stype.dtype.newbyteorder("="), copy=False)
    return _materialize(obj, path)


def load(path) -> object:
    """Whatever the checkpoint holds (usually an OrderedDict), tensors as NumPy arrays.

    Raises :class:`~bench.errors.WeightsError` for a refused global, a damaged file or
    a file that is not a PyTorch checkpoint.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return _read_zip(zf, path)
        with open(path, "rb") as f:
            return _read_legacy(f, path)
    except OSError as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc.strerror or exc}",
                           "check that the file exists and is readable") from None


def load_state_dict(path) -> "OrderedDict[str, np.ndarray]":
    """The ``{name: array}`` state dict of a checkpoint (see :func:`load`)."""
    obj = load(path)
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise WeightsError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors",
                           "save it with torch.save(model.state_dict(), path)")
    return OrderedDict(obj)

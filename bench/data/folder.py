"""``folder``: one subfolder per class, images (or ``.npy`` depth maps) inside.

Layout::

    <path>/
        <class A>/img001.png  img002.jpg ...
        <class B>/...

Class names are the subfolder names, sorted (Python string order) to give labels
0..k-1. Hidden entries (names starting with ``.``), files with other extensions and
nested subfolders are ignored (logged at DEBUG). Files are read in sorted name order.

Construction reads every selected file once (it has to: ``keys`` are content hashes
for the feature cache) and, on those bytes, does a cheap check:

* ``on_bad_image="error"`` (default): the header is parsed (Pillow ``Image.open``) and
  ``verify()`` run (PNG chunk CRCs, truncation). Empty files and unrecognised formats
  fail here, all of them listed in one :class:`~bench.errors.DataError`. Damage that
  only a full decode reveals (a truncated JPEG payload) raises a ``DataError`` naming
  the file when that image is loaded.
* ``on_bad_image="skip"``: every file is fully decoded once, so nothing can fail
  later; unreadable files are dropped, listed in ``dataset.bad`` as ``(path, reason)``
  and reported in one WARNING. Measured on the sea-lion chips (1229 PNG, 11 kB each):
  read + hash 0.33 s, header + verify 0.05 s, full decode 0.24 s.

Images are decoded lazily by ``dataset.load(i)``; the file is read again and its hash
compared with the one taken at construction, so a file edited in between raises a
``DataError`` instead of silently poisoning the feature cache.

Decoding (:func:`decode_image`) uses Pillow, which reads GIF (OpenCV cannot, or only
in recent builds) and tells palette, gray and 16-bit modes apart:

* ``1``/``L``/``LA`` -> ``(h, w) uint8`` (alpha dropped); ``I;16*`` -> ``(h, w) uint16``;
  ``F`` -> ``(h, w) float32``; ``I`` (32-bit) -> ``uint16`` for PNG, else ``float32``.
* palette (``P``/``PA``) -> gray ``(h, w)`` if every palette entry is gray, else RGB.
* ``RGB`` -> ``(h, w, 3) uint8``; ``RGBA``: the alpha channel is *dropped* (colour
  values kept as stored, not composited), as most training loaders do; ``CMYK``,
  ``YCbCr`` ... -> RGB through Pillow.
* 16-bit colour PNG/TIFF and float colour TIFF, which Pillow reduces to 8 bit or
  cannot open, are decoded with ``cv2.imdecode(IMREAD_UNCHANGED)`` to ``(h, w, 3)``
  ``uint16``/``float32``.
* Multi-frame files give their first frame; EXIF orientation is ignored (pixels as
  stored, as torchvision and Keras loaders do).
* ``.npy``: 2-D float arrays are depth maps (``float32``, non-finite values -> 0 =
  missing); integer/bool 2-D arrays are gray, ``(h, w, 3|4)`` arrays RGB.

``color="auto"`` keeps gray images ``(h, w)`` and colour images ``(h, w, 3)``; if a
folder mixes both, every image is delivered as RGB (gray replicated), decided at
construction from the header probe, so one dataset has one layout. ``"gray"`` and
``"rgb"`` force a layout. Image sizes may differ (extractors resize). A folder mixing
depth maps and images is rejected.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError
from ..imaging import to_gray
from ..registry import DATASETS
from .base import Dataset

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".npy")
LOADER_VERSION = "1"  # bump when decoding of the same bytes changes (invalidates cached features)
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}
_MAX_LISTED = 20


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------
def _png_is_deep_color(data: bytes) -> bool:
    """16-bit RGB/RGBA PNG (IHDR bit depth 16, colour type 2 or 6): Pillow keeps 8 bits."""
    return (len(data) > 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
            and data[24] == 16 and data[25] in (2, 6))


def _tiff_is_deep_color(im: Image.Image) -> bool:
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA", "RGBX"):
        return False
    bits = im.tag_v2.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return max(bits) > 8


def _decode_cv2(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("neither Pillow nor OpenCV can decode it")
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] == 2:  # gray + alpha
            arr = arr[..., 0]
        else:
            arr = arr[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    return np.ascontiguousarray(arr)


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "RGB"):
        return np.asarray(im)
    if mode in ("1", "LA", "La"):
        return np.asarray(im.convert("L"))
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)  # native byte order
    if mode == "I":
        arr = np.asarray(im)
        return arr.astype(np.uint16) if im.format == "PNG" else arr.astype(np.float32)
    if mode == "F":
        return np.asarray(im, dtype=np.float32)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        rgb = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return np.ascontiguousarray(rgb[..., 0])
        return np.ascontiguousarray(rgb)
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.ascontiguousarray(np.asarray(im)[..., :3])
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, ...


def _decode_npy(data: bytes) -> np.ndarray:
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"array of shape {arr.shape}: expected (h, w) or (h, w, 3)")
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if arr.ndim == 2:
            arr[~np.isfinite(arr)] = 0.0  # depth convention: 0 = missing
        return arr
    if arr.dtype.kind in "iu":
        return np.ascontiguousarray(arr)
    raise ValueError(f"unsupported array dtype {arr.dtype}")


def decode_image(data: bytes, name: str = "") -> np.ndarray:
    """Decode an encoded image (or ``.npy`` array) to a numpy array.

    ``name`` only selects the ``.npy`` reader by its extension. Raises ``ValueError``
    (or a Pillow/OpenCV error) on undecodable input; see the module docstring for the
    mode conversions.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    if name.lower().endswith(".npy") or data[:6] == b"\x93NUMPY":
        return _decode_npy(data)
    if _png_is_deep_color(data):
        return _decode_cv2(data)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF Pillow can't read
            return _decode_cv2(data)
        raise
    with im:
        if _tiff_is_deep_color(im):
            return _decode_cv2(data)
        im.load()
        return _pil_to_array(im)


def read_image(path) -> np.ndarray:
    """Read an image file (png, jpg, tif, gif, bmp, npy, ...) with :func:`decode_image`."""
    path = Path(path)
    try:
        data = path.read_bytes()
        return decode_image(data, path.name)
    except Exception as exc:  # noqa: BLE001 - every failure is a user data problem
        raise DataError(f"cannot read image '{path}': {_reason(exc)}",
                        "check that the file is a complete, supported image") from exc


def _reason(exc: BaseException) -> str:
    """One line saying why a file is not an image: no object reprs, no memory addresses."""
    if isinstance(exc, UnidentifiedImageError):
        return "unknown image format: not a file Pillow or OpenCV can decode"
    if isinstance(exc, OSError) and exc.strerror:
        return _os_reason(exc)
    msg = str(exc).strip() or type(exc).__name__
    msg = re.sub(r"<[^<>]*\bat 0x[0-9a-fA-F]+>", "the file", msg)  # e.g. <_io.BytesIO object at 0x7f..>
    return re.sub(r"\s*\bat 0x[0-9a-fA-F]+", "", msg).splitlines()[0][:200]


def _kind_of(arr: np.ndarray, name: str) -> str:
    if name.lower().endswith(".npy") and arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating):
        return "depth"
    return "gray" if arr.ndim == 2 else "rgb"


def _probe(data: bytes, name: str, full: bool) -> str:
    """Layout of an encoded image (``gray``/``rgb``/``depth``) from a cheap check.

    ``full=True`` decodes the whole image. Otherwise only the header is parsed and
    ``verify()`` run, except for palette images, whose gray/colour nature needs the
    palette applied (they are small), and for the rare files routed to OpenCV.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    if full or name.lower().endswith(".npy") or data[:6] == b"\x93NUMPY" or _png_is_deep_color(data):
        return _kind_of(decode_image(data, name), name)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _kind_of(decode_image(data, name), name)  # TIFF via OpenCV, or raises
    with im:
        mode = im.mode
        if mode in ("P", "PA") or _tiff_is_deep_color(im):
            return _kind_of(decode_image(data, name), name)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    return "gray" if (mode in _GRAY_MODES or mode.startswith("I;16")) else "rgb"


# ---------------------------------------------------------------------------
# the lazy loader
# ---------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _convert(arr: np.ndarray, target: str) -> np.ndarray:
    if target == "gray" and arr.ndim == 3:
        g = to_gray(arr)
        if np.issubdtype(arr.dtype, np.integer) and g.dtype != arr.dtype:
            info = np.iinfo(arr.dtype)
            g = np.clip(np.rint(g), info.min, info.max).astype(arr.dtype)
        return g
    if target == "rgb" and arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return arr


@dataclass(frozen=True)
class FolderLoader:
    """Picklable ``loader(i)`` of a folder dataset: read, check hash, decode, convert."""

    root: str
    relpaths: tuple
    digests: tuple
    target: str  # "keep" | "gray" | "rgb"

    def __call__(self, i: int) -> np.ndarray:
        return _load_file(self.root, self.relpaths[i], self.digests[i], self.target)

    def subset(self, indices) -> "FolderSubset":
        """A loader of the images ``indices`` only, still called with their dataset index:
        what an extraction task ships to a worker (not every path and hash of the dataset)."""
        idx = tuple(int(i) for i in indices)
        return FolderSubset(self.root, {i: (self.relpaths[i], self.digests[i]) for i in idx}, self.target)


@dataclass(frozen=True)
class FolderSubset:
    """:meth:`FolderLoader.subset`: ``loader(i)`` for some dataset indices ``i``."""

    root: str
    files: dict  # dataset index -> (relative path, digest)
    target: str

    def __call__(self, i: int) -> np.ndarray:
        relpath, digest = self.files[int(i)]
        return _load_file(self.root, relpath, digest, self.target)


def _load_file(root: str, relpath: str, digest: str, target: str) -> np.ndarray:
    """Read, check the hash, decode and convert one file of a folder dataset."""
    path = Path(root, relpath)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image '{path}': {_reason(exc)}",
                        "the file disappeared or became unreadable after the dataset was built"
                        ) from exc
    if _digest(data) != digest:
        raise DataError(f"image '{path}' changed on disk after the dataset was built",
                        "do not edit the dataset folder during a run; start the run again")
    try:
        arr = decode_image(data, path.name)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot decode image '{path}': {_reason(exc)}",
                        "fix or remove the file, or set dataset.on_bad_image: skip "
                        "to leave unreadable files out") from exc
    return _convert(arr, target)


# ---------------------------------------------------------------------------
# helpers shared with other loaders
# ---------------------------------------------------------------------------
def subsample_per_class(labels: Sequence[int], max_per_class: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` items of every class.

    Deterministic: class ``c`` draws with ``np.random.default_rng([seed, c])``, so a
    class's choice does not depend on the other classes.
    """
    labels = np.asarray(labels)
    if max_per_class is None:
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > max_per_class:
            idx = np.random.default_rng([int(seed), int(c)]).choice(idx, max_per_class, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def check_max_per_class(max_per_class) -> int | None:
    if max_per_class is None:
        return None
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, (int, np.integer)) \
            or max_per_class < 1:
        raise ConfigError(f"dataset.max_per_class must be a positive integer or null, got {max_per_class!r}",
                          "e.g. max_per_class: 20 to keep at most 20 images per class")
    return int(max_per_class)


def _norm_extensions(extensions: Iterable[str]) -> frozenset:
    if isinstance(extensions, str):
        extensions = [extensions]
    try:
        out = frozenset(("." + str(e).lower().lstrip(".")) for e in extensions)
    except TypeError:
        out = frozenset()
    if not out:
        raise ConfigError(f"dataset.extensions must be a non-empty list, got {extensions!r}",
                          f"e.g. extensions: {list(DEFAULT_EXTENSIONS)}")
    return out


def _compile_group_pattern(pattern):
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise ConfigError(f"dataset.group_pattern '{pattern}' is not a valid regular expression: {exc}",
                          r"use a Python regex whose first group captures the group id, e.g. '^(\d+)_'"
                          ) from None


def _group_of(rx, name: str, path: Path) -> str:
    m = rx.search(name)
    g = (m.group(1) if rx.groups else m.group(0)) if m else None
    if not g:
        raise DataError(f"file '{path}' does not match dataset.group_pattern '{rx.pattern}'"
                        + ("" if m is None else " (the group captured nothing)"),
                        "fix the regex so that every file name matches and its first group captures "
                        r"the group id (it is searched in the file name only), e.g. '^(\d+)_'")
    return g


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link that points to itself (a loop)"
    return exc.strerror or type(exc).__name__


def _entries(folder: str, what: str) -> list[tuple[str, str, bool, bool]]:
    """``(name, path, is_dir, is_file)`` of the visible entries of ``folder``, sorted by name.
    An unreadable folder or entry (no permission, a symbolic-link loop) is a DataError naming it."""
    def fail(path, exc):
        fix = (f"give yourself read access (chmod -R u+rX '{path}')" if isinstance(exc, PermissionError)
               else "point the link at a real file or folder")
        return DataError(f"{what} '{path}' cannot be read: {_os_reason(exc)}",
                         f"{fix}, or remove it from the dataset folder")
    try:
        with os.scandir(folder) as it:
            found = [e for e in it if not e.name.startswith(".")]
    except OSError as exc:
        raise fail(folder, exc) from None
    out = []
    for e in sorted(found, key=lambda e: e.name):
        try:
            is_dir, is_file = e.is_dir(), e.is_file()
            if e.is_symlink():
                os.stat(e.path)  # a looping or dangling link: DirEntry says "neither" silently
        except OSError as exc:
            raise fail(e.path, exc) from None
        out.append((e.name, e.path, is_dir, is_file))
    return out


def _list_classes(root: Path, exts: frozenset):
    if not root.exists():
        raise DataError(f"dataset.path '{root}' does not exist",
                        "point dataset.path to a folder with one subfolder per class")
    if not root.is_dir():
        raise DataError(f"dataset.path '{root}' is a file, not a folder",
                        "point dataset.path to a folder with one subfolder per class")
    class_dirs = [e for e in _entries(str(root), "dataset entry") if e[2]]
    if not class_dirs:
        raise DataError(f"dataset.path '{root}' has no class subfolders",
                        f"put each class's images in its own subfolder, e.g. {root}/<class>/*.png")
    classes = []
    for d_name, d_path, _, _ in class_dirs:
        files, ignored = [], []
        for name, _, _, is_file in _entries(d_path, "class folder entry"):
            if is_file and os.path.splitext(name)[1].lower() in exts:
                files.append(name)
            else:
                ignored.append(name)
        if ignored:
            log.debug("class folder %s: ignoring %d entries that are not image files: %s",
                      d_path, len(ignored), ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
        if not files:
            raise DataError(f"class folder '{d_path}' contains no images",
                            f"add images ({', '.join(sorted(exts))}) or remove the folder; "
                            "hidden files and nested folders are ignored")
        classes.append((d_name, files))
    if len(classes) < 2:
        raise DataError(f"dataset.path '{root}' has only one class folder ('{classes[0][0]}')",
                        "classification needs >= 2 classes: add a subfolder with the images of another class")
    return classes


def _scan_one(path: Path, full: bool):
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, None, _reason(exc)
    digest = _digest(data)
    try:
        return digest, _probe(data, path.name, full), None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
        return digest, None, _reason(exc)


def _scan(paths: list, full: bool, n_threads: int | None = None):
    """Read, hash and probe every file; threads overlap I/O, hashing and decoding."""
    if n_threads is None:
        n_threads = min(8, (os.cpu_count() or 1) + 2)
    if len(paths) < 64 or n_threads <= 1:
        return [_scan_one(p, full) for p in paths]
    with ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(lambda p: _scan_one(p, full), paths, chunksize=16))


def _bad_list_text(bad) -> str:
    text = "; ".join(f"{p} ({r})" for p, r in bad[:_MAX_LISTED])
    if len(bad) > _MAX_LISTED:
        text += f"; ... and {len(bad) - _MAX_LISTED} more (see dataset.bad)"
    return text


# ---------------------------------------------------------------------------
# the factory
# ---------------------------------------------------------------------------
def _drop_bad(root: Path, bad: list, on_bad_image: str, class_names: list, relpaths, labels, groups,
              scanned):
    """Unreadable images: an error naming them, or (``skip``) the lists without them,
    checking that every class keeps an image."""
    if on_bad_image == "error":
        raise DataError(f"{len(bad)} unreadable image(s) in '{root}': {_bad_list_text(bad)}",
                        "fix or remove these files, or set dataset.on_bad_image: skip to leave them out")
    log.warning("skipped %d unreadable image(s) in %s: %s", len(bad), root, _bad_list_text(bad))
    ok = [i for i, s in enumerate(scanned) if not s[2]]
    relpaths = [relpaths[i] for i in ok]
    labels = [labels[i] for i in ok]
    groups = [groups[i] for i in ok] if groups is not None else None
    scanned = [scanned[i] for i in ok]
    counts = np.bincount(labels, minlength=len(class_names)) if labels else np.zeros(len(class_names))
    empty = [class_names[c] for c in np.flatnonzero(counts == 0)]
    if empty or len(class_names) < 2:
        raise DataError(f"after skipping unreadable images, class folder(s) {', '.join(empty)} in "
                        f"'{root}' have no images left", "fix the files or remove the class folder")
    return relpaths, labels, groups, scanned


def check_load_options(on_bad_image: str, color: str) -> None:
    """``dataset.on_bad_image`` and ``dataset.color`` of the folder and manifest datasets."""
    if on_bad_image not in ("error", "skip"):
        raise ConfigError(f"dataset.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}",
                          "'skip' leaves unreadable images out and lists them in the log")
    if color not in ("auto", "gray", "rgb"):
        raise ConfigError(f"dataset.color must be 'auto', 'gray' or 'rgb', got {color!r}",
                          "'auto' keeps gray images gray and colour images RGB")


def image_modality(source, kinds: set, color: str, separate: str = "dataset folders") -> tuple[str, str]:
    """``(modality, target)`` of a dataset whose images are of ``kinds`` (depth / gray / rgb)
    under ``dataset.color``; ``target`` is what the loader converts each image to.
    ``source`` (the folder or manifest) and ``separate`` name what the errors point at."""
    if "depth" in kinds and kinds != {"depth"}:
        raise DataError(f"'{source}' mixes depth maps (2-D float .npy) with images",
                        f"keep depth maps and images in separate {separate}")
    if kinds == {"depth"}:
        if color == "rgb":
            raise ConfigError("dataset.color 'rgb' cannot apply to depth maps",
                              "use color: auto for folders of .npy depth maps")
        return "depth", "keep"
    if color == "gray":
        return "gray", "gray"
    if color == "rgb" or kinds == {"gray", "rgb"}:
        if color == "auto":
            log.info("%s mixes gray and colour images: all are loaded as RGB", source)
        return "rgb", "rgb"
    return next(iter(kinds)), "keep"


@DATASETS.register("folder", "Images in one subfolder per class (png, jpg, tif, gif, bmp, npy depth)")
def folder_dataset(path, group_pattern: str | None = None, on_bad_image: str = "error",
                   extensions: Sequence[str] = DEFAULT_EXTENSIONS, max_per_class: int | None = None,
                   seed: int = 0, color: str = "auto", name: str | None = None) -> Dataset:
    """Load a class-per-subfolder image tree (see the module docstring).

    Args:
        path: root folder; each non-hidden subfolder is a class.
        group_pattern: regex searched in each file *name*; the group is its first capture
            group (or the whole match), e.g. ``'^(\\d+)_'`` gives ``'41'`` for
            ``41_pups_3.png``. Groups keep related images (crops of one photo) on the same
            side of a split.
        on_bad_image: ``"error"`` or ``"skip"`` (see the module docstring).
        extensions: file extensions to read (case-insensitive).
        max_per_class: keep at most this many files per class (stratified random
            subsample with ``seed``, drawn before files are read).
        seed: seed of that subsample.
        color: ``"auto"``, ``"gray"`` or ``"rgb"``.
        name: dataset name (default: the folder's name).
    """
    check_load_options(on_bad_image, color)
    max_per_class = check_max_per_class(max_per_class)
    exts = _norm_extensions(extensions)
    rx = _compile_group_pattern(group_pattern)
    root = Path(os.path.expanduser(str(path))).resolve()

    classes = _list_classes(root, exts)
    class_names = [c for c, _ in classes]
    relpaths, labels, groups = [], [], []
    for label, (cname, files) in enumerate(classes):
        for f in files:
            if rx is not None:
                groups.append(_group_of(rx, f, root / cname / f))
            relpaths.append(f"{cname}/{f}")
            labels.append(label)
    n_found = len(relpaths)
    keep = subsample_per_class(labels, max_per_class, seed)
    relpaths = [relpaths[i] for i in keep]
    labels = [labels[i] for i in keep]
    groups = [groups[i] for i in keep] if rx is not None else None

    scanned = _scan([root / r for r in relpaths], full=(on_bad_image == "skip"))
    bad = [(str(root / r), reason) for r, (_, _, reason) in zip(relpaths, scanned) if reason]
    if bad:
        relpaths, labels, groups, scanned = _drop_bad(root, bad, on_bad_image, class_names,
                                                      relpaths, labels, groups, scanned)

    modality, target = image_modality(root, {k for _, k, _ in scanned}, color)
    digests = tuple(d for d, _, _ in scanned)
    salt = f"bench.folder/{LOADER_VERSION}/{target}/"
    keys = [hashlib.blake2b((salt + d).encode(), digest_size=16).hexdigest() for d in digests]
    loader = FolderLoader(str(root), tuple(relpaths), digests, target)
    meta = {"kind": "folder", "path": str(root), "color": color, "target": target,
            "group_pattern": group_pattern, "on_bad_image": on_bad_image, "n_found": n_found,
            "n_bad": len(bad), "max_per_class": max_per_class, "seed": seed,
            "class_counts": np.bincount(labels, minlength=len(class_names)).tolist()}
    log.debug("folder dataset %s: %d images, %d classes, modality %s", root, len(labels),
              len(class_names), modality)
    return Dataset(name=name or root.name, loader=loader, labels=np.asarray(labels, dtype=np.int64),
                   class_names=class_names, keys=keys,
                   groups=None if groups is None else np.asarray(groups),
                   ids=list(relpaths), modality=modality, meta=meta, bad=bad)

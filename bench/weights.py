"""Where CNN weights come from, decided before any model is built.

``weights`` in a config is ``"imagenet"``, ``"random"`` or a path to a weights file.
:func:`resolve` turns it into a :class:`ResolvedWeights` with cheap file checks only
(no Keras import), so a cached rerun knows the provenance and the cache identity of
deep features without building a network.

ImageNet weights are never downloaded (bench runs offline). They are used when the
no-top file is already in the Keras cache folder, the one ``keras.utils.get_file``
uses: ``$KERAS_HOME/models`` when ``KERAS_HOME`` is set, else ``~/.keras/models``
(Keras falls back to ``/tmp/.keras/models`` when the home folder is read-only; bench
looks there too). bench then builds Keras' own ImageNet model,
``keras.applications.X(weights="imagenet", include_top=False)``, with Keras' download
helper swapped for the duration of that call for one that returns the file found: no
download and no hash check (which would start a re-download of a damaged file) can
happen, and ``KERAS_HOME`` is read at call time rather than at Keras import.

When the file is missing, ``on_missing="random"`` continues with seeded random
weights, labelled ``random-init`` on every row, and logs one WARNING per backbone that
names the file, the folder and the URL; ``on_missing="error"`` raises
:class:`~bench.errors.WeightsError` with the same text.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BenchError, ConfigError, WeightsError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")

_warned: set = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class ResolvedWeights:
    """The weights a model will get, and how rows and caches name them."""

    kind: str                 # "imagenet" | "random" | "file"
    label: str                # "imagenet" | "random-init" | "file:<path>" (records' weights field)
    path: str | None          # the file that will be loaded, None for random init
    identity: str             # what the feature cache key depends on
    note: str | None = None   # why random init when ImageNet was asked for

    @property
    def is_random(self) -> bool:
        return self.path is None


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
    hint = (f"download {backbone.weights_url}{fname} on a machine with network access and copy "
            f"it to {folder}/ (set KERAS_HOME to use another folder: $KERAS_HOME/models/), or "
            f"give the file directly with `weights: /path/to/{fname}`")
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


def resolve(backbone, weights="imagenet", input_size=None, on_missing="random",
            seed=0) -> ResolvedWeights:
    """Decide which weights ``backbone`` gets, with file checks only.

    ``weights``: ``"imagenet"``, ``"random"`` (or ``None``), or a path to a ``.h5``,
    ``.weights.h5`` or ``.keras`` file holding the weights of the same no-top model.
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
        found = find_imagenet_file(backbone, input_size)
        if found is not None:
            return ResolvedWeights("imagenet", "imagenet", str(found),
                                   f"imagenet|{found.name}|{file_identity(found).split('|', 1)[1]}")
        message, hint = missing_message(backbone, input_size)
        if on_missing == "error":
            raise WeightsError(message, hint)
        _warn_once(("missing", backbone.name, message),
                   f"{message}. Features of {backbone.name} use RANDOM weights (seed {seed}) and "
                   f"are labelled 'random-init', not pretrained. To fix: {hint}.")
        return ResolvedWeights("random", "random-init", None,
                               f"random|seed={seed}|keras={_keras_version()}",
                               note=f"{message} (on_missing_weights=random)")
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
    where = f"{backbone.name} (keras.applications.{backbone.constructor}, include_top=False)"
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

    * ImageNet: Keras' own ImageNet model, ``keras.applications.X(weights="imagenet")``,
      handed the cached file (this matters: EfficientNet adds an input rescaling layer
      only for ImageNet weights); see :meth:`Backbone.build`.
    * a file: the ``weights=None`` model, then ``model.load_weights(file)``.
    * random: the ``weights=None`` model built under :func:`seeded`.
    """
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

"""Import TensorFlow/Keras without the C++ start-up chatter on stderr.

TensorFlow >= 2.20 prints oneDNN and absl notices from C++ at import time,
regardless of ``TF_CPP_MIN_LOG_LEVEL``. The CLI imports Keras through
:func:`quiet_import` before a run that needs it, so users see bench's output only.
Errors still surface: the import is retried with stderr intact if it fails.
"""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def quiet_import() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:
        return
    try:
        with _stderr_to_devnull():
            import keras  # noqa: F401
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf
                tf.constant(0)  # triggers the remaining one-time notices
    except Exception:  # noqa: BLE001 - import again so the real error is visible
        import keras  # noqa: F401

"""One exception family for every mistake a user can make.

The CLI catches :class:`BenchError`, prints ``error: <message>`` and
``hint: <hint>`` and exits with code 2; ``--debug`` shows the traceback.
Library code raises these instead of bare ``ValueError`` whenever the cause is
user input (a file, a config field, a value) rather than a bug.
"""
from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word, options: Iterable, cutoff: float = 0.6) -> str:
    """``"did you mean 'x'? "`` for the option closest to ``word`` (a trailing space, so a
    hint can go on), or ``""`` when nothing is close. The one "did you mean" of bench."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}? " if close else ""


class BenchError(Exception):
    """Base class: a message and a hint saying what to do."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(BenchError):
    """A pipeline file or a command-line override is wrong."""


class DataError(BenchError):
    """A dataset, an image file or a label is wrong or unreadable."""


class WeightsError(BenchError):
    """Pretrained weights were asked for and cannot be loaded."""


class PluginError(BenchError):
    """A plugin file failed to import."""


class ResultsError(BenchError):
    """A results or report folder cannot be read or written."""

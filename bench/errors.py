"""One exception family for every mistake a user can make.

The CLI catches :class:`BenchError`, prints ``error: <message>`` and
``hint: <hint>`` and exits with code 2; ``--debug`` shows the traceback.
Library code raises these instead of bare ``ValueError`` whenever the cause is
user input (a file, a config field, a value) rather than a bug.
"""
from __future__ import annotations


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

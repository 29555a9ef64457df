"""Every built-in component registered: importing the packages fills the registries
(:mod:`bench.registry`); plugins add theirs with :func:`bench.plugins.load_plugins`."""
from __future__ import annotations


def load_components() -> None:
    """Import the built-in classifiers, datasets and features (idempotent)."""
    from . import classifiers, data, features  # noqa: F401  (registration side effects)

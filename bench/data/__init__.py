"""Datasets. Importing the package registers every built-in loader in
:data:`bench.registry.DATASETS`."""
from . import datasets, points, sealion  # noqa: F401  (registration side effects)

__all__ = ["datasets", "points", "sealion"]

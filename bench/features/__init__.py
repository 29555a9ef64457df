"""Feature extractors. Importing the package registers every built-in one in
:data:`bench.registry.FEATURES` (and the CNN backbones in ``BACKBONES``), so a worker
process that unpickles an extractor has the registry a concatenation's parts need."""
from . import backbones, deep, handcrafted  # noqa: F401  (registration side effects)

__all__ = ["backbones", "deep", "handcrafted"]

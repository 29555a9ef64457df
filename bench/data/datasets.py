"""Import every dataset loader so that it registers itself in ``bench.registry.DATASETS``.

Importing this module is enough to make ``folder``, ``digits``, ``faces`` and
``synthetic-parcel`` (and any module listed here later) available by name.
"""
from __future__ import annotations

from . import builtin, folder, parcel  # noqa: F401  (registration side effects)

__all__ = ["builtin", "folder", "parcel"]

"""Import every dataset loader so that it registers itself in ``bench.registry.DATASETS``.

Importing this module is enough to make ``folder``, ``npz``, ``manifest``, ``digits``,
``faces`` and ``synthetic-parcel`` (and any module listed here later) available by
name. :data:`EXAMPLES` holds the one-line example ``python -m bench list datasets``
prints beside each kind (a loader may instead pass ``example=`` to ``register``).
"""
from __future__ import annotations

from . import builtin, folder, manifest, npz, parcel  # noqa: F401  (registration side effects)

__all__ = ["builtin", "folder", "manifest", "npz", "parcel", "EXAMPLES", "example_of"]

EXAMPLES = {
    "folder": "dataset.kind=folder dataset.path=my_images   (my_images/<class>/*.png)",
    "points": ("dataset.kind=points dataset.path=scenes dataset.patch_size=64   "
               "(scenes/annotations.csv: image,x,y,class)"),
    "digits": "dataset.kind=digits",
    "faces": "dataset.kind=faces",
    "synthetic-parcel": "dataset.kind=synthetic-parcel dataset.n_per_class=30",
    "synthetic-sealion": "dataset.kind=synthetic-sealion dataset.n_scenes=6",
}


def example_of(entry) -> str | None:
    """The one-line example of a dataset registry entry, if any."""
    return entry.meta.get("example") or EXAMPLES.get(entry.name)

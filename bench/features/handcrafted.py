"""Import every hand-crafted extractor so that it registers in ``FEATURES``.

``hog``, ``lbp``, ``glcm``, ``sift_bovw``, ``color_hist``, ``granulometry``,
``parcel_shape`` and ``concat``.
"""
from . import color, concat, glcm, granulometry, hog, lbp, shape, sift  # noqa: F401

__all__ = ["color", "concat", "glcm", "granulometry", "hog", "lbp", "shape", "sift"]

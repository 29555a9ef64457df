"""What each hand-crafted extractor computes on one image, with that extractor's parameters.

Every function takes the extractor instance of a row (so the picture cannot drift from
what the row measured) and the image as that row's extractor received it (after the
row's ``prepare``), and returns arrays plus the parameters it used, so a report can say
exactly what is drawn and a test can compare them with the extractor's.
"""
from __future__ import annotations

import numpy as np

from ..imaging import resize, to_gray_u8, to_rgb_u8


# --------------------------------------------------------------------------- HOG
def hog_glyph(image: np.ndarray, hog) -> dict:
    """The HOG glyph picture of ``image`` for the extractor ``hog`` (:class:`~bench.features.hog.HOG`).

    bench computes HOG with OpenCV; the glyph is scikit-image's rendering
    (``skimage.feature.hog(..., visualize=True)``) with the same orientations, cells,
    blocks, block normalisation and gamma (:meth:`HOG.skimage_params`), on the image
    converted and resized exactly as the extractor does. Returns ``{"glyph": (h, w)
    float image, "vector": scikit-image's HOG vector, "input": the uint8 image it ran
    on, "params": the parameters}``.
    """
    from skimage.feature import hog as sk_hog
    params = hog.skimage_params()
    u8 = to_rgb_u8(image) if params["color"] else to_gray_u8(image)
    if params["size"] is not None:
        u8 = resize(u8, params["size"], "area")
    vec, glyph = sk_hog(u8, orientations=params["orientations"],
                        pixels_per_cell=params["pixels_per_cell"],
                        cells_per_block=params["cells_per_block"], block_norm=params["block_norm"],
                        transform_sqrt=params["transform_sqrt"], visualize=True, feature_vector=True,
                        channel_axis=-1 if params["color"] else None)
    return {"glyph": np.asarray(glyph, dtype=np.float64), "vector": vec, "input": u8,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}}


# --------------------------------------------------------------------------- LBP
def lbp_maps(image: np.ndarray, lbp, max_maps: int = 3) -> list[dict]:
    """LBP code maps of ``image`` for the extractor ``lbp`` (:class:`~bench.features.lbp.LBPHistogram`).

    One map per (points, radius) of the extractor (at most ``max_maps``, smallest radii
    first), computed by bench's own :func:`~bench.features.lbp.lbp_codes` (bit-for-bit
    scikit-image's ``local_binary_pattern``) on the same 8-bit gray image, with the
    extractor's method. For ``uniform`` codes ``0..P`` count the neighbours brighter
    than the centre (flat or spot patterns at the ends, edges and corners between) and
    ``P + 1`` collects the non-uniform patterns.
    """
    from ..features.lbp import lbp_codes, n_bins
    method, rp = lbp._config()
    gray = to_gray_u8(image)
    out = []
    for r, p in sorted(rp)[:max_maps]:
        codes = lbp_codes(gray, p, r, method)
        out.append({"codes": codes, "points": int(p), "radius": float(r), "method": method,
                    "n_bins": int(n_bins(p, method))})
    return out


def lbp_params(lbp) -> dict:
    """The LBP extractor's parameters as recorded with its panels."""
    method, rp = lbp._config()
    return {"method": method, "radii": [float(r) for r, _ in rp], "points": [int(p) for _, p in rp]}


# --------------------------------------------------------------------------- SIFT
def sift_words(image: np.ndarray, stage, encoder) -> dict:
    """Keypoints of ``image`` and the visual word of each.

    ``stage`` is the row's per-image :class:`~bench.features.sift.SiftDescriptors`,
    ``encoder`` its fold stage (:class:`~bench.features.sift.BoVWEncoder`) fitted on a
    training fold (one in which ``image`` is a test image). Returns ``{"xy": (k, 2)
    keypoint centres in the image SIFT ran on, "size": (k,) descriptor window widths,
    "words": (k,) word indices, "n_words", "shape": that image's (h, w), "dense"}``.
    """
    gray, kps, desc = stage.keypoints_and_descriptors(image)
    if len(desc):
        words = np.asarray(encoder.kmeans_.predict(np.asarray(desc, dtype=np.float32)), dtype=np.int64)
    else:
        words = np.zeros(0, dtype=np.int64)
    xy = np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2)
    # OpenCV's descriptor window spans 6 * kp.size pixels (see dense_keypoints)
    size = np.array([6.0 * k.size for k in kps], dtype=np.float64)
    return {"xy": xy, "size": size, "words": words, "n_words": int(encoder.cluster_centers_.shape[0]),
            "shape": tuple(gray.shape[:2]), "dense": stage.keypoints == "dense",
            "step": float(stage.step) if stage.keypoints == "dense" else None}


# --------------------------------------------------------------------------- parcel shape
def shape_geometry(image: np.ndarray, shape) -> dict:
    """What ``parcel_shape`` measures on a depth map, from its own :func:`parcel_geometry`.

    Returns ``{"valid", "footprint", "polygon" ((k, 2) x, y), "rect_corners" ((4, 2)),
    "rect" (centre, sides, angle), "threshold", "features" (name -> value of the row's
    extractor on this image)}``.
    """
    import cv2

    from ..features.shape import parcel_geometry
    shape._check()
    geo = parcel_geometry(image, shape.base, float(shape.threshold))
    names = shape.feature_names()
    values = shape.transform([image])[0]
    out = {"valid": geo.valid, "footprint": geo.footprint, "threshold": float(geo.threshold),
           "polygon": None, "rect_corners": None, "rect": None,
           "features": {n: float(v) for n, v in zip(names, values)}}
    if geo.polygon is not None:
        out["polygon"] = geo.polygon.reshape(-1, 2).astype(np.float64)
        out["rect_corners"] = cv2.boxPoints(geo.rect).astype(np.float64)
        (cx, cy), (w, h), ang = geo.rect
        out["rect"] = {"centre": [float(cx), float(cy)], "sides": [float(w), float(h)], "angle": float(ang)}
    return out

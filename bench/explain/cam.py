"""Inside the CNNs: filters, feature maps, class activation maps, Grad-CAM, occlusion.

* :func:`feature_maps` - the pre-pooling feature map of a frozen-CNN row
  (:class:`~bench.features.deep.CNNFeatures`: backbone cut at the row's layer) for a
  few images: the tensor its GAP / GMP pools.
* :func:`fold_linear` + :func:`linear_cam` - the exact class activation map of a GAP
  row with a linear classifier. With ``f = mean_xy A(x, y)`` (GAP), a standard scaler
  ``z = (f - mu) / sigma`` and a linear score ``s_c = w_c . z + b_c``:

      ``s_c = sum_k (w_ck / sigma_k) f_k + (b_c - sum_k w_ck mu_k / sigma_k)``

  so ``CAM_c(x, y) = sum_k (w_ck / sigma_k) A_k(x, y)`` has spatial mean
  ``s_c - b'_c``: the map *is* the class score, spread over the image (tested).
* :func:`grad_cam` - Grad-CAM (Selvaraju et al. 2017) of an end-to-end Keras model on
  its last convolutional block: ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the
  spatial mean of ``d y_c / d A_k`` and ``y_c`` the pre-softmax class score.
* :func:`occlusion_map` - for any classifier of images: the drop in the predicted
  class's probability when a grey patch (the image's mean) covers each region.
* :func:`first_conv` - the first convolution's kernels of a Keras model.

Keras is imported inside the functions; Grad-CAM needs the TensorFlow backend.
"""
from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- helpers
def upsample(m: np.ndarray, hw, interpolation: str = "linear") -> np.ndarray:
    """A 2-D map resized to ``hw = (h, w)`` (bilinear by default), float64."""
    import cv2
    h, w = int(hw[0]), int(hw[1])
    m = np.asarray(m, dtype=np.float32)
    inter = cv2.INTER_NEAREST if interpolation == "nearest" else cv2.INTER_LINEAR
    return cv2.resize(m, (w, h), interpolation=inter).astype(np.float64)


def class_scores(fitted, X) -> np.ndarray:
    """``predict_proba`` of a fitted classifier, else the softmax of its decision values
    (the confidences the records store, see :func:`bench.protocol.class_scores`)."""
    if hasattr(fitted, "predict_proba"):
        try:
            return np.asarray(fitted.predict_proba(X), dtype=np.float64)
        except AttributeError:
            pass
    z = np.asarray(fitted.decision_function(X), dtype=np.float64)
    if z.ndim == 1:
        z = np.stack([-z, z], axis=1) / 2
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- frozen CNN rows
def _pooling_input(model):
    """The tensor a :class:`CNNFeatures` model pools (input of its GAP / GMP layer)."""
    import keras
    pools = [lay for lay in model.layers
             if isinstance(lay, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D))]
    named = [lay for lay in pools if lay.name.startswith("bench_")]
    if not (named or pools):
        raise ValueError(f"model {model.name!r} has no global pooling layer")
    # bench's own pooling layers; else the last one (squeeze-excite blocks pool too)
    return (named or pools)[-1].input


def feature_map_model(ext):
    """A Keras model from the row's network input to its pre-pooling feature map (cached on
    ``ext`` while its network is unchanged)."""
    import keras
    ext.prepare([])  # builds the network on first use (and after set_params)
    cached = ext.__dict__.get("_explain_fmap")
    if cached is not None and cached[0] is ext.model_:
        return cached[1]
    sub = keras.Model(ext.model_.input, _pooling_input(ext.model_), name="bench_explain_fmap")
    ext.__dict__["_explain_fmap"] = (ext.model_, sub)
    return sub


def network_inputs(ext, images) -> np.ndarray:
    """``images`` as the row's network takes them: resized uint8 RGB, then the backbone's
    ``preprocess_input`` (float32 ``(n, h, w, 3)``)."""
    return ext.preprocess(list(images))


def feature_maps(ext, images=None, inputs=None) -> np.ndarray:
    """Pre-pooling feature maps ``(n, h', w', C)`` float32 of a frozen-CNN row
    (:class:`~bench.features.deep.CNNFeatures`) for ``images`` (or ready ``inputs``)."""
    sub = feature_map_model(ext)
    x = network_inputs(ext, images) if inputs is None else inputs
    if len(x) == 0:
        return np.zeros((0,) + tuple(int(d) for d in sub.output.shape[1:]), dtype=np.float32)
    return np.asarray(sub.predict(x, batch_size=32, verbose=0), dtype=np.float32)


def is_linear(estimator) -> bool:
    """Whether a (fitted or not) classifier scores classes with ``w . x + b``."""
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.svm import SVC
    if isinstance(estimator, LinearClassifierMixin):
        return True
    return isinstance(estimator, SVC) and estimator.kernel == "linear" and \
        len(getattr(estimator, "classes_", [0, 1])) == 2


def fold_linear(pipe) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, b, classes)`` of a fitted ``[StandardScaler ->] linear classifier`` pipeline,
    the scaler folded in: ``decision_function(f) = f @ W.T + b`` on *unscaled* features.

    Binary classifiers have one score ``d`` (class ``classes[1]``); it is returned as two
    rows ``(-d, d)`` so row ``c`` is always the score of ``classes[c]``.
    """
    from sklearn.preprocessing import StandardScaler
    steps = [s for _, s in pipe.steps] if hasattr(pipe, "steps") else [pipe]
    clf = steps[-1]
    if not is_linear(clf):
        raise ValueError(f"{type(clf).__name__} is not a linear classifier")
    coef = np.asarray(clf.coef_, dtype=np.float64)
    icpt = np.broadcast_to(np.asarray(clf.intercept_, dtype=np.float64), (coef.shape[0],)).copy()
    for s in reversed(steps[:-1]):
        if s is None or s == "passthrough":
            continue
        if not isinstance(s, StandardScaler):
            raise ValueError(f"cannot fold a {type(s).__name__} into a linear classifier")
        mu = s.mean_ if s.with_mean else np.zeros(coef.shape[1])
        sigma = s.scale_ if s.with_std else np.ones(coef.shape[1])
        icpt = icpt - coef @ (mu / sigma)
        coef = coef / sigma
    if coef.shape[0] == 1:
        coef, icpt = np.vstack([-coef, coef]), np.array([-icpt[0], icpt[0]])
    return coef, icpt, np.asarray(clf.classes_)


def linear_cam(fmap: np.ndarray, W: np.ndarray, b: np.ndarray, c: int) -> tuple[np.ndarray, float]:
    """``(CAM, folded bias)`` of class row ``c``: ``CAM = sum_k W[c, k] A_k`` over the
    ``(h, w, C)`` map ``A``; ``CAM.mean() + bias`` is the classifier's score of class ``c``
    on the GAP of ``A``."""
    A = np.asarray(fmap, dtype=np.float64)
    return A @ np.asarray(W[c], dtype=np.float64), float(b[c])


# --------------------------------------------------------------------------- Grad-CAM
def last_conv_tensor(model, layer: str | None = None):
    """``(tensor, name)`` of the feature map Grad-CAM looks at.

    Default: the tensor feeding the model's last global pooling layer (its last
    convolutional block; for a nested backbone, that backbone's output as called in the
    outer graph), named after the layer that produced it; else the last layer with a 4-D
    output. ``layer`` names a layer of ``model`` explicitly.
    """
    import keras
    if layer is not None:
        return model.get_layer(layer).output, layer
    for lay in reversed(model.layers):
        if isinstance(lay, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
            src = lay.input
            hist = getattr(src, "_keras_history", None)
            name = getattr(getattr(hist, "operation", None), "name", None) or f"input of {lay.name}"
            return src, name
    for lay in reversed(model.layers):
        shape = getattr(lay.output, "shape", None)
        if shape is not None and len(shape) == 4 and not isinstance(lay, keras.Model):
            return lay.output, lay.name
    raise ValueError(f"model {model.name!r} has no 4-D feature map")


def grad_cam(model, x: np.ndarray, c=None, layer: str | None = None) -> list[dict]:
    """Grad-CAM of a batch ``x`` (``(n, h, w, ch)`` as the model takes it).

    ``c``: the class of each image (default: the predicted one); ``layer``: the feature
    map (default :func:`last_conv_tensor`). The score differentiated is the pre-softmax
    logit when the model ends in a softmax ``Dense`` layer. The model runs in inference
    mode (``training=False``), so images do not interact and one pass serves the batch.
    Returns one ``{"cam": (h', w') >= 0, "class", "proba", "layer"}`` per image.
    """
    import keras
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("Grad-CAM needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    import tensorflow as tf
    target, name = last_conv_tensor(model, layer)
    head = model.layers[-1]
    softmax_dense = isinstance(head, keras.layers.Dense) and \
        getattr(head.activation, "__name__", "") == "softmax"
    outs = [target, head.input if softmax_dense else model.output, model.output]
    grad_model = keras.Model(model.inputs, outs)
    xb = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
    with tf.GradientTape() as tape:
        A, h, proba = grad_model(xb, training=False)
        tape.watch(A)
        logits = tf.matmul(h, head.kernel) + head.bias if softmax_dense else h
        p = proba.numpy()
        cls = np.argmax(p, axis=1) if c is None else np.broadcast_to(np.asarray(c, dtype=np.int64), (len(p),))
        score = tf.reduce_sum(tf.gather(logits, tf.constant(cls, dtype=tf.int32), axis=1, batch_dims=1))
    g = tape.gradient(score, A).numpy()
    A = A.numpy()
    out = []
    for i in range(len(p)):
        alpha = g[i].mean(axis=(0, 1))
        cam = np.maximum(A[i] @ alpha, 0.0)
        out.append({"cam": cam.astype(np.float64), "class": int(cls[i]), "proba": p[i].astype(np.float64),
                    "layer": name})
    return out


# --------------------------------------------------------------------------- occlusion
def occlusion_map(proba_fn, image: np.ndarray, c: int | None = None, patch: int | None = None,
                  stride: int | None = None, fill=None, batch: int = 64) -> dict:
    """Occlusion sensitivity (Zeiler & Fergus 2014) of one image.

    ``proba_fn(images) -> (n, n_classes)`` is any image classifier. A ``patch x patch``
    square of ``fill`` (default the image's mean, a grey) slides with ``stride``
    (defaults: a quarter and an eighth of the shorter side); each pixel's value is the mean
    drop ``p_c(image) - p_c(occluded)`` over the patches covering it. Returns ``{"map":
    (h, w), "class", "p", "patch", "stride", "n"}`` (``n`` occluded copies scored).
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    side = min(h, w)
    patch = int(patch or max(2, round(side / 4)))
    stride = int(stride or max(1, round(side / 8)))
    base = np.asarray(proba_fn([img]))[0]
    c = int(np.argmax(base)) if c is None else int(c)
    if fill is None:
        fill = img.reshape(h, w, -1).mean(axis=(0, 1)).reshape(img.shape[2:] if img.ndim == 3 else ())
    ys = list(range(0, max(1, h - patch) + 1, stride))
    xs = list(range(0, max(1, w - patch) + 1, stride))
    if ys[-1] + patch < h:
        ys.append(h - patch)
    if xs[-1] + patch < w:
        xs.append(w - patch)
    boxes = [(y, x) for y in ys for x in xs]
    drops = np.zeros(len(boxes))
    for s in range(0, len(boxes), batch):
        chunk = []
        for y, x in boxes[s:s + batch]:
            o = img.copy()
            o[y:y + patch, x:x + patch] = np.asarray(fill, dtype=img.dtype) if img.dtype.kind in "ui" \
                else fill
            chunk.append(o)
        p = np.asarray(proba_fn(chunk))[:, c]
        drops[s:s + len(chunk)] = base[c] - p
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for (y, x), d in zip(boxes, drops):
        total[y:y + patch, x:x + patch] += d
        count[y:y + patch, x:x + patch] += 1
    return {"map": total / np.maximum(count, 1), "class": c, "p": float(base[c]), "patch": patch,
            "stride": stride, "n": len(boxes)}


# --------------------------------------------------------------------------- filters
def first_conv(model) -> tuple[np.ndarray, str] | None:
    """``(kernel (kh, kw, in, out), layer name)`` of the first full convolution of a Keras
    model (nested models searched in order; depthwise convolutions skipped), or None."""
    import keras

    def walk(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                found = walk(layer)
                if found is not None:
                    return found
            elif isinstance(layer, keras.layers.Conv2D) and \
                    not isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
                return np.asarray(keras.ops.convert_to_numpy(layer.kernel)), layer.name
        return None
    return walk(model)

"""The ``cnn`` extractor's compiled call on the JAX backend (``KERAS_BACKEND=jax``).

Keras' generic route (``model.predict_on_batch``) re-enters Keras' machinery on every
batch and keeps BatchNorm as separate ops. Here instead:

1. :func:`fold_batchnorm` rewrites the Keras model once, *on its weights*: every
   ``BatchNormalization`` whose only input is a ``Conv2D`` / ``DepthwiseConv2D`` (with a
   linear activation, consumed by nothing else) is merged into that convolution
   (``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``)
   and replaced by an identity. This is plain Keras (``keras.models.clone_model`` and
   NumPy), so it works on any backend and the fast tests check it on TensorFlow;
2. :func:`compile_jax_forward` ``jax.jit``-compiles the *stateless* forward pass of the
   folded model, ``uint8 batch -> cast -> preprocess_input -> model``, for one fixed
   batch shape: batches are cut to that size and the last one is padded with zeros
   (its padded rows are dropped), so XLA compiles exactly once.

JAX and Keras are imported inside the functions only.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

_CONVS = ("Conv2D", "DepthwiseConv2D")


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history[0]


def _consumers(model) -> dict:
    """``{id(layer): [layers that take one of its outputs]}`` over the model's graph (a model
    output counts as a consumer, ``None``)."""
    out: dict = {}
    for t in model.outputs:
        src = _producer(t)
        if src is not None:
            out.setdefault(id(src), []).append(None)
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for t in node.input_tensors:
                src = _producer(t)
                if src is not None:
                    out.setdefault(id(src), []).append(layer)
    return out


def foldable_pairs(model) -> dict:
    """``{bn layer name: conv layer}`` for the BatchNorms :func:`fold_batchnorm` merges."""
    import keras
    consumers = _consumers(model)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        node = layer._inbound_nodes[0]
        if len(node.input_tensors) != 1:
            continue
        conv = _producer(node.input_tensors[0])
        if type(conv).__name__ not in _CONVS or len(conv._inbound_nodes) != 1:
            continue
        if len(consumers.get(id(conv), [])) != 1 or conv.get_config().get("activation") != "linear":
            continue
        if layer.axis not in (-1, 3) and list(np.atleast_1d(layer.axis)) not in ([-1], [3]):
            continue
        pairs[layer.name] = conv
    return pairs


def _folded_weights(conv, bn) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``conv`` followed by ``bn`` (inference statistics)."""
    kernel = np.asarray(conv.kernel, dtype=np.float64)
    n_out = int(bn.moving_mean.shape[0])
    bias = np.asarray(conv.bias, dtype=np.float64) if conv.use_bias else np.zeros(n_out)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else np.ones(n_out)
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else np.zeros(n_out)
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    scale = gamma / np.sqrt(var + bn.epsilon)
    if type(conv).__name__ == "DepthwiseConv2D":  # kernel (kh, kw, cin, mult): out = cin * mult
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:  # (kh, kw, cin, cout)
        kernel = kernel * scale
    return kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


def _identity_layer(name: str):
    """A pass-through layer that accepts BatchNorm's call arguments (``training``, ``mask``)."""
    import keras

    class FoldedBatchNorm(keras.layers.Layer):
        def call(self, inputs, training=None, mask=None):
            return inputs

        def compute_output_shape(self, input_shape):
            return input_shape
    return FoldedBatchNorm(name=name)


def fold_batchnorm(model):
    """A new Keras model equal to ``model`` at inference, with conv + BatchNorm merged.

    Returns ``(folded_model, n_folded)``. Layers that are not folded are shared with
    ``model`` (no copy of their weights).
    """
    import keras
    pairs = foldable_pairs(model)
    convs = {id(c): bn_name for bn_name, c in pairs.items()}
    new_convs: dict = {}

    def clone(layer):
        if layer.name in pairs:
            return _identity_layer(layer.name)
        if id(layer) in convs:
            config = dict(layer.get_config(), use_bias=True)
            new = type(layer).from_config(config)
            new_convs[convs[id(layer)]] = new
            return new
        return layer
    folded = keras.models.clone_model(model, clone_function=clone)
    for bn_name, new in new_convs.items():
        kernel, bias = _folded_weights(pairs[bn_name], model.get_layer(bn_name))
        new.set_weights([kernel, bias])
    log.debug("folded %d BatchNorm layers of %s into their convolutions", len(new_convs), model.name)
    return folded, len(new_convs)


def compile_jax_forward(model, input_hw, preprocess: Callable | None = None,
                        batch_size: int = 32, fold: bool = True) -> tuple[Callable, str]:
    """``fn(uint8 RGB batch NHWC) -> float32 (n, d)``: a ``jax.jit`` of the stateless call.

    ``preprocess`` (the backbone's ``preprocess_input``) runs inside the compiled call;
    ``fold`` merges BatchNorm into the convolutions first (:func:`fold_batchnorm`). Every
    call runs batches of exactly ``batch_size`` images (the last one zero-padded).
    """
    import jax
    import jax.numpy as jnp
    n_folded = 0
    if fold:
        model, n_folded = fold_batchnorm(model)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    h, w, bs = int(input_hw[0]), int(input_hw[1]), max(1, int(batch_size))

    @jax.jit
    def infer(tv, ntv, x):
        x = x.astype(jnp.float32)
        if preprocess is not None:
            x = preprocess(x)
        y, _ = model.stateless_call(tv, ntv, x, training=False)
        return y.astype(jnp.float32)

    def forward(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.uint8)
        if batch.shape[1:] != (h, w, 3):
            raise ValueError(f"expected (n, {h}, {w}, 3) images, got {batch.shape}")
        outs = []
        for i in range(0, len(batch), bs):
            part = batch[i:i + bs]
            if len(part) < bs:
                part = np.concatenate([part, np.zeros((bs - len(part), h, w, 3), np.uint8)])
            outs.append(np.asarray(infer(trainable, non_trainable, part))[:len(batch) - i])
        if not outs:
            return np.zeros((0, int(model.output.shape[-1])), np.float32)
        return np.concatenate(outs) if len(outs) > 1 else outs[0]
    how = f"jax.jit (stateless, batch {bs}, {n_folded} BatchNorm folded)"
    return forward, how

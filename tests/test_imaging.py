"""Issue 11: one path from image to network input. The ``cnn`` feature and fine-tuning /
transfer / scratch give the same pixels for the same image and size."""
from __future__ import annotations

import numpy as np
import pytest

from bench import finetune
from bench.features.deep import CNNFeatures
from bench.imaging import network_input


class _Data:
    def __init__(self, images, modality):
        self.images, self.modality = images, modality

    def load(self, i):
        return self.images[i]


def _images():
    rng = np.random.default_rng(0)
    depth = rng.uniform(400, 900, (150, 170))
    depth[:20, :30] = 0  # missing
    return {"rgb-mild-shrink": (rng.random((300, 260, 3)) * 255).astype(np.uint8),   # < 2x: bilinear
            "rgb-big-shrink": (rng.random((500, 480, 3)) * 255).astype(np.uint8),    # >= 2x: area
            "gray-upscale": (rng.random((60, 90)) * 255).astype(np.uint8),
            "uint16": (rng.random((240, 250)) * 65535).astype(np.uint16),
            "float01": rng.random((200, 200)),
            "depth": depth}


@pytest.mark.parametrize("name", list(_images()))
def test_cnn_feature_and_finetune_see_the_same_pixels(name):
    img = _images()[name]
    size = 128
    cnn = CNNFeatures(input_size=size)
    via_feature = cnn._prepare_one(img, (size, size), cnn._depth_range(), 32)
    modality = "depth" if name == "depth" else "rgb"
    via_finetune = finetune.prepare_images(_Data([img], modality), [0], size, 3, "minmax")[0]
    assert via_feature.dtype == np.uint8 and via_feature.shape == (size, size, 3)
    assert via_finetune.dtype == np.float32 and via_finetune.shape == (size, size, 3)
    np.testing.assert_array_equal(via_finetune, via_feature.astype(np.float32))
    np.testing.assert_array_equal(via_feature, network_input(img, (size, size)))


def test_network_input_reference_rules():
    import cv2
    img = _images()["rgb-mild-shrink"]
    np.testing.assert_array_equal(network_input(img, (224, 200)),
                                  cv2.resize(img, (200, 224), interpolation=cv2.INTER_LINEAR))
    big = _images()["rgb-big-shrink"]
    np.testing.assert_array_equal(network_input(big, (100, 100)),
                                  cv2.resize(big, (100, 100), interpolation=cv2.INTER_AREA))
    gray = network_input(img, (64, 64), channels=1)
    assert gray.shape == (64, 64, 1)
    ref = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(gray[..., 0], ref)
    d = network_input(_images()["depth"], (150, 170))  # same size: no resize, 0 kept as missing
    assert (d[:20, :30] == 0).all() and d[20:].min() >= 1 and (d[..., 0] == d[..., 2]).all()

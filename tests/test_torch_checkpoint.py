"""The tensor-only PyTorch checkpoint reader (bench.torch_checkpoint).

Reference: small checkpoints written by ``torch.save`` itself in both formats, with the
tensors PyTorch gave as NumPy arrays (``scripts/make_lite_reference.py``). Safety:
crafted pickles whose payload would run a shell command are refused and the command
does not run (a plain ``pickle.loads`` of the same payload does run it, so the test
can fail).
"""
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from bench import torch_checkpoint as tc
from bench.errors import WeightsError

DATA = Path(__file__).resolve().parent / "data" / "torch_checkpoints"


@pytest.mark.parametrize("name", ["tiny_legacy.pth", "tiny_zip.pth"])
def test_reads_what_pytorch_wrote(name):
    expected = np.load(DATA / "tiny_expected.npz")
    sd = tc.load_state_dict(DATA / name)
    assert list(sd) == list(expected.files)
    for k in expected.files:
        assert sd[k].dtype == expected[k].dtype and sd[k].shape == expected[k].shape, k
        np.testing.assert_array_equal(sd[k], expected[k], err_msg=k)
    # views of one storage (a transpose, an offset slice) come back as independent copies
    np.testing.assert_array_equal(sd["transposed"], sd["base"].T)
    np.testing.assert_array_equal(sd["slice"], sd["base"][1:3, 2:5])
    assert not np.shares_memory(sd["transposed"], sd["base"])
    assert sd["bn.num_batches_tracked"].shape == () and int(sd["bn.num_batches_tracked"]) == 12345678901


def test_reads_the_packaged_efficientnet_lite0_checkpoint():
    from bench import weights
    from bench.features.backbones import get_backbone
    path, version = weights.packaged_checkpoint(get_backbone("efficientnet_lite0"))
    sd = tc.load_state_dict(path)
    assert len(sd) == 296 and version
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_fc.weight"].shape == (1000, 1280)
    assert sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 4_694_024
    assert all(np.isfinite(v).all() for v in sd.values())


# --------------------------------------------------------------------------- refusal
class _Shell:
    """Pickles to ``os.system(command)``: what a malicious checkpoint would carry."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _legacy_file(path: Path, main: bytes, keys: bytes | None = None) -> Path:
    blob = (pickle.dumps(tc.LEGACY_MAGIC, protocol=2) + pickle.dumps(tc.LEGACY_PROTOCOL, protocol=2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
            + main + (keys if keys is not None else pickle.dumps([], protocol=2)))
    path.write_bytes(blob)
    return path


def _zip_file(path: Path, main: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", main)
        zf.writestr("evil/byteorder", "little")
    return path


def test_plain_pickle_would_run_the_payload(tmp_path):
    """Sanity: the crafted payload is live (so the refusal tests below can fail)."""
    sentinel = tmp_path / "ran"
    pickle.loads(pickle.dumps(OrderedDict(w=_Shell(f"touch {sentinel}")), protocol=2))
    assert sentinel.exists()


@pytest.mark.parametrize("container", ["legacy", "zip", "legacy-keys"])
def test_a_checkpoint_calling_os_system_is_refused_without_running(tmp_path, container):
    sentinel = tmp_path / "ran"
    evil = pickle.dumps(OrderedDict(weight=_Shell(f"touch {sentinel}")), protocol=2)
    path = tmp_path / "model.pth"
    if container == "legacy":
        _legacy_file(path, evil)
    elif container == "zip":
        _zip_file(path, evil)
    else:  # the payload hides in the storage-key list that follows the state dict
        _legacy_file(path, pickle.dumps(OrderedDict(), protocol=2), keys=pickle.dumps([_Shell(
            f"touch {sentinel}")], protocol=2))
    with pytest.raises(WeightsError) as info:
        tc.load_state_dict(path)
    msg = str(info.value.message)
    assert str(path) in msg and ".system" in msg and "refused" in msg
    assert "trusted source" in info.value.hint
    assert not sentinel.exists(), "the payload ran"


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("torch._utils", "_rebuild_parameter"),
                                         ("numpy.core.multiarray", "_reconstruct"), ("torch", "load"),
                                         ("collections", "defaultdict")])
def test_every_other_global_is_refused(tmp_path, module, name):
    main = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."   # GLOBAL, empty tuple, REDUCE
    path = _legacy_file(tmp_path / "m.pth", main)
    with pytest.raises(WeightsError, match=f"{module}.{name}"):
        tc.load(path)


def test_damaged_files_are_clear_errors(tmp_path):
    good = (DATA / "tiny_legacy.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good[: len(good) - 40])
    with pytest.raises(WeightsError, match="truncated|ends"):
        tc.load_state_dict(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match=str(junk)):
        tc.load_state_dict(junk)
    with pytest.raises(WeightsError, match="cannot read"):
        tc.load_state_dict(tmp_path / "missing.pth")
    not_dict = tmp_path / "list.pth"
    _legacy_file(not_dict, pickle.dumps([1, 2], protocol=2))
    with pytest.raises(WeightsError, match="not a state dict"):
        tc.load_state_dict(not_dict)


def test_unexpected_persistent_ids_are_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module", "os") if obj == "x" else None
    buf = io.BytesIO()
    P(buf, protocol=2).dump(OrderedDict(a="x"))
    with pytest.raises(WeightsError, match="persistent id"):
        tc.load(_legacy_file(tmp_path / "p.pth", buf.getvalue()))

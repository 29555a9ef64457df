"""Property test of the folder loader: random trees of random files (valid images,
truncated images, random bytes, odd names), random options. Building the dataset and
loading every image either works or raises the project's own error types: nothing
else escapes."""
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.data.folder import folder_dataset
from bench.errors import BenchError


def _png(seed: int, mode: str) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((6, 5, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG" if mode != "P" else "GIF")
    return buf.getvalue()


def _npy(seed: int, kind: str) -> bytes:
    rng = np.random.default_rng(seed)
    arr = {"float": rng.random((4, 4)).astype(np.float32) * 900,
           "nan": np.full((3, 3), np.nan, dtype=np.float32),
           "int3d": (rng.random((4, 4, 3)) * 9).astype(np.int16),
           "4d": np.zeros((2, 2, 2, 2)),
           "obj": np.array([{"a": 1}], dtype=object)}[kind]
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


content = st.one_of(
    st.builds(_png, st.integers(0, 99), st.sampled_from(["RGB", "L"])),   # weight towards valid
    st.builds(_png, st.integers(0, 99), st.sampled_from(["RGB", "L", "RGBA", "P", "I;16"])),
    st.builds(lambda s, m, k: _png(s, m)[:k], st.integers(0, 99), st.sampled_from(["RGB", "L"]),
              st.integers(0, 60)),                                   # truncated
    st.binary(max_size=64),                                          # garbage / empty
    st.builds(_npy, st.integers(0, 9), st.sampled_from(["float", "nan", "int3d", "4d", "obj"])),
)
names = st.text(alphabet="ab1_-. é", min_size=1, max_size=6)
exts = st.sampled_from([".png"] * 3 + [".jpg", ".gif", ".tif", ".bmp", ".npy", ".txt", ""])
tree = st.dictionaries(st.text(alphabet="xyz_ .", min_size=1, max_size=4),
                       st.lists(st.tuples(names, exts, content), min_size=1, max_size=4),
                       min_size=2, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=tree,
       pattern=st.sampled_from([None] * 6 + [r"^(\d+)_", r"(", r"a", r".*", r"^(b)?"]),
       on_bad=st.sampled_from(["skip"] * 4 + ["error"] * 3 + ["bogus"]),
       max_per_class=st.sampled_from([None] * 6 + [-1, 0, 1, 3, "two"]),
       color=st.sampled_from(["auto"] * 5 + ["gray", "rgb", "cmyk"]))
def test_folder_loader_raises_only_bench_errors(tree, pattern, on_bad, max_per_class, color):
    root = Path(tempfile.mkdtemp(prefix="bench-prop-"))
    try:
        for cls, files in tree.items():
            d = root / cls
            if cls in (".", "..") or cls.strip() == "":
                continue
            d.mkdir(parents=True, exist_ok=True)
            for name, ext, data in files:
                if name in (".", ".."):
                    continue
                (d / f"{name}{ext}").write_bytes(data)
        try:
            ds = folder_dataset(root, group_pattern=pattern, on_bad_image=on_bad,
                                max_per_class=max_per_class, color=color)
            event("dataset built")
            for i in range(len(ds)):
                img = ds.load(i)
                assert img.ndim in (2, 3)
            event("every image loaded")
        except BenchError as exc:
            event(type(exc).__name__)
    finally:
        shutil.rmtree(root, ignore_errors=True)

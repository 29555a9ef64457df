"""A corpus of bad inputs, each producing its documented behaviour (docs/ROBUSTNESS.md)
through the whole engine, not only the loader."""
import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import engine, records
from bench.config import load_config
from bench.errors import DataError, ResultsError

PLUGIN = str(Path(__file__).parent / "plugin_toy.py")


def _cfg(tmp_path, data, *extra):
    return load_config(None, [
        f"plugins=[{PLUGIN}]", "dataset.kind=folder", f"dataset.path={data}",
        "features=[column_profile]", "classifiers=[logreg]", "protocol.n_splits=2",
        "prepare={color: gray, size: [16, 16]}", f"output.results_dir={tmp_path / 'res'}",
        f"cache.dir={tmp_path / 'cache'}", "report.tsne=false", "report.learning_curves=false",
        "report.gallery=0", "report.retrieval=false", "parallel.n_jobs=1", *extra])


def _img(seed, size=(16, 16)):
    return (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)


@pytest.fixture
def corpus(tmp_path):
    """Two classes in every awkward format that must work."""
    root = tmp_path / "data"
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    Image.fromarray(_img(1)).save(a / "gray.png")
    Image.fromarray((_img(2).astype(np.uint16) * 257)).save(a / "deep16.tif")
    Image.fromarray(_img(3).astype(np.float32) / 255).save(a / "float.tif")
    rgba = np.dstack([_img(4), _img(5), _img(6), _img(7)])
    Image.fromarray(rgba, "RGBA").save(a / "rgba.png")
    Image.fromarray(_img(8, (30, 22))).save(b / "bigger.bmp")
    Image.fromarray(np.dstack([_img(9)] * 3)).convert("P").save(b / "palette.gif")
    Image.fromarray(_img(10)).save(b / "plain.jpg")
    Image.fromarray(_img(11)).save(b / "plain2.png")
    return root


def test_awkward_formats_and_sizes_run(tmp_path, corpus):
    rs = engine.run(_cfg(tmp_path, corpus)).records()
    assert len(rs) == 2 and all(r["status"] == "ok" for r in rs)


def test_corrupt_and_empty_files_error_or_skip(tmp_path, corpus):
    (corpus / "a" / "truncated.png").write_bytes((corpus / "a" / "gray.png").read_bytes()[:40])
    (corpus / "b" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as e:
        engine.run(_cfg(tmp_path, corpus))
    assert "truncated.png" in e.value.message and "empty.png" in e.value.message
    ctx = engine.run(_cfg(tmp_path, corpus, "on_bad_image=skip"))
    assert all(r["status"] == "ok" for r in ctx.records())
    bad = json.loads((ctx.run_dir / "dataset.json").read_text())["bad_images"]
    assert {Path(p).name for p, _ in bad} == {"truncated.png", "empty.png"}


def test_class_with_one_image(tmp_path, corpus):
    for f in list((corpus / "b").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match="fewer images") as e:
        engine.run(_cfg(tmp_path, corpus, "protocol.n_splits=3"))
    assert "b (1)" in e.value.message


def test_same_image_in_two_classes_is_warned(tmp_path, corpus, caplog):
    (corpus / "b" / "copy.png").write_bytes((corpus / "a" / "gray.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="bench"):
        ctx = engine.run(_cfg(tmp_path, corpus))
    assert any("identical content in two classes" in r.message and "copy.png" in r.message
               for r in caplog.records)
    assert len(ctx.records()) == 2


def test_unwritable_results_folder(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ResultsError, match="cannot write to the results folder"):
        engine.run(_cfg(tmp_path, corpus, f"output.results_dir={blocker}"))


def test_disk_full_keeps_finished_records(tmp_path, corpus, monkeypatch):
    cfg = _cfg(tmp_path, corpus, "classifiers=[logreg,knn]", "protocol.n_splits=3")
    from bench import runfolder
    real = runfolder._append_line
    calls = {"n": 0}

    def flaky(path, line):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, line)

    monkeypatch.setattr(runfolder, "_append_line", flaky)
    with pytest.raises(ResultsError, match="No space left") as e:
        engine.run(cfg)
    assert "resumes" in e.value.hint
    monkeypatch.setattr(runfolder, "_append_line", real)
    ctx = engine.run(cfg)
    rs = ctx.records()
    assert len(rs) == 6 and all(r["status"] == "ok" for r in rs)

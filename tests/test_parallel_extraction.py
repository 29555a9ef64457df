"""Parallel hand-crafted extraction (issue 16): one pass, workers decode their own files.

* ``n_jobs=2`` gives the same matrices (bitwise) and records as ``n_jobs=1`` through
  ``bench run`` on a folder of PNG files, and both equal each extractor applied alone;
* the cache keys are those of one feature at a time;
* one pool per run: the workers that extract are the ones that fit the cells;
* the parent never decodes an image of a parallel-safe feature (a spy on the decoder in
  this process; the workers are other processes);
* the chunk size follows the measured per-image cost (no timing asserted).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bench import engine, extraction, parallel
from bench.cache import make_key
from bench.config import load_config
from bench.extraction import choose_chunk_size
from run_helpers import PLUGIN, read_spy_log

FEATURES = "[hog, lbp, glcm, granulometry, color_hist]"


def _png_tree(root: Path, n_per_class: int = 9, size: int = 40) -> Path:
    import cv2
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("a", "b", "c")):
        (root / cls).mkdir(parents=True)
        for k in range(n_per_class):
            img = cv2.GaussianBlur(rng.normal(0, 60, (size, size, 3)).astype(np.float32), (0, 0), 1.0 + c)
            img += 80 * c + 40
            cv2.imwrite(str(root / cls / f"img{k:02d}.png"), np.clip(img, 0, 255).astype(np.uint8))
    return root


def _cfg(tmp_path, images, *extra):
    return load_config(None, [
        "dataset.kind=folder", f"dataset.path={images}", f"features={FEATURES}", "classifiers=[logreg]",
        "protocol.n_splits=3", f"output.results_dir={tmp_path / 'results'}",
        f"output.reports_dir={tmp_path / 'reports'}", "report.tsne=false", "report.learning_curves=false",
        "report.gallery=0", "report.retrieval=false", "report.explain=false",
        f"cache.dir={tmp_path / 'cache'}", "output.formats=[]", "output.run_id=x", *extra])


def _strip(rs):
    drop = ("time", "fit_s", "predict_s", "extract_ms_per_image", "run_id")
    return sorted(({k: v for k, v in r.items() if k not in drop} for r in rs), key=lambda r: r["cell_id"])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _png_tree(tmp_path_factory.mktemp("png") / "images")


def test_two_workers_equal_one_bitwise_and_each_extractor_alone(tmp_path, images):
    one = engine.run(_cfg(tmp_path / "one", images, "parallel.n_jobs=1"))
    two = engine.run(_cfg(tmp_path / "two", images, "parallel.n_jobs=2"))
    small = engine.run(_cfg(tmp_path / "small", images, "parallel.n_jobs=2", "parallel.chunk_size=2"))
    assert _strip(one.records()) == _strip(two.records()) == _strip(small.records())
    assert len(one.records()) == 5 * 3 and all(r["status"] == "ok" for r in one.records())
    ds = one.dataset
    for label, f in one.features.items():
        a, b, c = (np.asarray(ctx.per_image(label)) for ctx in (one, two, small))
        assert a.dtype == np.float32 and a.shape[0] == len(ds)
        alone = np.asarray(f.stage.transform([f.prepare(ds.load(i)) for i in range(len(ds))]), np.float32)
        for X in (b, c, alone):  # bitwise: the same float32 bits, not merely close
            assert np.array_equal(a.view(np.uint32), X.view(np.uint32)), label
        # the cache key is the one of a feature extracted alone
        key = make_key(ds.fingerprint(), f.stage.cache_key(), f.prepare.key())
        assert (tmp_path / "two" / "cache" / "features" / f"{key}.npy").exists(), label


def test_one_pool_serves_extraction_and_cells(tmp_path, images):
    spy = tmp_path / "spy"
    cfg = _cfg(tmp_path, images, f"plugins=[{PLUGIN}]", "features=[spy_pid, lbp]", "parallel.n_jobs=2",
               f"classifiers=[{{name: spy_logreg, params: {{log_dir: {spy}}}}}]", "parallel.chunk_size=3")
    ctx = engine.run(cfg)
    extract_pids = {int(p) for p in np.asarray(ctx.per_image("spy_pid"))[:, 0]}
    cell_pids = {e["pid"] for e in read_spy_log(spy) if e["event"] == "fit"}
    start_pids = set(parallel.last_startup["pids"])
    assert os.getpid() not in extract_pids | cell_pids
    assert len(cell_pids) >= 1 and len(extract_pids) >= 1
    # two workers in all: a second pool (for the cells, or per feature) would bring new processes
    assert len(extract_pids | cell_pids | start_pids) <= 2, (extract_pids, cell_pids, start_pids)
    assert not parallel.last_startup["tensorflow"]


def test_the_parent_never_decodes_for_parallel_safe_features(tmp_path, images, monkeypatch):
    from bench.data import folder
    calls = {"in_extract": False, "decoded": 0}
    real_decode, real_extract = folder.decode_image, engine.extract_features

    def spy_decode(*a, **k):
        calls["decoded"] += calls["in_extract"]
        return real_decode(*a, **k)

    def spy_extract(*a, **k):
        calls["in_extract"] = True
        try:
            return real_extract(*a, **k)
        finally:
            calls["in_extract"] = False

    monkeypatch.setattr(folder, "decode_image", spy_decode)
    monkeypatch.setattr(engine, "extract_features", spy_extract)
    ctx = engine.run(_cfg(tmp_path / "two", images, "parallel.n_jobs=2"))
    assert len(ctx.matrices) == 5 and calls["decoded"] == 0
    # the spy does see this process decode: with one worker the parent is the worker
    engine.run(_cfg(tmp_path / "one", images, "parallel.n_jobs=1"))
    assert calls["decoded"] == len(ctx.dataset)  # once per image for the five features, not five times


def test_a_failing_extractor_fails_only_its_feature(tmp_path, images):
    """It fails in a later task (the bright class comes last), after its first rows were kept."""
    cfg = _cfg(tmp_path, images, f"plugins=[{PLUGIN}]", "parallel.n_jobs=2", "parallel.chunk_size=3",
               "features=[lbp, fails_on_bright, hog]")
    ctx = engine.run(cfg)
    status = {}
    for r in ctx.records():
        status.setdefault(r["feature"], set()).add(r["status"])
    assert status == {"lbp": {"ok"}, "fails_on_bright": {"failed"}, "hog": {"ok"}}
    errors = {r["error"] for r in ctx.records() if r["feature"] == "fails_on_bright"}
    assert len(errors) == 1 and errors.pop().startswith("extraction: RuntimeError: bright image")
    assert set(ctx.matrices) == {"lbp", "hog"}
    assert not list((tmp_path / "cache" / "features").glob("*.tmp*"))  # its stream was removed


def test_chunk_size_follows_the_cost():
    # about 0.3 s of work per task
    assert choose_chunk_size(0.01, 100_000, 1) == 30
    assert choose_chunk_size(0.001, 100_000, 2) == 300
    assert choose_chunk_size(0.5, 1000, 2) == 1            # slower than a task: one image each
    assert choose_chunk_size(1e-6, 10**9, 1) == extraction.MAX_CHUNK
    # at least 4 tasks per worker: 100 images, 2 workers -> at most 13 per task
    assert choose_chunk_size(0.001, 100, 2) == 13
    assert choose_chunk_size(0.001, 100, 1) == 100
    assert choose_chunk_size(0.0, 5, 2) == 1


def test_auto_chunks_come_from_the_first_tasks(images, monkeypatch):
    from bench.components import load_components
    from bench.imaging import Prepare
    from bench.registry import DATASETS
    from bench.registry import FEATURES as REG
    load_components()
    ds = DATASETS.create("folder", path=str(images))
    stage, _ = REG.create("lbp").stages()
    seen = []

    def chooser(cost_s, n_left, workers, **kw):
        seen.append((cost_s, n_left, workers))
        return 7

    monkeypatch.setattr(extraction, "choose_chunk_size", chooser)
    X, _ = extraction.compute_per_image(stage, ds, Prepare(), n_jobs=1, chunk_size="auto")
    assert X.shape[0] == len(ds) == 27
    # after the probe (4 images), each task is sized from the costs measured so far
    assert [n_left for _, n_left, _ in seen] == [23, 16, 9, 2]
    assert all(cost > 0 and workers == 1 for cost, _, workers in seen)
    assert extraction.last_pass["chunk_size"] == 7 and extraction.last_pass["tasks"] == 1 + 4
    seen.clear()
    extraction.compute_per_image(stage, ds, Prepare(), n_jobs=1, chunk_size=5)
    assert not seen  # an explicit chunk_size is not chosen
    assert extraction.last_pass["chunk_size"] == 5 and extraction.last_pass["tasks"] == -(-len(ds) // 5)


def test_scaling_model_and_its_notes_section():
    from bench import perf
    one = {"total_s": 100.0, "dataset_s": 3.0, "check_s": 0.0, "pass": {"wall_s": 96.0}}
    two = {"total_s": 55.0, "dataset_s": 6.0, "check_s": 0.5,
           "pass": {"wall_s": 48.0, "parent_cpu_s": 1.0, "workers": 2, "task_s": 96.0, "task_cpu_s": 48.0},
           "startup": {"import_cpu_s": 2.5, "wait_s": 0.0}}
    m = perf.scaling_model(one, two)
    # serial: 3 (parent start-up) + 1 ((3 + 2 x 2.5) / 2 - 3) + 1 (parent in pass) + 0.5 (store) + 0.5 (check)
    assert m["serial"] == {"dataset_s": 3.0, "pool_start_s": 1.0, "parent_in_pass_s": 1.0, "store_s": 0.5,
                           "check_s": 0.5}
    assert m["serial_s"] == pytest.approx(6.0) and m["fraction"] == pytest.approx(6 / 102)
    assert m["predicted"][8] == pytest.approx(100 / (6 + 12))
    assert m["worker_busy_share"] == pytest.approx(1.0) and m["worker_cpu_share"] == pytest.approx(0.5)
    row = {"scaling": m, "n_images": 2000, "ratio": 100 / 55}
    block = perf._scaling_block(row, "STAMP", "CMD")
    notes = perf._with_scaling("\n<!-- notes -->\n## Notes\n\n* hand-written\n", block)
    again = perf._with_scaling(notes, block.replace("STAMP", "LATER"))
    assert notes.count("## Scaling model") == again.count("## Scaling model") == 1
    assert "LATER" in again and "STAMP" not in again and "* hand-written" in again

"""The engine end to end on a plugin dataset and feature: records, resume, groups, failures."""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import engine, records
from bench.errors import ConfigError, DataError, PluginError
from bench.plugins import load_plugins

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import read_spy_log, record_lines, toy_config  # noqa: E402


def _cfg(tmp_path, *extra):
    return toy_config(tmp_path, "classifiers=[logreg,knn]", *extra, n_splits=4)


def test_plugin_feature_runs_end_to_end(tmp_path):
    ctx = engine.run(_cfg(tmp_path))
    rs = ctx.records()
    assert len(rs) == 1 * 2 * 4
    assert all(r["status"] == "ok" for r in rs)
    assert {r["classifier"] for r in rs} == {"logreg", "knn"}
    # the plugin feature separates the toy classes
    assert np.mean([r["accuracy"] for r in rs]) > 0.9
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    assert len(plan["folds"]) == 4 and not plan["grouped"]
    for f in plan["folds"]:
        assert not set(f["train"]) & set(f["test"])
    for r in rs:
        p = records.load_predictions(ctx.run_dir, r["cell_id"])
        assert p is not None and len(p["y_pred"]) == r["n_test"]
        np.testing.assert_allclose(p["proba"].sum(axis=1), 1, atol=1e-5)
    assert (ctx.run_dir / "config.yaml").exists() and (ctx.run_dir / "env.json").exists()


def test_rerun_resumes_without_recomputing_finished_cells(tmp_path):
    """A killed run resumes: finished cells are neither refitted nor rewritten."""
    spy = tmp_path / "spy"
    cfg = _cfg(tmp_path, f"classifiers=[{{name: spy_logreg, params: {{log_dir: {spy}}}}}, knn]")
    ctx = engine.run(cfg)
    path = ctx.run_dir / "records.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 8 and len(read_spy_log(spy)) == 4        # 4 spy_logreg cells, one fit each
    # simulate a kill: lose the last 5 records (one spy_logreg cell), the first of them half written
    kept = b"".join(lines[:-5])
    torn = lines[-5][: len(lines[-5]) // 2]
    path.write_bytes(kept + torn)
    lost = {json.loads(l)["cell_id"] for l in lines[-5:]}
    preds = sorted((ctx.run_dir / "predictions").glob("*.npz"))
    old = 1_000_000_000 * 10**9                                  # 2001: any rewrite changes the mtime
    for p in preds:
        os.utime(p, ns=(old, old))
    kept_ids = {json.loads(l)["cell_id"] for l in lines[:-5]}
    shutil.rmtree(spy)

    ctx2 = engine.run(cfg)
    data = path.read_bytes()
    assert data.startswith(kept + torn + b"\n")                 # finished lines byte for byte, the torn
    after = record_lines(ctx2.run_dir)                            # line left behind; no cell twice
    assert set(after) == kept_ids | lost and len(after) == len(lines)
    assert sum(c.startswith("column_profile__spy_logreg") for c in lost) == 1
    assert len(read_spy_log(spy)) == 1                            # only the lost spy cell was fitted
    for p in preds:
        if p.stem in kept_ids:
            assert p.stat().st_mtime_ns == old, f"{p.name} of a finished cell was rewritten"
        else:
            assert p.stat().st_mtime_ns != old
    for cid in lost:                                              # the redone cells are complete
        r = json.loads(after[cid])
        assert r["status"] == "ok" and records.load_predictions(ctx2.run_dir, cid) is not None

    shutil.rmtree(spy)
    engine.run(cfg)                                               # all done: nothing recomputed
    assert path.read_bytes() == data and not read_spy_log(spy)
    assert all(p.stat().st_mtime_ns == old for p in preds if p.stem in kept_ids)


def test_predictions_are_those_of_the_test_images(tmp_path):
    ctx = engine.run(_cfg(tmp_path))
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    labels = np.array(json.loads((ctx.run_dir / "dataset.json").read_text())["labels"])
    for r in ctx.records():
        p = records.load_predictions(ctx.run_dir, r["cell_id"])
        test = plan["folds"][r["split"]]["test"]
        np.testing.assert_array_equal(p["test_index"], test)
        np.testing.assert_array_equal(p["y_true"], labels[test])
        assert r["n_test"] == len(test) and r["n_train"] == len(plan["folds"][r["split"]]["train"])
        assert r["accuracy"] == pytest.approx(np.mean(p["y_pred"] == p["y_true"]))


def test_concat_with_a_plugin_part_in_worker_processes(tmp_path):
    """A concat of a plugin feature and a built-in one, extracted by 2 worker processes (it
    used to stop the run: the workers rebuilt the parts by name and did not know the plugin's)."""
    cfg = _cfg(tmp_path, "features=[{name: concat, label: cc, params: {parts: [column_profile, lbp]}}]",
               "parallel.n_jobs=2", "parallel.chunk_size=4")
    ctx = engine.run(cfg)
    rs = ctx.records()
    assert len(rs) == 8 and all(r["status"] == "ok" and r["n_features"] == 8 + 30 for r in rs)
    from bench.registry import DATASETS, FEATURES
    ds_images = [DATASETS.create("toy-blobs", n_per_class=8).load(i) for i in range(24)]
    direct = FEATURES.create("concat", parts=["column_profile", "lbp"]).transform(ds_images)
    np.testing.assert_allclose(np.asarray(ctx.per_image("cc")), direct, rtol=1e-6)


def test_deterministic_across_n_jobs(tmp_path):
    a = engine.run(_cfg(tmp_path / "a", "parallel.n_jobs=1", "output.run_id=x")).records()
    b = engine.run(_cfg(tmp_path / "b", "parallel.n_jobs=2", "output.run_id=x",
                        "parallel.chunk_size=3")).records()
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "fit_s", "predict_s",
                                                                 "extract_ms_per_image", "run_id")}
                        for r in sorted(rs, key=lambda r: r["cell_id"])]
    assert strip(a) == strip(b)


def test_groups_give_grouped_splits(tmp_path):
    ctx = engine.run(_cfg(tmp_path, "dataset.n_groups=6"))
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    assert plan["grouped"] and "Group" in plan["splitter"]
    groups = np.arange(24) % 6
    for f in plan["folds"]:
        assert not set(groups[f["train"]]) & set(groups[f["test"]])


def test_nan_features_fail_their_cells_only(tmp_path):
    cfg = _cfg(tmp_path, "dataset.nan_every=5", "features=[column_profile,{name: column_profile, "
               "label: coarse, params: {bins: 4}}]")
    rs = engine.run(cfg).records()
    assert {r["status"] for r in rs} == {"failed"}
    assert all("NaN" in r["error"] for r in rs)


def test_user_mistakes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown feature 'hgo'") as e:
        engine.run(_cfg(tmp_path, "features=[hgo]"))
    with pytest.raises(ConfigError, match="bins"):
        engine.run(_cfg(tmp_path, "features=[{name: column_profile, params: {binz: 3}}]"))
    with pytest.raises(DataError, match="n_splits=4"):
        engine.run(_cfg(tmp_path, "dataset.n_per_class=3"))
    with pytest.raises(DataError, match="groups"):
        engine.run(_cfg(tmp_path, "dataset.n_groups=2"))


def test_plugin_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import numpy\n\nx = 1 / 0\n")
    with pytest.raises(PluginError, match=r"broken.py line 3.*ZeroDivisionError"):
        load_plugins([str(bad)])
    syn = tmp_path / "syntax.py"
    syn.write_text("def f(:\n")
    with pytest.raises(PluginError, match="line 1"):
        load_plugins([str(syn)])
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins([str(tmp_path / "nope.py")])


def test_binary_decision_function_softmax_is_per_sample():
    z = np.array([-2.0, 0.0, 3.0])
    from bench.protocol import _softmax
    p = _softmax(z)
    assert p.shape == (3, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1)
    assert list(p.argmax(axis=1)) == [0, 0, 1] or p[1, 0] == p[1, 1]
    assert p[2, 1] > 0.9 and p[0, 0] > 0.8


def test_prepare_center_crop_and_key():
    from bench.imaging import Prepare, center_crop
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    np.testing.assert_array_equal(center_crop(img, (4, 4)), img[3:7, 3:7])
    small = center_crop(img[:3, :3], (5, 5))
    assert small.shape == (5, 5)
    np.testing.assert_array_equal(small[1:4, 1:4], img[:3, :3])
    assert Prepare(crop=(4, 4)).key() != Prepare().key()
    assert Prepare(crop=(4, 4), size=(8, 8))(img).shape == (8, 8)

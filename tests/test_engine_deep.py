"""CNN rows through ``bench.engine.run``: ``cnn`` and ``concat`` features, ``finetune:`` rows
with ``folds`` and ``tta``, and resuming them. Tiny on purpose: MobileNetV2 at 32 px with
random weights (nothing is downloaded; the isolated Keras home has no ImageNet file) and a
two-block scratch CNN trained for one epoch."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import engine
from bench.registry import DATASETS, FEATURES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_helpers import record_lines, toy_config  # noqa: E402

CNN = "{name: cnn, label: mnv2, params: {backbone: mobilenetv2, input_size: 32}}"
HYBRID = ("{name: concat, label: lbp+mnv2, params: {parts: [{name: lbp}, "
          "{name: cnn, params: {backbone: mobilenetv2, input_size: 32}}]}}")
FINETUNE = ("finetune=[{label: scratch, mode: scratch, input_size: 32, filters: [8, 16], epochs: 1, "
            "batch_size: 16, augment: light, tta: 3}, {label: scratch-f1, mode: scratch, input_size: 32, "
            "filters: [8], epochs: 1, batch_size: 16, folds: [1]}]")


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deep-run")
    cfg = toy_config(tmp, f"features=[lbp, {CNN}, {HYBRID}]", FINETUNE, "protocol.n_splits=2",
                     "dataset.n_per_class=8")
    ctx = engine.run(cfg)
    return cfg, ctx


def test_cnn_and_concat_features_through_the_engine(deep_run):
    _, ctx = deep_run
    meta = json.loads((ctx.run_dir / "features.json").read_text())
    # no ImageNet file: the rows say random-init, in the label, the records and features.json
    assert set(meta) == {"lbp", "mnv2 [random-init]", "lbp+mnv2 [random-init]"}
    cnn, hyb, lbp = meta["mnv2 [random-init]"], meta["lbp+mnv2 [random-init]"], meta["lbp"]
    assert cnn["family"] == "deep" and cnn["weights"] == "random-init" and cnn["n_features"] == 1280
    assert cnn["describe"]["backbone"] == "mobilenetv2" and cnn["params"]["input_size"] == 32
    assert hyb["family"] == "hybrid" and hyb["weights"] == "random-init" and hyb["n_features"] == 30 + 1280
    assert lbp["family"] == "handcrafted" and lbp["weights"] == "n/a" and lbp["n_features"] == 30
    assert all(m["extract_ms_per_image"] > 0 and m["cached"] is False for m in meta.values())
    # the embeddings are those of the extractor called directly (same seed for random weights)
    ds = DATASETS.create("toy-blobs", n_per_class=8)
    images = [ds.load(i) for i in range(len(ds))]
    direct = FEATURES.create("cnn", backbone="mobilenetv2", input_size=32).transform(images)
    X = np.asarray(ctx.per_image("mnv2 [random-init]"))
    assert X.shape == (24, 1280) and np.isfinite(X).all() and X.std(axis=0).max() > 0
    np.testing.assert_allclose(X, direct, rtol=1e-4, atol=1e-5)
    H = np.asarray(ctx.per_image("lbp+mnv2 [random-init]"))
    np.testing.assert_allclose(H, np.hstack([np.asarray(ctx.per_image("lbp")), X]), rtol=1e-4, atol=1e-5)
    rs = [r for r in ctx.records() if r["classifier"] == "logreg"]
    assert {(r["feature"], r["family"], r["weights"], r["n_features"]) for r in rs} == {
        ("lbp", "handcrafted", "n/a", 30), ("mnv2 [random-init]", "deep", "random-init", 1280),
        ("lbp+mnv2 [random-init]", "hybrid", "random-init", 1310)}
    assert all(r["status"] == "ok" for r in rs) and len(rs) == 3 * 2


def test_finetune_rows_with_folds_and_tta(deep_run):
    _, ctx = deep_run
    cnn = [r for r in ctx.records() if r["family"] == "cnn"]
    assert all(r["status"] == "ok" for r in cnn), [r["error"] for r in cnn]
    rows = {(r["feature"], r["classifier"], r["split"], r["variant"]) for r in cnn}
    assert rows == {("scratch", "end-to-end", 0, None), ("scratch", "end-to-end+tta3", 0, None),
                    ("scratch", "end-to-end", 1, None), ("scratch", "end-to-end+tta3", 1, None),
                    ("scratch-f1", "end-to-end", 1, "folds-subset")}     # folds: [1] -> split 1 only
    plan = json.loads((ctx.run_dir / "splits.json").read_text())["folds"]
    for r in cnn:
        assert r["n_test"] == len(plan[r["split"]]["test"]) and r["n_train"] == len(plan[r["split"]]["train"])
        p = np.load(ctx.run_dir / "predictions" / f"{r['cell_id']}.npz")
        np.testing.assert_array_equal(p["test_index"], plan[r["split"]]["test"])
        assert r["accuracy"] == pytest.approx(np.mean(p["y_pred"] == p["y_true"]))
        np.testing.assert_allclose(p["proba"].sum(1), 1, atol=1e-5)
    # TTA averages augmented copies: its probabilities are not those of the plain row
    plain = np.load(ctx.run_dir / "predictions" / "scratch__end-to-end__s0.npz")["proba"]
    tta = np.load(ctx.run_dir / "predictions" / "scratch__end-to-end-tta3__s0.npz")["proba"]
    assert plain.shape == tta.shape and not np.allclose(plain, tta)
    for label, split in (("scratch", 0), ("scratch", 1), ("scratch-f1", 1)):
        work = ctx.run_dir / "finetune" / label / f"split{split}"
        assert (work / "done.json").is_file() and (work / "best.weights.h5").is_file()
    assert not (ctx.run_dir / "finetune" / "scratch-f1" / "split0").exists()


def test_resumed_run_recomputes_no_finetune_row(deep_run):
    cfg, ctx = deep_run
    path = ctx.run_dir / "records.jsonl"
    works = sorted((ctx.run_dir / "finetune").glob("*/split*"))
    stamps = lambda: {p: p.stat().st_mtime_ns for w in works for p in w.iterdir()}
    before, data = stamps(), path.read_bytes()
    engine.run(cfg)                                 # everything finished: nothing is redone
    assert path.read_bytes() == data and stamps() == before
    # a run killed after training split 1 but before recording it: the rows come back from
    # done.json (no training: checkpoint untouched) and are recorded once
    lines = record_lines(ctx.run_dir)
    lost = [cid for cid in lines if cid.startswith("scratch__") and cid.endswith("__s1")]
    assert len(lost) == 2
    path.write_bytes(b"".join(v for k, v in lines.items() if k not in lost))
    engine.run(cfg)
    assert stamps() == before
    after = record_lines(ctx.run_dir)
    assert set(after) == set(lines)
    for cid in lost:
        old, new = json.loads(lines[cid]), json.loads(after[cid])
        assert {k: v for k, v in new.items() if k != "time"} == {k: v for k, v in old.items() if k != "time"}

"""Every shipped pipeline other than smoke (tests/test_cli.py runs that one whole) runs end to
end through the engine, reduced with ``key=value`` overrides to take seconds: few and small
images, CNN inputs of 32 px (random weights: nothing is downloaded), small forests and MLPs,
one epoch on one split for end-to-end CNNs. The pipeline's own feature list, classifiers and protocol
options are kept; what a reduced run leaves out is said per test. The full versions (every
feature and end-to-end row, and the reports) are marked slow (``make test-all``).

The overrides are computed from each pipeline file, so they keep working when its rows change
(e.g. another backbone): every ``cnn`` row or ``concat`` part gets ``params.input_size: 32``.
"""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from bench import engine, report
from bench.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_helpers import write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"


def _small_cnn(params: dict) -> dict:
    return {**(params or {}), "input_size": 32}


def reduce_overrides(name: str, finetune=lambda m: True) -> list[str]:
    """``key=value`` overrides that shrink pipeline ``name``'s costly parts, keeping its rows:
    its feature list with CNN inputs of 32 px, its classifiers with small forests and MLPs,
    and the end-to-end rows for which ``finetune(row)`` is true, one epoch on split 0."""
    raw = yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())
    feats = []
    for f in raw.get("features") or []:
        if isinstance(f, dict) and f.get("name") == "cnn":
            f = {**f, "params": _small_cnn(f.get("params"))}
        elif isinstance(f, dict) and f.get("name") == "concat":
            parts = [{**p, "params": _small_cnn(p.get("params"))} if isinstance(p, dict) and p.get("name") == "cnn"
                     else p for p in f["params"]["parts"]]
            f = {**f, "params": {**f["params"], "parts": parts}}
        feats.append(f)
    small = {"random_forest": {"n_estimators": 10}, "balanced_random_forest": {"n_estimators": 10},
             "mlp": {"max_iter": 50, "hidden_layer_sizes": [32]}}
    clfs = []
    for c in raw.get("classifiers") or []:
        c = {"name": c} if isinstance(c, str) else dict(c)
        c["params"] = {**(c.get("params") or {}), **small.get(c["name"], {})}
        clfs.append(c)
    ft = []
    for m in raw.get("finetune") or []:
        if finetune(m):
            m = {**m, "epochs": 1, "input_size": 32, "folds": [0], "batch_size": 16}
            if m.get("mode") == "finetune":
                m["finetune_epochs"] = 1
            if m.get("mode") == "scratch":
                m["filters"] = [8, 16]
            ft.append(m)
    return [f"features={json.dumps(feats)}", f"classifiers={json.dumps(clfs)}", f"finetune={json.dumps(ft)}"]


def run_pipeline(name, tmp_path, *extra, finetune=lambda m: True, report_formats=()):
    """Run ``pipelines/<name>.yaml`` reduced; return (config, context, rows by status)."""
    raw = yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())
    cfg = load_config(PIPELINES / f"{name}.yaml", [
        *reduce_overrides(name, finetune), *extra, f"output.results_dir={tmp_path / 'results'}",
        f"cache.dir={tmp_path / 'cache'}", "parallel.n_jobs=1", "report.tsne=false",
        "report.learning_curves=false"])
    ctx = engine.run(cfg, base_dir=PIPELINES)
    rs = ctx.records()
    assert rs and all(r["status"] == "ok" for r in rs), [(r["cell_id"], r["error"]) for r in rs if r["error"]]
    # every feature row x classifier x split of the pipeline, nothing more
    n_splits = len(json.loads((ctx.run_dir / "splits.json").read_text())["folds"])
    feature_rows = [r for r in rs if r["family"] != "cnn" and r["variant"] is None]
    assert len(feature_rows) == len(cfg["features"]) * len(cfg["classifiers"]) * n_splits
    assert {r["classifier"] for r in feature_rows} == {c["label"] for c in cfg["classifiers"]}
    labels = {r["feature"].replace(" [random-init]", "") for r in feature_rows}
    assert labels == {f["label"] for f in cfg["features"]}
    assert len(cfg["features"]) == len(raw["features"])
    meta = json.loads((ctx.run_dir / "features.json").read_text())
    for r in feature_rows:                           # dimension seen by the classifier
        assert r["n_features"] > 0 and meta[r["feature"]]["n_features"] in (None, r["n_features"])
    if report_formats:
        paths = report.build(ctx.run_dir, tmp_path / "report", formats=report_formats)
        assert paths["html"].stat().st_size > 20_000
    return cfg, ctx, rs


def _classes(rs):
    return {r["classifier"] for r in rs}


# --------------------------------------------------------------------------- synthetic data
PARCELS = ["dataset.n_per_class=6", "dataset.size=48", "protocol.n_splits=2"]


def test_default_pipeline_reduced(tmp_path):
    """Every feature row of default.yaml and its scratch CNN (with TTA); the transfer-learning
    row is in the slow version."""
    scratch = lambda m: m.get("mode") == "scratch"
    _, _, rs = run_pipeline("default", tmp_path, *PARCELS, finetune=scratch)
    raw = yaml.safe_load((PIPELINES / "default.yaml").read_text())
    rows = [m for m in raw["finetune"] if scratch(m)]
    assert rows, "default.yaml has no scratch CNN row any more: update this test"
    cnn = [r for r in rs if r["family"] == "cnn"]
    assert {r["feature"] for r in cnn} == {m["label"] for m in rows} and all(r["split"] == 0 for r in cnn)
    expected = {"end-to-end"} | {f"end-to-end+tta{m['tta']}" for m in rows if m.get("tta", 0) > 1}
    assert _classes(cnn) == expected
    assert {r["family"] for r in rs} >= {"handcrafted", "deep", "cnn"}


@pytest.mark.slow
def test_default_pipeline_with_every_row_and_its_report(tmp_path):
    _, _, rs = run_pipeline("default", tmp_path, *PARCELS, report_formats=("html", "pdf"))
    raw = yaml.safe_load((PIPELINES / "default.yaml").read_text())
    assert {r["feature"].replace(" [random-init]", "") for r in rs if r["family"] == "cnn"} == \
        {m["label"] for m in raw["finetune"]}


def test_full_pipeline_reduced(tmp_path):
    """full.yaml's seven classifiers (with the nested search) and repeated k-fold, on two of
    its hand-crafted features and its first deep row (default.yaml's test runs the same
    hand-crafted list); every feature and end-to-end row in the slow version."""
    raw = yaml.safe_load((PIPELINES / "full.yaml").read_text())
    deep = next(i for i, f in enumerate(raw["features"]) if isinstance(f, dict) and f.get("name") == "cnn")
    hand = [f for f in raw["features"] if not (isinstance(f, dict) and f.get("name") in ("cnn", "concat"))]
    feats = hand[:2] + [{**raw["features"][deep], "params": {**raw["features"][deep]["params"], "input_size": 32}}]
    cfg = load_config(PIPELINES / "full.yaml", [
        *[o for o in reduce_overrides("full", finetune=lambda m: False) if not o.startswith("features=")],
        f"features={json.dumps(feats)}", *PARCELS, "protocol.n_repeats=2",
        f"output.results_dir={tmp_path / 'results'}", f"cache.dir={tmp_path / 'cache'}",
        "parallel.n_jobs=1", "report.tsne=false", "report.learning_curves=false"])
    ctx = engine.run(cfg)
    rs = ctx.records()
    assert all(r["status"] == "ok" for r in rs), [r["error"] for r in rs if r["error"]]
    assert len(rs) == len(feats) * len(raw["classifiers"]) * 4           # 2 folds x 2 repeats
    assert {r["repeat"] for r in rs} == {0, 1}
    tuned = [r for r in rs if r["classifier"] == "svm-tuned"]
    assert tuned and all(json.loads(r["params"])["best_params"]["C"] in (0.1, 1, 10, 100) for r in tuned)


@pytest.mark.slow
def test_full_pipeline_with_every_row(tmp_path):
    run_pipeline("full", tmp_path, *PARCELS, "protocol.n_repeats=1")


def test_sealion_pipeline_reduced(tmp_path):
    """Synthetic scenes, grouped 2-fold by scene, the leak check when the pipeline asks for it,
    and per-image counting by every method the pipeline names."""
    import pandas as pd
    spec = yaml.safe_load((REPO / "pipelines" / "sealion.yaml").read_text())
    _, ctx, rs = run_pipeline(
        "sealion", tmp_path, "dataset.n_scenes=4", "dataset.scene_size=[128, 160]",
        "dataset.animals_per_scene=[16, 20]", "protocol.n_splits=2", "count.splits=[0]",
        "report.gallery=0", "count.cnn=[{label: count-cnn, tile: 64, steps: 60, jitter: 0.1}]",
        report_formats=("html",))  # the CNN counter's 1000 steps are the pipeline's; 60 run the same code
    plan = json.loads((ctx.run_dir / "splits.json").read_text())
    assert plan["grouped"] and "Group" in plan["splitter"]
    groups = np.array(json.loads((ctx.run_dir / "dataset.json").read_text())["groups"])
    for f in plan["folds"]:
        assert not set(groups[f["train"]]) & set(groups[f["test"]])
    leak = spec["protocol"].get("leak_check")
    assert {r["variant"] for r in rs} == ({None, "random-split"} if leak else {None})
    counts = (ctx.run_dir / "analysis" / "counts.csv").read_text().splitlines()
    assert counts[0].split(",")[:4] == ["image", "class", "true", "predicted"] and len(counts) > 5
    rmse = pd.read_csv(ctx.run_dir / "analysis" / "count_rmse.csv")
    assert set(spec["count"]["method"]) | {"baseline"} <= set(rmse["method"])


# --------------------------------------------------------------------------- folder datasets
def _texture(kind, seed, size=48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    if kind == "stripes":
        img = 127 + 100 * np.sin(0.7 * xx + rng.uniform(0, 6))
    elif kind == "checks":
        img = 60 + 140 * (((yy // 6) + (xx // 6)) % 2)
    else:
        img = cv2.GaussianBlur(rng.normal(127, 60, (size, size)), (0, 0), 1.5)
    return np.clip(img + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)


def texture_folder(root, n=6):
    for c in ("stripes", "checks", "blobs"):
        for k in range(n):
            write(Path(root) / c / f"{c}_{k}.png", _texture(c, 100 * len(c) + k))
    return root


def chips_folder(root, n_photos=5, per=2):
    """RGB chips named <photo>_<class>_<n>.png, one folder per class, like the sea-lion chips."""
    colours = {"pups": (200, 120, 60), "females": (90, 90, 160), "background": (60, 140, 60)}
    for c, rgb in colours.items():
        for photo in range(n_photos):
            for k in range(per):
                rng = np.random.default_rng([photo, k, len(c)])
                size = 44 + 4 * k + (6 if c == "pups" else 0)          # chip size differs by class
                img = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255)
                write(Path(root) / c / f"{photo + 10}_{c}_{k}.png", img.astype(np.uint8))
    return root


def test_textures_pipeline_reduced(tmp_path):
    data = texture_folder(tmp_path / "brodatz")
    _, ctx, rs = run_pipeline("textures", tmp_path, f"dataset.path={data}", "protocol.n_splits=3")
    assert json.loads((ctx.run_dir / "dataset.json").read_text())["n_images"] == 18
    by_feature = {}
    for r in rs:
        by_feature.setdefault(r["feature"], []).append(r["macro_f1"])
    assert np.mean(by_feature["lbp"]) > 0.8          # the three textures are easy for LBP


def test_chips_pipeline_reduced(tmp_path):
    """Grouped by photo from the file names, centre-cropped to 40 px, with the leak check."""
    data = chips_folder(tmp_path / "chips")
    _, ctx, rs = run_pipeline("chips", tmp_path, f"dataset.path={data}", "protocol.n_splits=2",
                              "report.gallery=3")
    ds = json.loads((ctx.run_dir / "dataset.json").read_text())
    assert ds["grouped"] and sorted(set(ds["groups"])) == ["10", "11", "12", "13", "14"]
    assert {r["variant"] for r in rs} == {None, "random-split"}
    hog = json.loads((ctx.run_dir / "features.json").read_text())["hog"]
    assert hog["prepare"]["crop"] == [40, 40] and hog["n_features"] == 4 * 4 * 36   # 40 px: 4 x 4 blocks


@pytest.mark.slow
def test_chips_and_textures_on_the_shared_data(tmp_path, shared_data):
    """The real sets, when the workspace has them (a clone does not: skipped)."""
    for name, folder in (("chips", "sea_lion_chips"), ("textures", "brodatz20")):
        if not (shared_data / folder).is_dir():
            pytest.skip(f"{shared_data / folder} not present")
        run_pipeline(name, tmp_path / name, f"dataset.path={shared_data / folder}",
                     "dataset.max_per_class=8", "protocol.n_splits=2")

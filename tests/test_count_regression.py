"""Counting by regression on tiles (and the end-to-end CNN counter): tile targets, colour
switches, a scene set where the tile count is a known function of a registered feature,
and the held-out discipline of run_counting."""
import types

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.model_selection import GroupKFold

from bench.counting import run_counting
from bench.counting.regression import fit_count_regressor, regressor_specs, scene_sums
from bench.counting.tiles import (HistogramMatcher, SceneColour, colour_jitter, cut_tile, gray_world,
                                  tile_grid, tile_targets)
from bench.data.points import load_points
from bench.components import load_components
from bench.errors import ConfigError
from bench.registry import FEATURES, REGRESSORS


# --------------------------------------------------------------- tiles and targets
def test_tile_grid_covers_the_scene_once_and_pads_black():
    img = np.random.default_rng(0).integers(1, 256, (70, 100, 3), dtype=np.uint8)
    origins = tile_grid(70, 100, 32)
    assert len(origins) == 3 * 4
    cover = np.zeros((96, 128), int)
    for x, y in origins:
        cover[y:y + 32, x:x + 32] += 1
    assert (cover == 1).all()
    last = cut_tile(img, 96, 64, 32)
    assert last.shape == (32, 32, 3) and (last[:6, :4] == img[64:70, 96:100]).all()
    assert (last[6:] == 0).all() and (last[:, 4:] == 0).all()
    with pytest.raises(ConfigError, match="tile size"):
        tile_grid(10, 10, 1)


def test_point_and_density_targets_sum_to_the_counts():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, [100, 70], (40, 2))
    lab = rng.integers(0, 3, 40)
    pts = tile_targets(xy, lab, 3, 70, 100, 32, "points")
    dens = tile_targets(xy, lab, 3, 70, 100, 32, "density", sigma=5)
    counts = np.bincount(lab, minlength=3)
    np.testing.assert_array_equal(pts.sum(0), counts)
    np.testing.assert_allclose(dens.sum(0), counts, atol=1e-9)
    # a point counts for the tile that contains it (row-major tile order)
    one = tile_targets([[33, 65]], [1], 3, 70, 100, 32, "points")
    assert one[2 * 4 + 1, 1] == 1 and one.sum() == 1
    # far from the edges the density target of a point is (almost) all in its tile
    d = tile_targets([[48, 48]], [0], 1, 96, 96, 32, "density", sigma=2)
    assert d[4, 0] > 0.999
    with pytest.raises(ConfigError, match="unknown tile target"):
        tile_targets(xy, lab, 3, 70, 100, 32, "gauss")


def test_histogram_matching_equals_scikit_image():
    from skimage.exposure import match_histograms

    rng = np.random.default_rng(2)
    ref = [rng.integers(1, 200, (40, 50, 3), dtype=np.uint8), rng.integers(50, 256, (30, 20, 3), dtype=np.uint8)]
    src = (rng.beta(2, 5, (45, 35, 3)) * 254 + 1).astype(np.uint8)
    pooled = np.concatenate([r.reshape(-1, 3) for r in ref])[:, None, :]
    # float inputs: scikit-image returns the interpolated values (uint8 inputs are truncated)
    want = np.rint(match_histograms(src.astype(float), pooled.astype(float), channel_axis=-1))
    got = HistogramMatcher().fit(ref).transform(src)
    np.testing.assert_array_equal(got, want)
    # black pixels (blacked-out regions, padding) are neither counted nor changed
    src2 = src.copy()
    src2[:5] = 0
    out = HistogramMatcher().fit(ref).transform(src2)
    assert (out[:5] == 0).all()


def test_gray_world_and_jitter():
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal([150, 100, 60], 20, (50, 60, 3)), 1, 255).astype(np.uint8)
    img[:10] = 0  # ignored
    g = gray_world(img).astype(float)
    m = g[10:].reshape(-1, 3).mean(0)
    assert np.ptp(m) < 1.5 and (g[:10] == 0).all()
    j = colour_jitter(img, np.random.default_rng(0), 0.2)
    ratio = j[10:].reshape(-1, 3).mean(0) / img[10:].reshape(-1, 3).mean(0)
    assert ((ratio > 0.65) & (ratio < 1.35)).all() and np.ptp(ratio) > 0.01
    with pytest.raises(ConfigError, match="did you mean 'grayworld'"):
        SceneColour("greyworld")


# --------------------------------------------------------------- regressors
def test_regressors_registry_and_specs():
    load_components()
    specs = regressor_specs(["ridge", {"name": "poisson", "label": "glm", "search": {}},
                             {"name": "random_forest", "params": {"n_estimators": 20}}])
    assert [s["label"] for s in specs] == ["ridge", "glm", "random_forest"]
    assert specs[0]["search"] == REGRESSORS.entry("ridge").meta["grid"] and specs[1]["search"] == {}
    assert {"ridge", "poisson", "random_forest", "gradient_boosting"} <= set(REGRESSORS.names())
    with pytest.raises(ConfigError, match="did you mean 'ridge'"):
        regressor_specs(["rigde"])
    with pytest.raises(ConfigError, match="duplicate"):
        regressor_specs(["ridge", "ridge"])


def test_inner_search_is_grouped_by_scene_and_scored_on_scene_sums():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 3))
    Y = np.clip(2 * X[:, :1] + 3, 0, None) @ np.ones((1, 2))
    groups = np.repeat(np.arange(6).astype(str), 10)
    spec = regressor_specs([{"name": "ridge", "search": {"alpha": [1e4, 0.01]}}])[0]
    model, best, inner = fit_count_regressor(X, Y, groups, np.ones(60, bool), spec, inner_splits=3)
    assert best == {"alpha": 0.01} and inner < 1.0
    got = scene_sums(model.predict(X), groups, list("012345"))
    np.testing.assert_allclose(got, scene_sums(Y, groups, list("012345")), atol=1.0)
    # negative tile predictions are clipped before the sum
    assert scene_sums(np.array([[-5.0], [2.0]]), np.array(["a", "a"]), ["a"])[0, 0] == 2.0


# --------------------------------------------------------------- known function of a feature
def _blob_scenes(root, n_scenes=8, tile=32, seed=0):
    """Scenes of 4x5 tiles; each tile holds k_red + k_blue bright discs (k in 0..3), fully inside."""
    rng = np.random.default_rng(seed)
    rows = []
    slots = [(8, 8), (24, 8), (8, 24), (24, 24)]
    for s in range(n_scenes):
        img = np.full((4 * tile, 5 * tile, 3), 20, np.uint8)
        img += rng.integers(0, 6, img.shape, dtype=np.uint8)
        for ty in range(4):
            for tx in range(5):
                k = rng.integers(0, 4, 2) if rng.random() > 0.2 else np.zeros(2, int)
                k = np.minimum(k, [4, 4 - k[0]])
                cls = ["red"] * int(k[0]) + ["blue"] * int(k[1])
                for (dx, dy), c in zip(slots, cls):
                    x, y = tx * tile + dx, ty * tile + dy
                    cv2.circle(img, (x, y), 5, (230, 30, 30) if c == "red" else (30, 60, 230), -1)
                    rows.append((f"s{s}.png", x, y, c))
        Image.fromarray(img).save(root / f"s{s}.png")
    pd.DataFrame(rows, columns=["image", "x", "y", "class"]).to_csv(root / "annotations.csv", index=False)
    return load_points(root, patch_size=16, min_distance=8)


class _RegCtx:
    """What run_counting needs for the regression counters: a run feature and grouped splits."""

    def __init__(self, ds, run_dir, feature):
        self.dataset, self.run_dir, self.seed = ds, run_dir, 0
        scenes = np.asarray(ds.groups)
        self.splits = [types.SimpleNamespace(index=i, train=tr, test=te)
                       for i, (tr, te) in enumerate(GroupKFold(4).split(scenes, groups=scenes))]
        self.feature_labels = ["hist"]
        self.stage = feature
        self.seen = []

    def extract(self, label, images):
        self.seen.append(len(images))
        return self.stage.transform(images)


@pytest.mark.parametrize("regressor", ["ridge", "random_forest"])
def test_regression_counts_are_exact_when_the_tile_count_is_a_function_of_the_feature(tmp_path, regressor):
    """Every tile holds k red and k' blue discs; a colour histogram (a registered feature) makes
    the tile count a linear function of the feature, so ridge counts every scene exactly within
    1 (a random forest averages its leaves: it is only asked to be far better than the baseline)."""
    load_components()
    ds = _blob_scenes(tmp_path)
    hist = FEATURES.create("color_hist", bins=[12, 2, 2])
    ctx = _RegCtx(ds, tmp_path, hist)
    counts, rmse = run_counting(ctx, {"method": "regression", "splits": [0, 1, 2, 3],
                                      "regression": {"tile": 32, "regressors": [regressor]}})
    reg = counts[counts["method"] == "regression"]
    assert set(reg["image"]) == set(ds.groups) and len(reg) == 8 * 2
    err = (reg["predicted"] - reg["true"]).abs()
    r = rmse.set_index(["method", "class"])["rmse"]
    if regressor == "ridge":
        assert err.max() <= 1.0, reg.assign(err=err).sort_values("err").tail()
        assert r[("regression", "mean")] < 0.15 * r[("baseline", "mean")]
    else:  # far better than the baseline, which ignores the image
        assert r[("regression", "mean")] < 0.5 * r[("baseline", "mean")]
    # every held-out scene was counted by a model fitted on the other scenes only
    models = pd.read_csv(tmp_path / "analysis" / "count_models.csv")
    for split, sp in enumerate(ctx.splits):
        test = set(ds.groups[sp.test])
        assert set(reg[reg["split"] == split]["image"]) == test
        assert (models[models["split"] == split]["n_train_tiles"] == 20 * (8 - len(test))).all()


def test_regression_rows_per_variant_and_failures_are_isolated(tmp_path):
    load_components()
    ds = _blob_scenes(tmp_path, n_scenes=4)
    ctx = _RegCtx(ds, tmp_path, FEATURES.create("color_hist", bins=[12, 2, 2]))
    ctx.feature_labels = ["hist", "broken"]
    real = ctx.extract

    def extract(label, images):
        if label == "broken":
            raise RuntimeError("feature exploded")
        return real(label, images)
    ctx.extract = extract
    counts, rmse = run_counting(ctx, {"method": ["regression"], "splits": [0, 1],
                                      "regression": {"tile": 32, "regressors": [{"name": "ridge", "search": {}}],
                                                     "normalize": ["none", "grayworld", "histmatch"],
                                                     "jitter": [0, 0.2], "copies": 2}})
    variants = set(counts.loc[counts["method"] == "regression", "variant"])
    assert len(variants) == 6 and "tile 32, grayworld, jitter 0.2" in variants
    failed = rmse[rmse["status"] == "failed"]
    assert set(failed["feature"]) == {"broken"} and "feature exploded" in failed["error"].iloc[0]
    models = pd.read_csv(tmp_path / "analysis" / "count_models.csv")
    jit = models[models["variant"].str.contains("jitter 0.2")]
    plain = models[~models["variant"].str.contains("jitter 0.2")]
    # two jittered copies of every training tile on top of the originals
    assert (jit["n_train_tiles"].to_numpy() == 3 * plain["n_train_tiles"].to_numpy()).all()
    with pytest.raises(ConfigError, match="count.regression.tlie"):
        run_counting(ctx, {"method": "regression", "regression": {"tlie": 32}})
    with pytest.raises(ConfigError, match="not a feature of this run"):
        run_counting(ctx, {"method": "regression", "regression": {"features": ["hog"]}})


# --------------------------------------------------------------- the end-to-end CNN counter
def test_cnn_training_crops_keep_the_counts():
    from bench.counting.cnn import _Crops, cnn_options

    o = cnn_options({"tile": 32, "downsample": 2, "stem": 1, "filters": [4, 4], "batch_size": 16}, 16)[0]
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [96, 64], (30, 2))
    lab = rng.integers(0, 2, 30)
    img = rng.uniform(0, 255, (32, 48, 3)).astype(np.float32)  # downsampled 64 x 96 scene
    crops = _Crops([(img, xy, lab)], o, 2, rng)
    _, dens, _ = crops.items[0]
    np.testing.assert_allclose(dens.sum((0, 1)), np.bincount(lab, minlength=2), atol=1e-6)
    X, Y = crops.batch()
    assert X.shape == (16, 16, 16, 3) and Y.shape == (16, 4, 4, 2)
    # positive crops hold an animal (its cell, and so most of its density mass)
    o_pos = dict(o, positive=1.0)
    _, Y = _Crops([(img, xy, lab)], o_pos, 2, np.random.default_rng(1)).batch()
    assert (Y.sum((1, 2, 3)) > 0.1).all()
    with pytest.raises(ConfigError, match="multiples of the output cell"):
        cnn_options({"tile": 30}, 16)
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        cnn_options({"stpes": 3}, 16)


def test_cnn_counter_runs_on_held_out_scenes(tmp_path):
    load_components()
    ds = _blob_scenes(tmp_path, n_scenes=4)
    ctx = _RegCtx(ds, tmp_path, None)
    counts, rmse = run_counting(ctx, {"method": "cnn", "splits": [0],
                                      "cnn": {"tile": 32, "filters": [4, 8], "steps": 20,
                                              "batch_size": 8, "predict_tile": 64}})
    cnn = counts[counts["method"] == "cnn"]
    assert set(cnn["image"]) == set(ds.groups[ctx.splits[0].test])
    assert np.isfinite(cnn["predicted"]).all() and (cnn["predicted"] >= 0).all()
    curve = pd.read_csv(tmp_path / "analysis" / "count_cnn" / "count-cnn-split0.csv")
    assert curve["step"].iloc[-1] == 20 and np.isfinite(curve["loss"]).all()


def test_window_and_regression_counters_in_one_run(tmp_path):
    """Regression: the window counters once looped over every method of count.method and
    failed on 'regression' ('unknown method'); each family now gets its own methods."""
    from sklearn.ensemble import RandomForestClassifier

    load_components()
    ds = _blob_scenes(tmp_path, n_scenes=4)
    hist = FEATURES.create("color_hist", bins=[12, 2, 2])
    ctx = _RegCtx(ds, tmp_path, hist)
    ctx.per_image = lambda label: hist.transform(ds.images())
    ctx.make_pipeline = lambda f, c: RandomForestClassifier(20, random_state=0)
    ctx.classifier_labels = ["rf"]
    counts, rmse = run_counting(ctx, {"method": ["nms", "regression"], "features": ["hist"],
                                      "classifier": "rf", "stride": 8, "splits": [0],
                                      "regression": {"tile": 32, "regressors": [{"name": "ridge", "search": {}}]}})
    assert (rmse["status"] == "ok").all(), rmse[rmse["status"] != "ok"]["error"].tolist()
    assert set(counts["method"]) == {"baseline", "nms", "regression"}


# --------------------------------------------------------------- the pipeline, end to end
def test_sealion_pipeline_counts_every_scene_with_every_counter(tmp_path):
    """pipelines/sealion.yaml, shrunk: the engine runs the baseline, window, regression and CNN
    counters; every scene is counted once per counter, on the split that held it out, and
    the report (rebuilt from the run folder) shows the count table and the scatter."""
    from bench import engine, report
    from bench.config import load_config
    from bench.report.counting import count_summary
    from bench.report.rundata import RunData

    cfg = load_config("pipelines/sealion.yaml", [
        "dataset.n_scenes=4", "dataset.scene_size=[96,128]", "dataset.animals_per_scene=[6,14]",
        "dataset.max_per_class=30", "features=[lbp,color_hist]", "classifiers=[logreg]",
        "count.method=[nms,regression,cnn]", "count.stride=16", "count.mine_negatives=0",
        "count.regression=[{features: [lbp, color_hist], regressors: [ridge], tile: 32,"
        " normalize: [none, grayworld], jitter: [0, 0.1]}]",
        "count.cnn={tile: 32, filters: [4, 8], steps: 10, batch_size: 4, predict_tile: 64}",
        f"output.results_dir={tmp_path / 'results'}", f"cache.dir={tmp_path / 'cache'}",
        "report.tsne=false", "report.gallery=0", "parallel.n_jobs=1"])
    ctx = engine.run(cfg)
    a = ctx.run_dir / "analysis"
    counts = pd.read_csv(a / "counts.csv")
    rmse = pd.read_csv(a / "count_rmse.csv")
    assert (rmse["status"] == "ok").all(), rmse.loc[rmse["status"] != "ok", "error"].tolist()
    assert set(counts["method"]) == {"baseline", "nms", "regression", "cnn"}
    groups = np.asarray(ctx.dataset.groups)
    for keys, g in counts.groupby(["method", "feature", "classifier", "variant"], dropna=False):
        per_image = g.groupby("image")["split"].unique()
        assert len(per_image) == 4 and all(len(s) == 1 for s in per_image), keys
        for image, (split,) in per_image.items():
            sp = ctx.splits[int(split)]
            assert image in set(groups[sp.test]) and image not in set(groups[sp.train])
    summary = count_summary(counts)
    assert summary["method"].iloc[0] == "baseline" and len(summary) == 1 + 1 + 2 * 4 + 1
    assert (a / "count_models.csv").is_file()
    paths = report.build(ctx.run_dir, tmp_path / "report", formats=("html",))
    html = paths["html"].read_text()
    assert "Mean column-wise RMSE" in html and "count-scatter" in html
    assert (tmp_path / "report" / "figures" / "count-scatter.png").is_file()
    doc_tables = [t.name for t in report.document.build_document(RunData.load(ctx.run_dir)).tables()]
    assert "count-table" in doc_tables

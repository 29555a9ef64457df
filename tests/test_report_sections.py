"""The report sections of bench/report/sections.py, checked on values against the saved run files.

Every number is recomputed here from records.jsonl and predictions/*.npz with sklearn
(not through the code under test): per-class precision / recall / F1 / support,
per-fold scores, inference cost per image, the misclassified examples and the
learning-curve points (frozen rows and the end-to-end CNN).
"""
import html as htmlmod
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score, precision_score, recall_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_run import EVIL, make_fake_run  # noqa: E402

from bench import mistakes, records as rec  # noqa: E402
from bench.aggregate import best_by_family, summarize  # noqa: E402
from bench.report import _write, sections  # noqa: E402
from bench.report.document import build_document  # noqa: E402
from bench.report.rundata import RunData  # noqa: E402

N_CLASSES, PER_CLASS = 3, 20


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sections")
    run_dir = make_fake_run(root / "runs", n_classes=N_CLASSES, per_class=PER_CLASS,
                            analysis_cfg={"tsne": False, "explain": False})
    doc = build_document(RunData.load(run_dir))
    paths = _write(doc, root / "report", ("html",))  # what bench.report.build writes, one document
    return run_dir, paths, doc


@pytest.fixture(scope="module")
def rd(run):
    return RunData.load(run[0])


@pytest.fixture(scope="module")
def doc(run):
    return run[2]


@pytest.fixture(scope="module")
def page(run):
    return run[1]["html"].read_text(encoding="utf-8")


def _records(run_dir):
    return list(rec.latest_by_cell(rec.load(Path(run_dir) / "records.jsonl")).values())


def _pooled_reference(run_dir, feature, classifier, splits):
    """(y_true, y_pred, proba, index, split) read straight from the predictions files."""
    parts = []
    for r in _records(run_dir):
        if (r["feature"] == feature and r["classifier"] == classifier and not r.get("variant")
                and r["status"] == "ok" and r["split"] in splits):
            with np.load(Path(run_dir) / "predictions" / f"{r['cell_id']}.npz") as z:
                parts.append((r["split"], {k: z[k] for k in z.files}))
    parts.sort(key=lambda p: p[0])
    cat = {k: np.concatenate([p[k] for _, p in parts]) for k in ("y_true", "y_pred", "proba", "test_index")}
    cat["split"] = np.concatenate([np.full(len(p["y_true"]), s) for s, p in parts])
    return cat


def _table(doc, name):
    for s in doc.sections:
        for b in s.blocks:
            if b.kind == "table" and b.value.name == name:
                return s, b.value
            if b.kind == "details" and b.value.get("table") is not None and b.value["table"].name == name:
                return s, b.value["table"]
    raise AssertionError(f"no table {name}")


def _col(t, name):
    return t.columns.index(name)


# --------------------------------------------------------------------------- per class
def test_per_class_matches_sklearn_and_support_sums_to_the_images(run, rd, doc):
    run_dir = run[0]
    best = best_by_family(summarize(_records(run_dir)))
    assert set(best) == {"handcrafted", "deep", "cnn"}
    n = N_CLASSES * PER_CLASS
    for fam, row in best.items():
        sec, t = _table(doc, f"per-class-{fam}")
        assert sec.id == "classes"
        ref = _pooled_reference(run_dir, row["feature"], row["classifier"], set(range(5)))
        labels = np.arange(N_CLASSES)
        kw = dict(labels=labels, average=None, zero_division=0)
        want = {"Precision %": precision_score(ref["y_true"], ref["y_pred"], **kw),
                "Recall %": recall_score(ref["y_true"], ref["y_pred"], **kw),
                "F1 %": f1_score(ref["y_true"], ref["y_pred"], **kw)}
        assert [c.text for c in (r[0] for r in t.rows)] == ["cat", "dog", EVIL]
        for col, values in want.items():
            got = np.array([float(r[_col(t, col)].text) for r in t.rows])
            np.testing.assert_allclose(got, 100 * values, atol=0.051, err_msg=f"{fam} {col}")
        support = [int(r[_col(t, "Support")].text) for r in t.rows]
        assert sum(support) == n and support == np.bincount(ref["y_true"], minlength=N_CLASSES).tolist()
        macro = f1_score(ref["y_true"], ref["y_pred"], average="macro", labels=labels, zero_division=0)
        assert f"F1 {100 * macro:.1f}" in t.caption and row["feature"] in t.caption


def test_per_class_uses_only_the_first_repeat(tmp_path):
    run_dir = make_fake_run(tmp_path, n_splits=3, n_repeats=2, cnn=False, failed_cell=False,
                            analysis=False)
    rd = RunData.load(run_dir)
    row = best_by_family(rd.summary)["handcrafted"]
    t = sections.per_class_table(rd, row)
    assert sum(int(r[-1].text) for r in t.rows) == 3 * 20  # each image once, not twice
    ref = _pooled_reference(run_dir, row["feature"], row["classifier"], {0, 1, 2})
    got = np.array([float(r[_col(t, "Recall %")].text) for r in t.rows])
    want = recall_score(ref["y_true"], ref["y_pred"], average=None)
    np.testing.assert_allclose(got, 100 * want, atol=0.051)


# --------------------------------------------------------------------------- per fold
def test_per_fold_table_shows_every_record(run, doc, page):
    run_dir = run[0]
    sec, t = _table(doc, "per-fold")
    assert sec.id == "leaderboard"
    assert t.columns[2:7] == [f"Fold {i}" for i in range(5)] and t.columns[-1] == "Mean ± std"
    by_label = {r[0].text: r for r in t.rows}
    summary = summarize(_records(run_dir))
    assert len(t.rows) == len(summary)
    n_failed = 0
    for r in _records(run_dir):
        tag = " [random-init]" if r["weights"] == "random-init" else ""
        label = f"{r['feature']}{tag} + {r['classifier']}"
        label += f" ({r['variant']})" if r.get("variant") else ""
        cell = by_label[label][2 + r["split"]]
        if r["status"] != "ok":
            assert cell.text == "failed" and "boom" in cell.title
            n_failed += 1
        else:
            assert cell.text == f"{100 * r['macro_f1']:.1f}", (label, r["split"])
    assert n_failed == 1
    for _, s in summary.iterrows():
        assert by_label[s["label"]][-1].text.startswith(f"{100 * s['macro_f1_mean']:.1f} ±")
    # collapsible in the HTML, and its CSV is written
    assert re.search(r'<details class="more" id="d-per-fold">\s*<summary>Per-fold scores', page)
    assert (run[1]["tables"] / "per-fold.csv").is_file()


def test_per_fold_marks_splits_a_cnn_did_not_run(tmp_path):
    run_dir = make_fake_run(tmp_path, analysis=False, failed_cell=False)
    lines = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    kept = [x for x in lines if not (x["family"] == "cnn" and x["split"] > 0)]
    (run_dir / "records.jsonl").write_text("".join(json.dumps(x) + "\n" for x in kept))
    t = sections.per_fold_table(RunData.load(run_dir))
    cnn = next(r for r in t.rows if r[1].sort == "cnn")
    assert cnn[2].text != "-" and [c.text for c in cnn[3:7]] == ["-"] * 4


# --------------------------------------------------------------------------- inference
def test_inference_cost_per_image_from_records(run, doc):
    run_dir = run[0]
    sec, t = _table(doc, "inference")
    assert sec.id == "cost"
    recs = [r for r in _records(run_dir) if r["status"] == "ok" and not r.get("variant")]
    rows = {r[0].text: r for r in t.rows}
    for label in {(r["feature"], r["classifier"]) for r in recs}:
        mine = [r for r in recs if (r["feature"], r["classifier"]) == label]
        shown = next(v for k, v in rows.items()
                     if k.startswith(f"{label[0]}") and k.endswith(f"+ {label[1]}"))
        pred = np.mean([1000 * r["predict_s"] / r["n_test"] for r in mine])
        assert float(shown[_col(t, "Predict ms/img")].text) == pytest.approx(pred, abs=6e-4)
        fit = np.mean([r["fit_s"] for r in mine])
        assert float(shown[_col(t, "Training s/fold")].text) == pytest.approx(fit, abs=6e-3)
        total = float(shown[_col(t, "Inference ms/img")].text)
        if mine[0]["family"] == "cnn":  # end-to-end: no separate extraction, training apart
            assert shown[_col(t, "Features ms/img")].text == "end-to-end"
            assert total == pytest.approx(pred, abs=6e-3)
        else:
            ext = np.mean([r["extract_ms_per_image"] for r in mine])
            assert float(shown[_col(t, "Features ms/img")].text) == pytest.approx(ext, abs=6e-3)
            assert total == pytest.approx(ext + pred, abs=6e-3)
    totals = [r[_col(t, "Inference ms/img")].sort for r in t.rows]
    assert totals == sorted(totals)  # cheapest first
    assert len(t.rows) == len({(r["feature"], r["classifier"]) for r in recs})


# --------------------------------------------------------------------------- misclassified
def test_select_takes_confident_mistakes_in_turn_by_class():
    pooled = {"index": np.arange(8), "split": np.zeros(8, int),
              "y_true": np.array([0, 0, 0, 1, 1, 2, 2, 2]), "y_pred": np.array([1, 2, 0, 0, 1, 0, 1, 2]),
              "proba": np.array([[.2, .7, .1], [.1, .3, .6], [.9, .05, .05], [.8, .1, .1], [.1, .8, .1],
                                 [.55, .2, .25], [.1, .85, .05], [.1, .1, .8]])}
    chosen, n_wrong = mistakes.select(pooled, 4)
    assert n_wrong == 5
    # most confident first (image 6, 0.85, class 2), then classes 1 and 0 in the order of their
    # best mistake, then class 2 again: its second mistake (0.55) before class 0's second (0.6)
    assert [c["index"] for c in chosen] == [6, 3, 0, 5]
    assert chosen[0]["confidence"] == pytest.approx(0.85) and chosen[0]["p_true"] == pytest.approx(0.05)
    assert all(c["true"] != c["pred"] for c in chosen)
    no_proba, _ = mistakes.select({**pooled, "proba": None}, 10)
    assert [c["index"] for c in no_proba] == [0, 3, 5, 1, 6] and no_proba[0]["confidence"] is None


def test_misclassified_are_the_best_rows_own_mistakes_with_thumbnails(run, rd, doc, page):
    run_dir = run[0]
    data = json.loads((run_dir / "analysis" / "misclassified.json").read_text())
    best = max(best_by_family(summarize(_records(run_dir))).values(), key=lambda r: r["macro_f1_mean"])
    assert (data["row"]["feature"], data["row"]["classifier"]) == (best["feature"], best["classifier"])
    ref = _pooled_reference(run_dir, best["feature"], best["classifier"], set(range(5)))
    pos = {int(i): k for k, i in enumerate(ref["test_index"])}
    assert data["n_mistakes"] == int((ref["y_true"] != ref["y_pred"]).sum()) and data["n_tested"] == 60
    assert 0 < len(data["items"]) <= 12
    for it in data["items"]:
        k = pos[it["index"]]
        assert it["true"] == ref["y_true"][k] != it["pred"] == ref["y_pred"][k]
        assert it["confidence"] == pytest.approx(float(ref["proba"][k, it["pred"]]))
        assert (run_dir / "analysis" / it["thumb"]).is_file()
    by_class = {}
    for it in data["items"]:
        by_class.setdefault(it["true"], []).append(it["confidence"])
    assert all(v == sorted(v, reverse=True) for v in by_class.values())
    # the page: one tile per item with the embedded thumbnail, true and predicted class
    tiles = re.findall(r'<div class="tile mistake">(.*?)</ul>', page.split('id="misclassified"')[1], re.S)
    assert len(tiles) == len(data["items"])
    first = data["items"][0]
    assert 'src="data:image/png;base64,' in tiles[0]
    assert f"true: {htmlmod.escape(first['true_name'])}" in tiles[0]
    assert f"predicted: {htmlmod.escape(first['pred_name'])} ({100 * first['confidence']:.0f}%)" in tiles[0]
    assert EVIL not in page  # class names are escaped
    assert any(f.name == "mistakes" for f in doc.figures())  # the PDF's picture of the tiles


def test_misclassified_without_analysis_lists_them_from_predictions(tmp_path):
    run_dir = make_fake_run(tmp_path, analysis=False)
    rd = RunData.load(run_dir)
    from bench.report.document import Section
    s = sections.misclassified_section(rd, Section)
    kinds = [b.kind for b in s.blocks]
    assert kinds == ["note", "table"]
    t = s.blocks[1].value
    best = max(best_by_family(rd.summary).values(), key=lambda r: r["macro_f1_mean"])
    ref = _pooled_reference(run_dir, best["feature"], best["classifier"], set(range(5)))
    ids = json.loads((run_dir / "dataset.json").read_text())["ids"]
    wrong = {ids[i] for i, a, b in zip(ref["test_index"], ref["y_true"], ref["y_pred"]) if a != b}
    assert {r[0].text for r in t.rows} <= wrong and len(t.rows) == min(12, len(wrong))


# --------------------------------------------------------------------------- learning curves
def test_learning_curve_x_is_training_images_and_cnn_rows_join(run, tmp_path):
    run_dir = run[0]
    lc = pd.read_csv(run_dir / "analysis" / "learning_curves.csv")
    cnn = pd.DataFrame([
        dict(dataset="fake-textures", family="cnn", feature="mobilenetv2-ft", classifier="end-to-end",
             weights="imagenet", split=0, fraction=f, n_train=n, accuracy=m, balanced_accuracy=m, macro_f1=m,
             fit_s=1.0, status="ok", error="", source=src)
        for f, n, m, src in [(0.25, 12, 0.5, "retrained"), (0.5, 24, 0.7, "retrained"),
                             (1.0, 48, 0.9, "record")]])
    cnn.to_csv(run_dir / "analysis" / "learning_curves_cnn.csv", index=False)
    from bench.report.document import FigureBlock
    try:
        blocks = sections.learning_blocks(RunData.load(run_dir), FigureBlock)
    finally:
        (run_dir / "analysis" / "learning_curves_cnn.csv").unlink()
    assert [b[0] for b in blocks] == ["figure", "details"]
    fig, t = blocks[0][1], blocks[1][1]["table"]
    assert fig.png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "End-to-end CNN (dashed): mobilenetv2-ft + end-to-end" in fig.caption
    assert "2 of the same" in fig.caption
    rows = [(r[0].text, r[1].sort, float(r[2].text), float(r[3].text), r[4].text) for r in t.rows]
    assert [r for r in rows if r[1] == "cnn"] == [("mobilenetv2-ft + end-to-end", "cnn", 0.25, 12, "50.0"),
                                                   ("mobilenetv2-ft + end-to-end", "cnn", 0.5, 24, "70.0"),
                                                   ("mobilenetv2-ft + end-to-end", "cnn", 1.0, 48, "90.0")]
    ok = lc[lc["status"] == "ok"]
    frozen = [r for r in rows if r[1] != "cnn"]
    assert len(frozen) == ok.groupby(["feature", "fraction"]).ngroups
    for label, fam, frac, n_train, text in frozen:
        g = ok[(ok["fraction"] == frac) & (ok["family"] == fam)]
        assert n_train == round(g["n_train"].mean()) and text.startswith(f"{100 * g['macro_f1'].mean():.1f}")


def test_learning_section_keeps_its_note_without_curves(run, doc):
    from bench.report.document import FigureBlock, Section
    assert any(b.kind == "figure" for s in doc.sections if s.id == "learning" for b in s.blocks)
    rd = RunData.load(run[0])
    rd.analysis["learning_curves"] = None
    sec = Section("learning", "Learning curves").add("note", "No learning curves: skipped (off).")
    sections.add_sections(rd, [sec], section_type=Section, figure_type=FigureBlock)
    assert [(b.kind, b.value) for b in sec.blocks] == [("note", "No learning curves: skipped (off).")]


# --------------------------------------------------------------------------- CNN learning curve stage
class _FakeSplit:
    def __init__(self, index, train, test):
        self.index, self.repeat, self.train, self.test = index, 0, np.asarray(train), np.asarray(test)


class _FakeAnalysis:
    def __init__(self, out, spec, records, y, budget=120.0):
        from bench.aggregate import best_by_family as bbf
        self.out, self.seed, self.y = out, 0, np.asarray(y)
        self.cfg = {"learning_curves": True, "analysis_budget_s": budget}
        self.ctx = type("Ctx", (), {"config": {"finetune": [spec]}})()
        self.records, self.ds = records, object()
        self.best = bbf(summarize(records))
        self.manifest = {"notes": [], "parts": {}}
        n = len(y)
        self._splits = [_FakeSplit(0, np.arange(0, n, 2), np.arange(1, n, 2))]

    def main_splits(self):
        return self._splits

    def part(self, name, status, **info):
        self.manifest["parts"][name] = {"status": status, **info}


def _cnn_record(split, n_train, fit_s=10.0):
    return rec.make_record(run_id="r", dataset="d", feature="tiny", family="cnn", classifier="end-to-end",
                           split=split, repeat=0, fold=split, status="ok", accuracy=0.9,
                           balanced_accuracy=0.9, macro_f1=0.88, fit_s=fit_s, predict_s=0.1,
                           n_train=n_train, n_test=n_train,
                           weights="n/a", cell_id=f"tiny__end-to-end__s{split}")


def test_cnn_learning_curve_retrains_on_the_frozen_rows_nested_subsets(tmp_path, monkeypatch):
    from bench import analysis, finetune, learning_cnn
    y = np.repeat([0, 1, 2], 16)
    calls = []

    def fake_run_cell(spec, dataset, train_idx, test_idx, split, work_dir, seed, **kw):
        calls.append((np.asarray(train_idx).copy(), np.asarray(test_idx).copy()))
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        (Path(work_dir) / "best.weights.h5").write_bytes(b"x")
        m = len(train_idx) / 100
        return [{"classifier": "end-to-end", "accuracy": m, "balanced_accuracy": m, "macro_f1": m,
                 "fit_s": 1.0}]

    monkeypatch.setattr(finetune, "run_cell", fake_run_cell)
    a = _FakeAnalysis(tmp_path, {"label": "tiny", "mode": "scratch"}, [_cnn_record(0, 24)], y)
    a.cfg["learning_fractions"] = [0.25, 0.5, 1.0]
    learning_cnn.run_part(a, analysis.nested_fraction)
    df = pd.read_csv(tmp_path / learning_cnn.FILE)
    assert df["fraction"].tolist() == [1.0, 0.25, 0.5]
    assert df["source"].tolist() == ["record", "retrained", "retrained"]
    assert df["macro_f1"].tolist()[0] == 0.88 and df["n_train"].tolist() == [24, 6, 12]
    train, test = a._splits[0].train, a._splits[0].test
    (small, t1), (big, t2) = calls
    assert set(small) < set(big) <= set(train) and (t1 == test).all() and (t2 == test).all()
    assert np.bincount(y[small]).tolist() == [2, 2, 2]  # stratified
    # the same subsets as the frozen-row learning curves
    rng = np.random.default_rng([0, 0])
    perms = {int(c): rng.permutation(np.flatnonzero(y[train] == c)) for c in np.unique(y[train])}
    assert (small == train[analysis.nested_fraction(y[train], 0.25, perms)]).all()
    assert not list(tmp_path.glob("learning_cnn/*/*/best.weights.h5"))  # weights are not kept
    assert a.manifest["parts"]["learning_curves_cnn"]["status"] == "done"


def test_cnn_learning_curve_respects_the_budget(tmp_path, monkeypatch):
    from bench import analysis, finetune, learning_cnn
    monkeypatch.setattr(finetune, "run_cell", lambda *a, **k: pytest.fail("must not train"))
    a = _FakeAnalysis(tmp_path, {"label": "tiny", "mode": "scratch"}, [_cnn_record(0, 24, fit_s=500.0)],
                      np.repeat([0, 1, 2], 16), budget=60.0)
    a.cfg["learning_fractions"] = [0.25, 0.5]
    learning_cnn.run_part(a, analysis.nested_fraction)
    assert pd.read_csv(tmp_path / learning_cnn.FILE)["source"].tolist() == ["record"]
    assert a.manifest["parts"]["learning_curves_cnn"]["skipped_fractions"] == [0.25, 0.5]
    assert "report.analysis_budget_s" in a.manifest["notes"][0]


def test_cnn_learning_curve_skips_without_a_recipe(tmp_path):
    from bench import analysis, learning_cnn
    a = _FakeAnalysis(tmp_path, {"label": "other", "mode": "scratch"}, [_cnn_record(0, 24)],
                      np.repeat([0, 1], 8))
    learning_cnn.run_part(a, analysis.nested_fraction)
    assert a.manifest["parts"]["learning_curves_cnn"]["status"] == "skipped"
    assert not (tmp_path / learning_cnn.FILE).exists()


# --------------------------------------------------------------------------- reproduce (values)
def test_reproduce_section_shows_config_and_commands(run, page):
    run_dir = run[0]
    cfg = (run_dir / "config.yaml").read_text()
    m = re.search(r'<pre class="code" id="config-yaml"><code>(.*?)</code></pre>', page, re.S)
    shown = htmlmod.unescape(m.group(1))
    assert yaml.safe_load(shown) == yaml.safe_load(cfg)  # comments only
    assert "- resnet50-gap  # ran with random-init weights: not pretrained\n" in shown
    assert shown.replace("  # ran with random-init weights: not pretrained", "") == cfg
    assert re.search(r'<details class="more" id="d-config-yaml">', page)  # collapsible
    def cmd(i):
        return htmlmod.unescape(re.search(rf'id="cmd-{i}"><code>(.*?)</code>', page, re.S).group(1))

    assert cmd("rerun-config") == "python -m bench run --config config.yaml"
    assert cmd("rerun-launched") == "python -m bench run --config pipelines/fake.yaml"
    assert cmd("report") == f"python -m bench report results/{run_dir.name}"


def test_rerun_command_writes_into_the_current_folder(tmp_path):
    run_dir = make_fake_run(tmp_path, analysis=False)
    rd = RunData.load(run_dir)
    rd.config["output"] = {"results_dir": "/data/runs", "reports_dir": "reports"}
    cmds = sections.reproduce_commands(rd)
    # an absolute results folder would make the rerun resume the original run instead of computing
    assert cmds["config"] == "python -m bench run --config config.yaml output.results_dir=results"
    assert cmds["report"] == f"python -m bench report /data/runs/{run_dir.name}"


@pytest.mark.parametrize("env, want", [
    ({"argv": ["run", "--config", "p.yaml", "features=[hog, lbp]"]},
     "python -m bench run --config p.yaml 'features=[hog, lbp]'"),
    ({"command": "/x/bench/__main__.py run --config p.yaml seed=1"},
     "python -m bench run --config p.yaml seed=1"),
    ({"command": "/usr/bin/bench run"}, "python -m bench run"),
    ({"command": "/venv/bin/pytest -q tests"}, None),
    ({"argv": None, "command": ""}, None),
])
def test_launched_command_from_env(env, want):
    assert sections.launched_command(env) == want


def test_git_text_and_dirty_checkout_warning(tmp_path):
    run_dir = make_fake_run(tmp_path, analysis=False)
    env = json.loads((run_dir / "env.json").read_text())
    env["git"] = {"commit": "a" * 40, "short": "a" * 12, "branch": "main", "dirty": True}
    env["sessions"] = [{"git": {"commit": "b" * 40}}]
    (run_dir / "env.json").write_text(json.dumps(env))
    from bench.report.document import Section
    s = sections.reproduce_section(RunData.load(run_dir), Section)
    facts = dict(s.blocks[0].value)
    assert facts["Git commit"].startswith("a" * 40 + " (branch main)")
    assert "uncommitted" in facts["Git commit"]
    assert "bbbbbbbbbbbb" in facts["Sessions"]


@pytest.mark.slow
def test_cnn_learning_curve_end_to_end_with_a_real_cnn(tmp_path):
    """A run with a tiny scratch CNN: the analysis retrains it on smaller subsets of split 0 and the
    report's learning curves hold its points, x = training images."""
    from run_helpers import toy_config

    from bench import engine
    from bench.report.document import FigureBlock
    cfg = toy_config(tmp_path, "report.learning_curves=true", "report.gallery=3",
                     "finetune=[{label: tiny, mode: scratch, input_size: 16, filters: [4], epochs: 2, "
                     "patience: 1}]", n_per_class=12)
    ctx = engine.run(cfg)
    df = pd.read_csv(ctx.run_dir / "analysis" / "learning_curves_cnn.csv")
    assert df["source"].tolist()[0] == "record" and (df["source"] == "retrained").sum() >= 1
    assert (df["n_train"].iloc[1:] < df["n_train"].iloc[0]).all() and df["status"].eq("ok").all()
    blocks = sections.learning_blocks(RunData.load(ctx.run_dir), FigureBlock)
    t = blocks[1][1]["table"]
    shown = sorted(float(r[3].text) for r in t.rows if r[1].sort == "cnn")
    assert shown == sorted(df["n_train"].astype(float))
    assert (ctx.run_dir / "analysis" / "misclassified.json").is_file()


def test_screenshots_script_refuses_a_folder_without_a_report(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import screenshots
    assert screenshots.main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert screenshots.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no report.html and no summary.pdf" in err and "hint: rebuild it with" in err
    from PIL import Image
    Image.new("RGB", (1280, 800), "white").save(tmp_path / "big.png")
    assert screenshots._small_png(tmp_path / "big.png", tmp_path / "small.png") < screenshots.MAX_BYTES


@pytest.mark.browser
def test_printing_the_html_opens_every_collapsible_block(run):
    """Print-to-PDF in headless Chromium: the per-fold table and the config, collapsed on screen, are
    printed (the page opens its <details> before printing and closes them after)."""
    import base64
    import io
    import shutil
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium not installed (pip install -e .[test])")
    pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extra: pip install -e .[test]")
    from selenium.webdriver.chrome.service import Service
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    drv = shutil.which("chromedriver")
    if browser is None or drv is None:
        pytest.skip("headless Chromium not available: install chromium and chromium-driver "
                    "(make browser-deps)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(executable_path=drv))
    try:
        d.get(run[1]["html"].resolve().as_uri())
        closed = "return Array.from(document.querySelectorAll('details.more')).filter(x => !x.open).length"
        assert d.execute_script(closed) >= 2
        pdf = base64.b64decode(d.execute_cdp_cmd("Page.printToPDF", {})["data"])
        assert d.execute_script(closed) >= 2  # closed again after printing
    finally:
        d.quit()
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert "Fold 4" in text and "Mean ± std" in text  # the per-fold table
    assert "n_repeats" in text  # the resolved config

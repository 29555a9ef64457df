"""One name, one colour, one mention (issue 12): a row reads and looks the same in every table,
figure and legend; columns say what they hold; each verdict and note is shown once."""
import ast
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_hex

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_run import CNN, make_fake_run  # noqa: E402

from bench import report  # noqa: E402
from bench.report import labels, plots, tables  # noqa: E402
from bench.report.document import build_document  # noqa: E402
from bench.report.rundata import RunData  # noqa: E402

REPORT = Path(__file__).resolve().parents[1] / "bench" / "report"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_fake_run(tmp_path_factory.mktemp("consistency"), random_split=True,
                         analysis_cfg={"learning_curves": False, "retrieval": False, "gallery": 0})


@pytest.fixture(scope="module")
def doc(run):
    return build_document(RunData.load(run))


@pytest.fixture(scope="module")
def html(run, tmp_path_factory):
    return report.build(run, tmp_path_factory.mktemp("consistency-report"), formats=("html",))["html"].read_text()


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# --------------------------------------------------------------------------- names and colours
def test_one_display_name_everywhere(run):
    """Tables, the bar chart and the CLI's label agree on every row's name."""
    rd = RunData.load(run)
    bars = plots.bar_chart(rd.summary)
    ticks = [t.get_text().replace("\n", " ") for t in bars.axes[0].get_yticklabels()]
    for _, r in rd.summary.iterrows():
        name = labels.name_of(r)
        assert name == r["label"]                                    # bench.aggregate's label (the CLI)
        assert name == tables.label_of(r)
        assert name in ticks, name
    assert labels.name_of(rd.summary[rd.summary["weights"] == "random-init"].iloc[0]).count("[random-init]") == 1


def test_one_colour_per_end_to_end_model_in_every_figure(run):
    rd = RunData.load(run)
    pal = labels.Palette.of_summary(rd.summary, rd.finetune["model"].unique())
    want = to_hex(pal.model(CNN["label"]))
    bars = plots.bar_chart(rd.summary, palette=pal)
    cnn_pos = [i for i, t in enumerate(reversed([labels.name_of(r) for r in plots.bar_rows(rd.summary).itertuples()]))
               if t.startswith(CNN["label"])]
    patches = bars.axes[0].patches
    assert cnn_pos and all(to_hex(patches[i].get_facecolor()) == want for i in cnn_pos)
    ft = plots.finetune_figure(rd.finetune, {CNN["label"]: f"{CNN['label']} [random-init]"}, pal)
    bold = [ln for ln in ft.axes[0].get_lines() if ln.get_linewidth() >= 2]
    assert bold and {to_hex(ln.get_color()) for ln in bold} == {want}
    legend = [t.get_text() for t in ft.axes[0].get_legend().get_texts()]
    assert all("[random-init]" in t for t in legend)                 # the legend carries the weights tag
    # the palette depends on the set of models only, not on the order they come in
    a, b = labels.Palette(["b-model", "a-model", "c"]), labels.Palette(["c", "a-model", "b-model [random-init]"])
    assert all(a.model(m) == b.model(m) for m in ("a-model", "b-model", "c"))
    assert len({to_hex(a.model(m)) for m in ("a-model", "b-model", "c")}) == 3
    assert to_hex(a.family("cnn")) == to_hex(labels.FAMILY_COLORS["cnn"])


def test_bar_legend_and_caption_describe_what_is_drawn(run):
    rd = RunData.load(run)
    fig = plots.bar_chart(rd.summary)
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "random-split:" in legend and "leaky" in legend and "random-init weights" in legend
    only_subset = rd.summary[rd.summary["variant"] == ""].copy()
    only_subset.loc[only_subset.index[0], "variant"] = "folds-subset"
    only_subset["weights"] = only_subset["weights"].replace("random-init", "imagenet")
    legend = " ".join(t.get_text() for t in plots.bar_chart(only_subset).legends[0].get_texts())
    assert "folds-subset" in legend and "leaky" not in legend and "random-init" not in legend
    from bench.report.document import _bar_caption
    cap = _bar_caption(plots.bar_rows(only_subset))
    assert "folds-subset" in cap and "random-split" not in cap and "Hatched" not in cap


# --------------------------------------------------------------------------- columns
def test_leaderboard_columns_say_what_they_hold(run):
    rd = RunData.load(run)
    balanced = tables.classes_balanced(tables.class_counts(rd))
    assert balanced is True                                           # 20 images per class
    t = tables.leaderboard(rd.summary, balanced=balanced)
    assert "Balanced acc. %" not in t.columns and "Dim" not in t.columns
    assert "Balanced accuracy is not shown: the classes are balanced" in t.caption
    assert {"Feature dim", "Trainable params"} <= set(t.columns)
    fd, tp = t.columns.index("Feature dim"), t.columns.index("Trainable params")
    for row, (_, r) in zip(t.rows, rd.summary.iterrows()):
        if r["family"] == "cnn":
            assert row[fd].text == "-" and row[tp].text == f"{int(r['n_features']):,}"
        else:
            assert row[fd].text == f"{r['n_features']:.0f}" and row[tp].text == "-"
    full = tables.leaderboard(rd.summary, balanced=False)
    assert "Balanced acc. %" in full.columns and "Balanced accuracy is not shown" not in full.caption
    assert tables.classes_balanced([30, 20, 10]) is False and tables.classes_balanced([]) is None
    no_cnn = tables.leaderboard(rd.summary[rd.summary["family"] != "cnn"], balanced=True)
    assert "Trainable params" not in no_cnn.columns                    # a column with nothing in it


def test_hybrid_extraction_time_includes_its_parts():
    """The default run's hybrid was shown at 9.5 ms/img, below its own CNN part's 11.1 ms."""
    cnn_params = {"backbone": "efficientnet_lite0", "pooling": "avg", "input_size": 96}
    features = {"lbp": {"name": "lbp", "family": "handcrafted", "params": {}, "extract_ms_per_image": 1.3},
                "lite0-gap": {"name": "cnn", "family": "deep", "params": cnn_params, "extract_ms_per_image": 11.1},
                "lite0-gmp": {"name": "cnn", "family": "deep", "params": {**cnn_params, "pooling": "max"},
                              "extract_ms_per_image": 10.0},
                "lbp+lite0-gap": {"name": "concat", "family": "hybrid", "extract_ms_per_image": 9.5,
                                  "params": {"parts": [{"name": "lbp"}, {"name": "cnn", "params": cnn_params}]}},
                "odd": {"name": "concat", "family": "hybrid", "extract_ms_per_image": 3.0,
                        "params": {"parts": ["glcm", "lbp"]}}}
    costs = tables.part_costs(features)
    assert set(costs) == {"lbp+lite0-gap"}                           # "odd" has a part without a twin
    ms, text = costs["lbp+lite0-gap"]
    assert ms == pytest.approx(12.4) and ms > features["lite0-gap"]["extract_ms_per_image"]
    assert text == "lbp 1.3 + lite0-gap 11.1"
    summary = pd.DataFrame({"feature": ["lbp+lite0-gap", "odd", "lbp"], "family": ["hybrid", "hybrid", "handcrafted"],
                            "extract_ms_per_image": [9.5, 3.0, 1.3]})
    out = tables.with_part_costs(summary, features)
    assert out["extract_ms_per_image"].tolist() == pytest.approx([12.4, 3.0, 1.3])
    assert summary["extract_ms_per_image"].tolist() == [9.5, 3.0, 1.3]  # the input is not changed


def test_family_table_p_vs_best_and_cost(run):
    rd = RunData.load(run)
    t = tables.family_table(rd.summary, rd=rd)
    assert t.columns[-2:] == ["p vs best row", "Cost s"]
    p = [row[-2] for row in t.rows]
    assert sum(c.text == "best" for c in p) == 1
    best = tables.best_by_family(rd.summary)
    top = max(best.values(), key=lambda r: r["macro_f1_mean"])
    for row, (fam, r) in zip(t.rows, best.items()):
        if tables.key_of(r) != tables.key_of(top):
            c = tables.compare_rows(rd, top, r)
            assert row[-2].text == tables.fmt_p(c.ttest.p) and row[-2].sub == "t-test"


# --------------------------------------------------------------------------- once each
def test_verdict_and_tsne_note_appear_once(doc, html):
    text = _text(html)
    v = _text(doc.verdicts[0])
    assert text.count(v) == 1
    assert html.count('class="verdict"') == 1
    assert text.count("fitted on the plotted images") + text.count("fitted that stage on the plotted") == 1


def test_figure_captions_count_what_is_drawn(run, doc):
    figs = {f.name: f for f in doc.figures()}
    n_rows = int(RunData.load(run).summary["macro_f1_mean"].notna().sum())
    assert f"of the {n_rows} rows" in figs["scores"].caption
    assert "hand-crafted" in figs["confusion"].caption and "deep (frozen CNN)" in figs["confusion"].caption
    assert f"{CNN['label']}" in figs["finetune"].caption and "dashed: validation" in figs["finetune"].caption
    tsne = RunData.load(run).analysis["tsne"]
    assert f"each of {len(tsne['features'])} feature spaces" in figs["tsne"].caption


def test_report_functions_stay_short():
    """The rule of the project: functions under ~80 lines (document.build_document was 210)."""
    long = []
    for name in ("document.py", "tables.py", "plots.py", "pdf.py", "summary_pdf.py", "html.py", "labels.py",
                 "summary.py"):
        tree = ast.parse((REPORT / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{name}:{node.name} ({n} lines)")
    assert not long, long

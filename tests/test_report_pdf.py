"""The PDFs as a reader gets them (issue 12): every row named in full, weights tag included;
figures whole on one page; headings never alone at the foot of a page; summary.pdf one A4
page with the methods line, both confusion matrices and the Contribution box.

Checked on the PDFs themselves: text with pypdf, image placements from the content
streams, pages rendered with pdftoppm (skipped with the reason when absent).
"""
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_run import CNN, make_fake_run  # noqa: E402
from run_helpers import run_cli  # noqa: E402

from bench import report  # noqa: E402
from bench.report import labels  # noqa: E402
from bench.report.document import build_document  # noqa: E402
from bench.report.rundata import RunData  # noqa: E402

pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extra: pip install -e .[test]")

# the default pipeline's kinds of rows and names (GAP/GMP twins, a hybrid, a random-init row)
DEFAULT_LIKE = [
    dict(label="lbp", family="handcrafted", weights="n/a", skill=0.74, dim=54, ms=1.3),
    dict(label="parcel_shape", family="handcrafted", weights="n/a", skill=0.7, dim=12, ms=0.4),
    dict(label="lite0-gap", family="deep", weights="imagenet", skill=0.86, dim=1280, ms=11.1),
    dict(label="lite0-gmp", family="deep", weights="imagenet", skill=0.83, dim=1280, ms=11.0),
    dict(label="lite0-block4-gap", family="deep", weights="random-init", skill=0.5, dim=112, ms=6.0),
    dict(label="lbp+lite0-gap", family="hybrid", weights="imagenet", skill=0.88, dim=1334, ms=9.5),
]
CLASSIFIERS = {"svm": 0.03, "random_forest": 0.0, "logreg": -0.02}
AUTHOR, CONTRIBUTION = "Ada Student", "I wrote the GLCM feature and chose the folds."


def squash(text: str) -> str:
    """Whitespace removed: a name wrapped onto two lines still reads as one."""
    return re.sub(r"\s+", "", text)


@lru_cache(maxsize=16)
def pdf_text(path) -> str:
    return "\n".join(p.extract_text() for p in pypdf.PdfReader(path).pages)


@pytest.fixture(scope="module")
def default_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdf-default")
    run = make_fake_run(root / "runs", features=DEFAULT_LIKE, classifiers=CLASSIFIERS, random_split=True,
                        analysis_cfg={"learning_curves": False, "tsne": False})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["report"].update(author=AUTHOR, contribution=CONTRIBUTION)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run, report.build(run, root / "report")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The real smoke pipeline (pipelines/smoke.yaml), run and reported as a user does."""
    root = tmp_path_factory.mktemp("pdf-smoke")
    p = run_cli("run", "--config", "pipelines/smoke.yaml", f"output.results_dir={root / 'results'}",
                f"output.reports_dir={root / 'reports'}", f"cache.dir={root / 'cache'}", "parallel.n_jobs=1")
    assert p.returncode == 0, p
    run = next((root / "results").iterdir())
    out = root / "reports" / run.name
    return run, {"pdf": out / "report.pdf", "summary_pdf": out / "summary.pdf", "figures": out / "figures"}


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The real default pipeline (pipelines/default.yaml): minutes of CNN training, so slow."""
    root = tmp_path_factory.mktemp("pdf-default-run")
    p = run_cli("run", "--config", "pipelines/default.yaml", f"output.results_dir={root / 'results'}",
                f"output.reports_dir={root / 'reports'}", f"cache.dir={root / 'cache'}")
    assert p.returncode == 0, p
    run = next((root / "results").iterdir())
    out = root / "reports" / run.name
    return run, {"pdf": out / "report.pdf", "summary_pdf": out / "summary.pdf", "figures": out / "figures"}


@pytest.fixture(params=["smoke", "default_like", pytest.param("default", marks=pytest.mark.slow)])
def built(request):
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- names
def test_every_row_named_in_full_with_its_weights_tag(built):
    run, paths = built
    rd = RunData.load(run)
    text = squash(pdf_text(paths["pdf"]))
    assert "…" not in text                                        # nothing cut anywhere
    for _, r in rd.summary.iterrows():                             # the leaderboard: feature + tags
        name = labels.feature_name(r["feature"], r["weights"], r["variant"])
        assert squash(name) in text, name
    doc = build_document(rd)
    shown = [c.text for t in doc.tables() for row in t.rows for c in row]
    for _, r in rd.summary.iterrows():                             # full row names where tables show them
        name = labels.name_of(r)
        if name in shown:
            assert squash(name) in text, name
    summary = squash(pdf_text(paths["summary_pdf"]))
    assert "…" not in summary
    for row in doc.summary_table.rows:                            # the family table of the hand-in
        assert squash(row[1].text) in summary, row[1].text


def test_default_like_names_tell_twins_apart(default_like):
    _, paths = default_like
    text = squash(pdf_text(paths["pdf"]))
    lines = pdf_text(paths["pdf"]).splitlines()
    for name in ("lite0-gap", "lite0-gmp", "lbp+lite0-gap", "lite0-block4-gap [random-init]", "lbp (random-split)"):
        assert squash(name) in text, name
    assert not [ln for ln in lines if re.search(r"\blite0-g…|lbp\+lite0…|mobile…", ln)]


# --------------------------------------------------------------------------- summary.pdf
def test_summary_pdf_is_one_a4_page_hand_in(built):
    run, paths = built
    reader = pypdf.PdfReader(paths["summary_pdf"])
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (float(box.width), float(box.height)) == pytest.approx((595.44, 841.68), abs=1.0)  # A4 portrait
    text = reader.pages[0].extract_text()
    flat = squash(text)
    for part in ("Methods.", "Data:", "Features:", "Classifiers:", "Protocol:", "Bestrowofeachfamily",
                 "pvsbestrow", "Costs", "Confusionmatrices", "Caveats", "grouped:", "CNNweights:", "n=",
                 "Contribution"):
        assert part in flat, part
    rd = RunData.load(run)
    doc = build_document(rd)
    assert len(doc.summary_panels) == 2
    for p in doc.summary_panels:                                   # both matrices, titled in text
        assert squash(p.caption) in flat, p.caption
    placed = _placements(paths["summary_pdf"])
    dims = sorted(d[1:3] for d in placed)
    for p in doc.summary_panels:                                   # ... and drawn as images
        from PIL import Image
        import io
        with Image.open(io.BytesIO(p.png)) as im:
            assert im.size in dims


def test_summary_contribution_box_from_the_config(default_like, smoke):
    run, paths = default_like
    flat = squash(pypdf.PdfReader(paths["summary_pdf"]).pages[0].extract_text())
    assert squash(f"Contribution — {AUTHOR}") in flat and squash(CONTRIBUTION) in flat
    assert squash(AUTHOR) in flat
    run, paths = smoke                                               # not given: the box is empty
    flat = squash(pypdf.PdfReader(paths["summary_pdf"]).pages[0].extract_text())
    assert "Contribution" in flat and "Yourownwords" in flat and squash(CONTRIBUTION) not in flat


def test_contribution_must_be_text():
    from bench.config import load_config
    from bench.errors import ConfigError
    with pytest.raises(ConfigError, match="report.contribution"):
        load_config(None, ["features=[hog]", "classifiers=[svm]", "report.contribution=[1, 2]"])
    cfg = load_config(None, ["features=[hog]", "classifiers=[svm]", "report.author=Ada"])
    assert cfg["report"]["author"] == "Ada" and cfg["report"]["contribution"] is None


# --------------------------------------------------------------------------- figures and headings
def _mul(a, b):
    """PDF matrix product a × b (a applied first)."""
    return [a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2],
            a[2] * b[1] + a[3] * b[3], a[4] * b[0] + a[5] * b[2] + b[4], a[4] * b[1] + a[5] * b[3] + b[5]]


def _placements(path) -> list[tuple]:
    """``(page, width_px, height_px, x0, y0, x1, y1)`` of every image drawn (points)."""
    from pypdf.generic import ContentStream
    reader = pypdf.PdfReader(path)
    out = []
    for k, page in enumerate(reader.pages):
        xobjects = page["/Resources"].get("/XObject", {})
        ctm, stack = [1, 0, 0, 1, 0, 0], []
        for operands, op in ContentStream(page.get_contents(), reader).operations:
            if op == b"q":
                stack.append(ctm)
            elif op == b"Q":
                ctm = stack.pop()
            elif op == b"cm":
                ctm = _mul([float(v) for v in operands], ctm)
            elif op == b"Do":
                im = xobjects[operands[0]].get_object()
                if im.get("/Subtype") != "/Image":
                    continue
                xs = [ctm[4], ctm[4] + ctm[0] + ctm[2]]
                ys = [ctm[5], ctm[5] + ctm[1] + ctm[3]]
                out.append((k, int(im["/Width"]), int(im["/Height"]), min(xs), min(ys), max(xs), max(ys)))
    return out


def test_each_figure_whole_on_one_page(built, tmp_path):
    """Each figure PNG appears once, at its full pixel size (a slice would not), inside one
    page; rendered with pdftoppm, the place it occupies carries ink."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not found (apt-get install poppler-utils, or make browser-deps)")
    from PIL import Image
    _, paths = built
    placed = _placements(paths["pdf"])
    reader = pypdf.PdfReader(paths["pdf"])
    figures = sorted(paths["figures"].glob("*.png"))
    assert len(figures) >= 3
    want = {}
    for f in figures:
        with Image.open(f) as im:
            want[im.size] = want.get(im.size, 0) + 1
    got = {}
    for page, w, h, *_ in placed:
        got[(w, h)] = got.get((w, h), 0) + 1
    assert got == want                                         # every figure, each exactly once, unsliced
    dpi = 40
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(paths["pdf"]), str(tmp_path / "p")], check=True)
    pages = {int(p.stem.split("-")[-1]) - 1: p for p in tmp_path.glob("p-*.png")}
    assert len(pages) == len(reader.pages)
    for page, w, h, x0, y0, x1, y1 in placed:
        box = reader.pages[page].mediabox
        assert 0 <= x0 < x1 <= float(box.width) and 0 <= y0 < y1 <= float(box.height), (page, w, h)
        g = np.asarray(Image.open(pages[page]).convert("L"), dtype=float)
        s = dpi / 72
        top, bottom = int((float(box.height) - y1) * s), int((float(box.height) - y0) * s)
        region = g[top:bottom, int(x0 * s):int(x1 * s)]
        assert region.size and (region < 200).mean() > 0.005, f"figure {w}x{h} on page {page + 1} is blank"


def _texts(path) -> list[list[tuple[float, float, str]]]:
    """Per page: ``(y, font size, text)`` of every text drawn (y in points from the bottom)."""
    pages = []
    for page in pypdf.PdfReader(path).pages:
        out = []
        page.extract_text(visitor_text=lambda t, cm, tm, fd, fs: out.append((cm[5], fs, t)) if t.strip()
                          else None)
        pages.append(out)
    return pages


def test_headings_never_end_a_page(built):
    """A section heading (14 pt) always has content below it on its own page: text (other than
    the page footer) or a figure."""
    _, paths = built
    placed = _placements(paths["pdf"])
    headings = 0
    for k, texts in enumerate(_texts(paths["pdf"])):
        for y, size, t in texts:
            if size != 14:
                continue
            headings += 1
            below_text = [u for yy, fs, u in texts if yy < y - 1 and yy > 0.45 * 72 and fs < 14]
            below_fig = [p for p in placed if p[0] == k and p[6] < y]
            assert below_text or below_fig, f"heading {t!r} alone at the foot of page {k + 1}"
    assert headings >= 8


def test_writer_log_keeps_heading_with_first_block(smoke, tmp_path):
    """The writer's own record: every heading sits on the page of the element drawn after it."""
    from bench.report import pdf
    doc = build_document(RunData.load(smoke[0]))
    log = []
    pdf.write_report(doc, tmp_path / "r.pdf", log=log)
    heads = [i for i, e in enumerate(log) if e[1] == "heading"]
    assert len(heads) >= 8
    for i in heads:
        assert i + 1 < len(log) and log[i + 1][1] != "heading", log[i]
        assert log[i + 1][0] == log[i][0], (log[i], log[i + 1])


# --------------------------------------------------------------------------- wrapping
def test_wrap_keeps_every_character_and_fits():
    from bench.report.pdf import text_width, wrap
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghij-+_/ [].0123456789") + ["random-init"]
    for _ in range(200):
        s = "".join(rng.choice(alphabet, size=int(rng.integers(1, 60))))
        width = float(rng.uniform(0.3, 2.0))
        lines = wrap(s, width, 7)
        assert squash("".join(lines)) == squash(s)
        assert all(text_width(ln, 7) <= width + 1e-6 or len(ln) == 1 for ln in lines), (s, lines)


def test_narrow_table_wraps_names_instead_of_cutting(tmp_path):
    from matplotlib.backends.backend_pdf import PdfPages

    from bench.report import pdf
    from bench.report.document import Document
    from bench.report.tables import Cell, Table
    long = "lbp+lite0-block4-gap [random-init] (folds-subset)"
    t = Table("t", ["Feature", "Macro-F1 %"], [[Cell(long), Cell("91.2 ± 3.4", sub="[88.1, 94.3]")]], {1})
    doc = Document("t", "s", "r", [], [], None, None, [])
    with PdfPages(tmp_path / "t.pdf") as pp:
        wr = pdf._Writer(pp, doc)
        wr.new_page()
        pdf.draw_table(wr, t, width=1.6)
        wr.flush()
    text = pdf_text(tmp_path / "t.pdf")
    assert squash(long) in squash(text) and "…" not in text
    assert "[88.1, 94.3]" in text and len([ln for ln in text.splitlines() if "lite0" in ln or "init" in ln]) >= 2


def test_model_of_strips_the_tag():
    assert labels.model_of(f"{CNN['label']} [random-init]") == CNN["label"]

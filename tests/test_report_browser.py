"""The HTML report as a person sees it: headless Chromium, every image decoded, no console error.

Needs the system ``chromium`` + ``chromium-driver`` packages (Debian) and selenium; it is
skipped with the reason when one of them is missing (``make browser-deps`` installs them
where it can); any other failure to start the browser fails the tests.
The driver is the system chromedriver: selenium never downloads one.
"""
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_run import FEATURES, make_fake_run  # noqa: E402

from bench import report  # noqa: E402

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)


def _which(names, extra_dirs=("/usr/lib/chromium", "/usr/lib/chromium-browser")):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
        for d in extra_dirs:
            if os.access(os.path.join(d, n), os.X_OK):
                return os.path.join(d, n)
    return None


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium not installed (pip install -e .[test])")
    from selenium.webdriver.chrome.service import Service
    browser, drv = _which(BROWSERS), _which(DRIVERS)
    if browser is None or drv is None:
        pytest.skip("headless Chromium not available: install the system packages chromium and "
                    "chromium-driver (make browser-deps)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,900", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # installed but failing to start (e.g. a driver/browser version mismatch) is a failure,
    # not a skip: only the missing programs above skip
    d = webdriver.Chrome(options=opts, service=Service(executable_path=drv))
    yield d
    d.quit()


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = make_fake_run(root / "runs", features=FEATURES[:2] + FEATURES[3:], counts=True,
                        analysis_cfg={"learning_curves": False, "tsne": False})
    return report.build(run, root / "report", formats=("html",))["html"]


def test_report_opens_with_all_images_and_no_console_errors(driver, report_html, tmp_path):
    driver.get(report_html.resolve().as_uri())
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    state = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    assert len(state) > 20
    broken = [alt for complete, width, alt in state if not (complete and width > 0)]
    assert not broken, f"images not decoded: {broken[:5]}"
    # a truncated PNG still loads with its full size; its missing rows stay transparent. Draw
    # each image on a canvas at its natural size and read its last row back.
    painted = driver.execute_script("""
        return Array.from(document.images).map(function (img) {
            var c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            var g = c.getContext('2d');
            g.drawImage(img, 0, 0);
            var rows = [0, Math.floor(c.height / 2), c.height - 1].map(function (y) {
                var d = g.getImageData(0, y, c.width, 1).data, opaque = 0;
                for (var k = 3; k < d.length; k += 4) { if (d[k] > 0) opaque++; }
                return opaque / c.width;
            });
            return [img.alt, rows];
        });""")
    assert len(painted) == len(state)
    empty = [(alt, rows) for alt, rows in painted if min(rows) < 0.5]
    assert not empty, f"images not fully decoded (share of painted pixels in first/middle/last row): {empty[:5]}"
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors
    # the class name with HTML is shown as text, never executed
    assert "<script>alert(1)</script>" in driver.find_element("tag name", "body").text
    shot = tmp_path / "report.png"
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_leaderboard_sorts_on_header_click(driver, report_html):
    driver.get(report_html.resolve().as_uri())

    def first_col(table_id, col):
        return driver.execute_script(
            f"return Array.from(document.querySelectorAll('#{table_id} tbody tr'))"
            f".map(r => r.cells[{col}].getAttribute('data-sort'))")

    headers = driver.find_elements("css selector", "#t-leaderboard thead th")
    names = [h.text.strip().rstrip("↕▲▼").strip() for h in headers]
    fit = names.index("Fit s")
    def click(el):  # the header may sit under the sticky menu or off the scrolled table: click via JS
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", el)

    button = headers[fit].find_element("css selector", "button.sort")
    click(button)  # numeric column: first click sorts descending
    v = [float(x) for x in first_col("t-leaderboard", fit) if x not in (None, "")]
    assert v == sorted(v, reverse=True)
    click(button)
    v = [float(x) for x in first_col("t-leaderboard", fit) if x not in (None, "")]
    assert v == sorted(v)
    assert driver.find_elements("css selector", "#t-leaderboard th[aria-sort='ascending']")
    assert not [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def test_sorting_works_from_the_keyboard(driver, report_html):
    """Tab to a header's button and press Enter (then Space): the rows sort, aria-sort says how."""
    from selenium.webdriver.common.keys import Keys
    driver.get(report_html.resolve().as_uri())
    buttons = driver.find_elements("css selector", "#t-leaderboard thead th button.sort")
    names = [b.text.strip() for b in buttons]
    col = names.index("Fit s")
    th = driver.find_elements("css selector", "#t-leaderboard thead th")[col]
    assert th.get_attribute("aria-sort") is None
    driver.execute_script("arguments[0].focus()", buttons[col])
    assert driver.switch_to.active_element == buttons[col]        # reachable by focus (a real button)
    buttons[col].send_keys(Keys.ENTER)
    vals = driver.execute_script(
        f"return Array.from(document.querySelectorAll('#t-leaderboard tbody tr')).map(r => r.cells[{col}]"
        ".getAttribute('data-sort'))")
    v = [float(x) for x in vals if x not in (None, "")]
    assert v == sorted(v, reverse=True) and th.get_attribute("aria-sort") == "descending"
    buttons[col].send_keys(Keys.SPACE)
    assert th.get_attribute("aria-sort") == "ascending"
    assert all(b.get_attribute("type") == "button" for b in buttons)


# --------------------------------------------------------------------------- layout (issue 12)
LONG = [dict(label="lbp+efficientnet_lite0-block4-gap-multiscale", family="hybrid", weights="imagenet",
             skill=0.8, dim=1334, ms=25.0),
        dict(label="efficientnet_lite0-gap-tta-highres", family="deep", weights="random-init", skill=0.5,
             dim=1280, ms=61.0)]


@pytest.fixture(scope="module")
def wide_html(tmp_path_factory):
    """The widest report we make: long feature names, the random-init tag, variant rows, a CNN
    row (trainable params column), imbalanced classes (balanced accuracy kept), 4 classifiers."""
    import json
    root = tmp_path_factory.mktemp("wide")
    run = make_fake_run(root / "runs", features=FEATURES[:2] + FEATURES[3:] + LONG, random_split=True,
                        classifiers={"random_forest": 0.0, "svm-rbf": 0.03, "logreg": 0.0, "knn": -0.05},
                        analysis=False)
    ds = json.loads((run / "dataset.json").read_text())
    ds["labels"] = [0] * 30 + [1] * 20 + [2] * 10                 # what the balance test reads
    (run / "dataset.json").write_text(json.dumps(ds))
    return report.build(run, root / "report", formats=("html",))["html"]


def _viewport(driver, width, height=800):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


TABLE_FIT = """return Array.from(document.querySelectorAll('table.data')).map(t =>
    [t.id, t.scrollWidth, t.parentElement.clientWidth, t.closest('section').clientWidth])"""


@pytest.mark.parametrize("fixture", ["report_html", "wide_html"])
def test_tables_fit_a_1280_window(driver, request, fixture):
    page = request.getfixturevalue(fixture)
    _viewport(driver, 1280)
    try:
        driver.get(page.resolve().as_uri())
        sizes = driver.execute_script(TABLE_FIT)
        assert len(sizes) >= 5
        over = [s for s in sizes if s[1] > s[2] or s[2] > s[3]]
        assert not over, f"tables wider than their card at 1280 px (id, scrollWidth, clientWidth): {over}"
        heads = driver.execute_script("return Array.from(document.querySelectorAll('#t-leaderboard th'))"
                                      ".map(h => h.textContent.trim())")
        if fixture == "wide_html":
            assert "Balanced acc. %" in heads and "Trainable params" in heads and "Feature dim" in heads
        else:
            assert "Balanced acc. %" not in heads
        doc = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert doc[0] <= doc[1]
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_stacked_cards_at_400_px(driver, wide_html):
    _viewport(driver, 400)
    try:
        driver.get(wide_html.resolve().as_uri())
        state = driver.execute_script("""
            var t = document.querySelector('#t-leaderboard'), td = t.querySelector('tbody td');
            return [getComputedStyle(td).display, getComputedStyle(t.querySelector('tbody tr')).display,
                    t.tHead.getBoundingClientRect().height,
                    getComputedStyle(td, '::before').content, td.getAttribute('data-label')];""")
        display, tr_display, head_h, label, data_label = state
        assert display == "grid" and tr_display == "block" and head_h <= 1
        assert label.strip('"') == data_label == "#"                 # each value labelled by its column
        sizes = driver.execute_script(TABLE_FIT)
        assert not [s for s in sizes if s[1] > s[2]], sizes
        doc = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert doc[0] <= doc[1]
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    _viewport(driver, 1280)
    try:
        driver.get(wide_html.resolve().as_uri())
        assert driver.execute_script("return getComputedStyle(document.querySelector("
                                     "'#t-leaderboard tbody td')).display") == "table-cell"
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_printing_the_html_keeps_every_leaderboard_column(driver, wide_html, tmp_path):
    """Chromium's print to PDF (the page's own A4 size): every header and every cell of every
    leaderboard row is in the PDF's text."""
    import base64
    import re
    pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extra: pip install -e .[test]")
    driver.get(wide_html.resolve().as_uri())
    cells = driver.execute_script("""
        var t = document.querySelector('#t-leaderboard');
        return [Array.from(t.tHead.rows[0].cells).map(c => c.textContent.trim()),
                Array.from(t.tBodies[0].rows).map(
                    r => Array.from(r.cells).map(c => c.textContent.trim()))];""")
    heads, rows = cells
    assert len(heads) == 13 and len(rows) >= 20   # balanced acc. and trainable params included
    pdf = driver.execute_cdp_cmd("Page.printToPDF", {"preferCSSPageSize": True, "printBackground": True})
    path = tmp_path / "printed.pdf"
    path.write_bytes(base64.b64decode(pdf["data"]))
    reader = pypdf.PdfReader(path)
    w, h = float(reader.pages[0].mediabox.width), float(reader.pages[0].mediabox.height)
    assert w > h                                                     # A4 landscape, from the print CSS
    import unicodedata  # Chromium sets "fi" as a ligature glyph: NFKC reads it back as two letters
    text = re.sub(r"\s+", "", unicodedata.normalize("NFKC", "".join(p.extract_text() for p in reader.pages)))
    missing = [c for c in heads if re.sub(r"\s+", "", c) not in text]
    assert not missing, f"leaderboard columns missing from the printout: {missing}"
    for r in rows:
        lost = [c for c in r if c and re.sub(r"\s+", "", c) not in text]
        assert not lost, f"cells missing from the printout: {lost}"


def test_suite_report_opens_and_links_to_each_dataset_report(driver, tmp_path):
    """The suite report (the compare document with links) as a person sees it."""
    from bench import suite
    runs = {f"data-{i}": make_fake_run(tmp_path / "runs", run_id=f"data-{i}", dataset=f"data-{i}",
                                       analysis=False, cnn=False, failed_cell=False, seed=i,
                                       skill_shift=0.05 * i) for i in range(3)}
    out = tmp_path / "reports"
    paths = suite.build_reports(tmp_path / "runs", runs, out, formats=("html",))
    driver.get(paths["suite"]["html"].resolve().as_uri())
    state = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    assert state and all(complete and width > 0 for complete, width, _ in state), state
    assert not [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    body = driver.find_element("tag name", "body").text
    assert "Scores per dataset" in body and "Average ranks and critical difference" in body
    links = driver.find_elements("css selector", "ul.links a")
    assert [a.text for a in links] == ["data-0", "data-1", "data-2"]
    driver.execute_script("arguments[0].click();", links[1])
    assert driver.current_url.endswith("/data-1/report.html")
    assert "data-1" in driver.find_element("tag name", "h1").text


@pytest.fixture(scope="module")
def explain_html(tmp_path_factory):
    """The report of a tiny real run with every kind of explain panel (tests/explain_run.py)."""
    from explain_run import tiny_explain_run
    run_dir, _, _ = tiny_explain_run(tmp_path_factory.mktemp("explain-run"))
    return report.build(run_dir, tmp_path_factory.mktemp("explain-report"), formats=("html",))["html"]


def test_explain_section_every_panel_image_loads(driver, explain_html):
    driver.get(explain_html.resolve().as_uri())
    section = driver.find_element("id", "explain")
    driver.execute_script("arguments[0].scrollIntoView()", section)
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    state = driver.execute_script(
        "return Array.from(document.querySelectorAll('#explain img'))"
        ".map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
    figures = sorted(Path(explain_html).parent.joinpath("figures").glob("explain-*.png"))
    assert len(state) == len(figures) >= 10  # cards, importance charts, filter grids
    broken = [alt for complete, w, h, alt in state if not (complete and w > 0 and h > 0)]
    assert not broken, f"panel images not decoded: {broken[:5]}"
    alts = " ".join(s[3] for s in state)
    assert "explanation panels of test image" in alts and "first-layer filters" in alts
    assert "What the features see" in section.text and "exact CAM" in section.text
    assert not [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]

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

    click(headers[fit])  # numeric column: first click sorts descending
    v = [float(x) for x in first_col("t-leaderboard", fit) if x not in (None, "")]
    assert v == sorted(v, reverse=True)
    click(headers[fit])
    v = [float(x) for x in first_col("t-leaderboard", fit) if x not in (None, "")]
    assert v == sorted(v)
    assert driver.find_elements("css selector", "#t-leaderboard th[aria-sort='ascending']")
    assert not [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


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

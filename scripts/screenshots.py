"""Screenshots of a report for the README: the first screen of report.html at 1280 px, and summary.pdf.

    python scripts/screenshots.py                            # a quick demo run, made in a temporary folder
    python scripts/screenshots.py reports/default-1a2b3c4d   # an existing report folder
    python scripts/screenshots.py results/default-1a2b3c4d   # a run folder: its report is rebuilt first

Writes ``docs/report-1280.png`` (headless Chromium ``--screenshot`` of the first
1280 x 800 px of report.html) and ``docs/summary-pdf.png`` (``pdftoppm`` of
summary.pdf at 80 dpi), optimised PNGs under 300 KB each (checked; reduced to a
256-colour palette only if needed). ``--out DIR`` writes elsewhere.

The demo run is ``pipelines/default.yaml`` shrunk to a minute or two on a laptop
(20 images per class, four features including the packaged EfficientNet-Lite0, a small
scratch CNN, no t-SNE or "what the features see"); after ``make run`` pass the
default run's report folder instead for the screenshots of the real thing.

Needs ``chromium`` (or ``chromium-browser`` / ``google-chrome``) and ``pdftoppm``
(poppler-utils); a missing one is an error naming the package to install.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_BYTES = 300 * 1024
WIDTH, HEIGHT = 1280, 800
PDF_DPI = 80
DEMO_OVERRIDES = [
    "dataset.n_per_class=20", "features=[hog, lbp, {name: parcel_shape, prepare: {depth_range: null}}, "
    "{name: cnn, label: lite0-gap, params: {backbone: efficientnet_lite0, pooling: avg, input_size: 96}}]",
    "classifiers=[logreg, svm]", "finetune=[{label: scratch-cnn, mode: scratch, input_size: 48, epochs: 12}]",
    "report.tsne=false", "report.explain=false", "output.formats=[html, pdf]",
]


class UserError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def _tool(names, package: str) -> str:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    raise UserError(f"{names[0]} not found", f"install {package} (e.g. apt-get install {package})")


def _bench(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env)
    if res.returncode != 0:
        raise UserError(f"python -m bench {' '.join(args[:3])} ... failed (exit {res.returncode})",
                        "see its error above")


def report_folder(source: Path | None, work: Path) -> Path:
    """A folder holding report.html and summary.pdf: ``source`` itself, the report rebuilt from a run
    folder, or the report of a demo run made under ``work``."""
    if source is None:
        _bench("-q", "run", "--config", str(REPO / "pipelines" / "default.yaml"), *DEMO_OVERRIDES,
               f"output.results_dir={work / 'results'}", f"output.reports_dir={work / 'reports'}",
               f"cache.dir={work / 'cache'}", cwd=work)
        return next((work / "reports").iterdir())
    if not source.is_dir():
        raise UserError(f"{source} is not a folder", "pass a report folder (reports/<run-id>) or a run "
                                                     "folder (results/<run-id>)")
    if (source / "records.jsonl").exists():
        out = work / "report"
        _bench("report", str(source), "--out", str(out), cwd=REPO)
        return out
    missing = [n for n in ("report.html", "summary.pdf") if not (source / n).exists()]
    if missing:
        raise UserError(f"{source} has no {' and no '.join(missing)}",
                        f"rebuild it with: python -m bench report RUN_DIR --out {source}")
    return source


def _small_png(src: Path, dst: Path) -> int:
    """``src`` saved as an optimised PNG at ``dst`` (true colour; a 256-colour palette only when that
    is over 300 KB); its size in bytes, checked to be under 300 KB."""
    from PIL import Image
    tmp = dst.with_name("." + dst.name + ".tmp")
    with Image.open(src) as im:
        rgb = im.convert("RGB")
        rgb.save(tmp, format="PNG", optimize=True)
        if tmp.stat().st_size >= MAX_BYTES:
            rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    os.replace(tmp, dst)
    size = dst.stat().st_size
    if size >= MAX_BYTES:
        raise UserError(f"{dst} is {size // 1024} KB, over the {MAX_BYTES // 1024} KB limit",
                        "lower PDF_DPI or the window size in scripts/screenshots.py")
    return size


def shoot(report: Path, out: Path, work: Path) -> dict[str, int]:
    browser = _tool(BROWSERS, "chromium")
    pdftoppm = _tool(("pdftoppm",), "poppler-utils")
    out.mkdir(parents=True, exist_ok=True)
    raw = work / "screen.png"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}",
                    f"--screenshot={raw}", (report / "report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    sizes = {"report-1280.png": _small_png(raw, out / "report-1280.png")}
    subprocess.run([pdftoppm, "-png", "-r", str(PDF_DPI), "-singlefile", str(report / "summary.pdf"),
                    str(work / "summary")], check=True, capture_output=True, timeout=120)
    sizes["summary-pdf.png"] = _small_png(work / "summary.png", out / "summary-pdf.png")
    return sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", type=Path, help="report folder or run folder (default: a demo run)")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go (default: docs/)")
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-shots-") as tmp:
            work = Path(tmp)
            sizes = shoot(report_folder(args.source, work), args.out, work)
    except UserError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    for name, size in sizes.items():
        print(f"{args.out / name}: {size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

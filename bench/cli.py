"""Command line: ``python -m bench <command>``.

Only this module configures logging output and progress bars; library code logs
through ``logging.getLogger(__name__)``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path

from .errors import BenchError

log = logging.getLogger("bench")

EXAMPLES = {
    "run": """\
examples:
  python -m bench run                                   # pipelines/default.yaml
  python -m bench run --config pipelines/smoke.yaml     # tiny, < 1 minute
  python -m bench run dataset.n_per_class=30 features=[hog,lbp] classifiers=[svm]
  python -m bench run dataset.kind=folder dataset.path=my_images dataset.group_pattern='^(\\d+)_'
  python -m bench run --new                             # a fresh run folder instead of resuming
  python -m bench run dataset.kind=npz dataset.path=pathmnist.npz protocol.kind=predefined
  python -m bench run --config pipelines/suite.yaml     # several datasets (datasets: [...]), one report

Running the same command again resumes: finished cells are kept, the rest are computed.""",
    "list": """\
examples:
  python -m bench list               # everything
  python -m bench list features
  python -m bench list backbones""",
    "report": """\
examples:
  python -m bench report results/default-1a2b3c4d
  python -m bench report results/default-1a2b3c4d --format html
  python -m bench report results/suite-1a2b3c4d          # a suite: every dataset's report and the suite's""",
    "compare": """\
examples:
  python -m bench compare results/parcel-xxxx results/textures-yyyy --out reports/compare""",
    "perf": """\
examples:
  python -m bench perf                      # all speed benchmarks, writes docs/BENCHMARKS.md
  python -m bench perf --only handcrafted --quick --no-write
  python -m bench perf --only memory        # peak RSS of a 100,000-image npz through LBP""",
    "points-from-dots": """\
examples:
  python -m bench points-from-dots Train TrainDotted --out Train/annotations.csv
  python -m bench points-from-dots ../shared/data/sealion_scenes/train \\
      ../shared/data/sealion_scenes/dotted --out /tmp/annotations.csv --masks /tmp/masks
  python -m bench run --config pipelines/sealion.yaml dataset.kind=points dataset.path=Train

Reads every photo of TRAIN_DIR and its dotted copy (same file name) in DOTTED_DIR, finds
the dots (difference of the pair, blacked-out regions masked, connected components),
names each dot's class by its colour (red adult_males, magenta subadult_males, brown
adult_females, blue juveniles, green pups) and writes the image,x,y,class CSV of the
`points` dataset. Prints one summary row per photo.""",
    "cache": """\
examples:
  python -m bench cache info
  python -m bench cache verify    # recompute every checksum; bad entries are removed
  python -m bench cache clear""",
}


class _TqdmHandler(logging.Handler):
    """Console handler that does not break progress bars."""

    def emit(self, record):
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm
                tqdm.write(msg, file=sys.stderr)
            except ImportError:  # pragma: no cover
                print(msg, file=sys.stderr)
        except Exception:  # pragma: no cover
            self.handleError(record)


class _Fmt(logging.Formatter):
    def format(self, record):
        msg = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger("bench")
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        root.removeHandler(h)
    h = _TqdmHandler()
    h.setLevel(level)
    h.setFormatter(_Fmt("%(message)s"))
    root.addHandler(h)
    root.propagate = False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "distributed"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _progress_factory(quiet: bool):
    if quiet:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None

    def make(desc: str, total: int):
        return tqdm(total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True,
                    file=sys.stderr, disable=None)
    return make


def _attach_run_log(run_dir: Path) -> None:
    root = logging.getLogger("bench")
    for h in [h for h in root.handlers if getattr(h, "_bench_run_log", False)]:
        root.removeHandler(h)  # a suite runs several datasets: each run logs to its own file
        h.close()
    fh = logging.FileHandler(run_dir / "run.log")
    fh._bench_run_log = True
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("bench").addHandler(fh)


# --------------------------------------------------------------------------- workers
PARENT_POLL_S = 1.0


def exit_with_parent(parent: int) -> None:
    """Initializer of every loky worker (a direct child of ``parent``, the ``bench run``
    process): a daemon thread ends the worker within :data:`PARENT_POLL_S` once it is no
    longer that process's child (``kill -9`` of ``bench run``, even while the worker was
    starting), instead of lingering for loky's idle timeout (300 s), busy or not."""
    import threading
    import time

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(PARENT_POLL_S)
    threading.Thread(target=watch, name="bench-exit-with-parent", daemon=True).start()


def _workers_exit_with_parent() -> None:
    """Make joblib's ``loky`` backend (the default of ``bench run``, also inside scikit-learn)
    start its workers with :func:`exit_with_parent` (joblib's public backend registry)."""
    from joblib import register_parallel_backend
    from joblib._parallel_backends import LokyBackend

    class ExitWithParentLoky(LokyBackend):
        def configure(self, *args, **kwargs):
            if "initializer" not in kwargs:
                kwargs.update(initializer=exit_with_parent, initargs=(os.getpid(),))
            return super().configure(*args, **kwargs)
    register_parallel_backend("loky", ExitWithParentLoky)


# --------------------------------------------------------------------------- commands
def cmd_run(args) -> int:
    from . import engine
    from .config import load_config
    _workers_exit_with_parent()
    cfg = load_config(args.config, args.overrides)
    if cfg["finetune"] or any(f["name"] in ("cnn", "concat") for f in cfg["features"]):
        from ._tf import quiet_import
        quiet_import()
    base = Path(args.config).resolve().parent if args.config else None
    if args.no_report:
        cfg["output"]["formats"] = []
    if cfg.get("datasets"):
        return _run_suite(cfg, args, base)
    ctx = engine.run(cfg, progress=_progress_factory(args.quiet), new=args.new,
                     on_run_dir=_attach_run_log, base_dir=base, report=True)
    return _finish(ctx)


def _finish(ctx) -> int:
    """The leaderboard of the run's records (in memory), its folder and its report."""
    print()
    print(_leaderboard(ctx.run_dir, ctx.records()))
    print(f"\nresults: {ctx.run_dir}")
    if ctx.report_paths:
        _print_report_paths(ctx.report_paths)
    return 0


def _run_suite(cfg: dict, args, base) -> int:
    from . import suite
    from .runfolder import RunFolder
    res = suite.run(cfg, progress=_progress_factory(args.quiet), new=args.new, on_run_dir=_attach_run_log,
                    base_dir=base)
    for label, run_dir in res.runs.items():
        print(f"\n{label}:")
        print(_leaderboard(run_dir, RunFolder(run_dir).records(), max_rows=10))
    print(f"\nresults: {res.suite_dir}")
    if res.reports.get("suite"):
        _print_report_paths(res.reports["suite"])
    if res.failed:
        print(f"error: {len(res.failed)} of {len(cfg['datasets'])} datasets failed: "
              + "; ".join(f"{k}: {v}" for k, v in res.failed.items()), file=sys.stderr)
        print("hint: fix them and run the same command again: finished datasets are kept", file=sys.stderr)
        return 2
    return 0


def _leaderboard(run_dir: Path, records: list, max_rows: int | None = None) -> str:
    """The run's leaderboard (of ``records``, already read), ranked by its ``protocol.metric``."""
    from . import aggregate
    metric = aggregate.run_metric(run_dir)
    summary = aggregate.summarize(records, metric)
    return aggregate.leaderboard_text(summary, max_rows=max_rows, metric=metric)


def _print_report_paths(paths: dict) -> None:
    """The PDFs, then the main report as the last line (what a user opens)."""
    main = paths.get("html") or paths.get("pdf")
    for kind in ("pdf", "summary_pdf"):
        if paths.get(kind) and paths[kind] != main:
            print(f"{kind}: {paths[kind]}")
    if main:
        print(f"report: {main}")


def cmd_list(args) -> int:
    from . import regressors  # noqa: F401  (fills REGRESSORS: the counters' regressors)
    from .components import load_components
    from .registry import ALL
    load_components()
    axes = [args.axis] if args.axis else list(ALL)
    for axis in axes:
        reg = ALL[axis]
        print(f"{axis} ({len(reg)}):")
        for e in reg:
            extra = ""
            if axis == "backbones":
                b = e.obj
                extra = (f"  [input {getattr(b, 'default_size', '?')} px, min {getattr(b, 'min_size', '?')};"
                         f" layers: {', '.join(getattr(b, 'layers', {}) or [])}]")
            elif axis == "regressors" and e.meta.get("grid"):
                extra = "  [search: " + ", ".join(f"{k} {v}" for k, v in e.meta["grid"].items()) + "]"
            print(f"  {e.name:<24} {e.description}{extra}")
            if axis == "datasets":
                from .data.datasets import example_of
                if example_of(e):
                    print(f"  {'':<24}   e.g. python -m bench run {example_of(e)}")
        if axis == "datasets":
            print("  several datasets in one run (a suite): in a pipeline file, "
                  "datasets: [digits, faces, {kind: folder, path: my_images, prepare: {size: 64}}]")
        print()
    return 0


def cmd_report(args) -> int:
    from . import aggregate, report
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else Path("reports") / run_dir.resolve().name
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in ("html", "pdf")]
    if bad:
        raise BenchError(f"--format {','.join(bad)} is not supported", "use html, pdf or html,pdf")
    if (run_dir / "suite.json").exists():  # a suite folder: every dataset's report and the suite's
        from . import suite
        paths = suite.rebuild_reports(run_dir, out, formats)
        _print_report_paths(paths["suite"])
        return 0
    from .runfolder import RunFolder
    records = RunFolder.open(run_dir).latest()  # read once, handed on
    aggregate.save_summary(run_dir, records)
    print(_leaderboard(run_dir, records))
    _print_report_paths(report.build(run_dir, out, formats=formats, records=records))
    return 0


def cmd_compare(args) -> int:
    from . import report
    from .runfolder import RunFolder
    dirs = [RunFolder.open(d).path for d in args.run_dirs]
    out = Path(args.out) if args.out else Path("reports") / ("compare-" + "-".join(d.name for d in dirs)[:80])
    paths = report.compare(dirs, out)
    main = paths.get("html") or next(iter(paths.values()), None)
    print(f"report: {main}")
    return 0


def cmd_perf(args) -> int:
    from . import perf
    from ._tf import quiet_import
    if args.only in (None, "deep", "cache"):
        quiet_import()
    rows = perf.run(only=args.only, quick=args.quick, write=None if args.no_write else args.write)
    print(perf.format_rows(rows))
    if not args.no_write:
        print(f"\nwritten: {args.write}")
    return 0


def cmd_cache(args) -> int:
    from .cache import FeatureCache
    cache = FeatureCache(args.dir)
    if args.action == "info":
        info = cache.info()
        print(f"cache: {info['dir']}\nentries: {info['entries']}\nsize: {info['bytes'] / 1e6:.1f} MB")
    elif args.action == "verify":
        n, bad = cache.verify()
        print(f"cache: {cache.root}\nchecked: {n} entries\nbad (removed): {len(bad)}"
              + "".join(f"\n  {k}" for k in bad))
        return 1 if bad else 0
    else:
        n = cache.clear()
        print(f"removed {n} entries from {cache.root}")
    return 0


def cmd_points_from_dots(args) -> int:
    from .data.dots import points_from_dots
    points, summary = points_from_dots(args.train_dir, args.dotted_dir, args.out,
                                       mask_dir=args.masks, detector=args.detector,
                                       diff_threshold=args.threshold)
    print(summary.to_string(index=False))
    if args.out:
        print(f"\n{len(points)} points written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark hand-crafted image features against pretrained-CNN features.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            commands:
              run      run (or resume) a benchmark from a pipeline file
              list     list datasets, features, backbones and classifiers
              report   rebuild the HTML/PDF report of a run from its saved records
              compare  one report over several runs
              perf     speed benchmarks against the plain way of doing it
              points-from-dots  dotted survey photos -> image,x,y,class points CSV
              cache    feature cache info / verify / clear

            python -m bench <command> --help shows examples."""))
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and results only")
    sub = p.add_subparsers(dest="command", metavar="command")

    def add(name, helptext):
        sp = sub.add_parser(name, help=helptext, description=helptext, epilog=EXAMPLES[name],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        # the global switches after the command too (SUPPRESS: an absent one keeps the global value)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
        sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and results only")
        return sp

    r = add("run", "run (or resume) a benchmark")
    r.add_argument("--config", "-c", default=None,
                   help="pipeline YAML file (default: pipelines/default.yaml)")
    r.add_argument("--new", action="store_true", help="start a fresh run folder instead of resuming")
    r.add_argument("--no-report", action="store_true", help="skip building the report")
    r.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. dataset.n_per_class=50")
    r.set_defaults(func=cmd_run)

    l_ = add("list", "list registered components")
    l_.add_argument("axis", nargs="?", choices=["datasets", "features", "backbones", "classifiers",
                                                "regressors"])
    l_.set_defaults(func=cmd_list)

    rp = add("report", "rebuild a run's report from its saved records")
    rp.add_argument("run_dir")
    rp.add_argument("--format", default="html,pdf", help="html, pdf or html,pdf")
    rp.add_argument("--out", default=None, help="output folder (default reports/<run-id>)")
    rp.set_defaults(func=cmd_report)

    cp = add("compare", "one report over several runs")
    cp.add_argument("run_dirs", nargs="+")
    cp.add_argument("--out", default=None)
    cp.set_defaults(func=cmd_compare)

    pf = add("perf", "speed benchmarks (ratios against the plain way, measured in one run)")
    pf.add_argument("--only", choices=["handcrafted", "deep", "cache", "memory"], default=None)
    pf.add_argument("--quick", action="store_true", help="fewer images and repeats")
    pf.add_argument("--write", default="docs/BENCHMARKS.md", help="markdown file to update")
    pf.add_argument("--no-write", action="store_true")
    pf.set_defaults(func=cmd_perf)

    pd_ = add("points-from-dots", "dotted photos (NOAA Train/TrainDotted) -> points CSV")
    pd_.add_argument("train_dir", metavar="TRAIN_DIR", help="folder of the clean photos")
    pd_.add_argument("dotted_dir", metavar="DOTTED_DIR", help="folder of the dotted copies")
    pd_.add_argument("--out", "-o", default=None, help="CSV to write (image,x,y,class)")
    pd_.add_argument("--masks", default=None, metavar="DIR",
                     help="also write each blacked-out mask as DIR/<stem>.png")
    pd_.add_argument("--detector", choices=["components", "log"], default="components",
                     help="blob detector on the difference (default: components)")
    pd_.add_argument("--threshold", type=int, default=40,
                     help="minimum per-channel difference of a dot pixel (default 40)")
    pd_.set_defaults(func=cmd_points_from_dots)

    c = add("cache", "inspect, verify or clear the feature cache")
    c.add_argument("action", choices=["info", "verify", "clear"])
    c.add_argument("--dir", default=None, help="cache folder (default $BENCH_CACHE_DIR or ~/.cache/bench)")
    c.set_defaults(func=cmd_cache)
    return p


# a user error without its own hint gets the one of its kind
DEFAULT_HINTS = {
    "ConfigError": "check the key in the pipeline file or the key=value override; "
                   "`python -m bench run --help` shows examples",
    "DataError": "check the dataset files named above; `python -m bench list datasets` shows the layouts",
    "WeightsError": "check the weights file, or set on_missing_weights: random",
    "PluginError": "fix the plugin file named above (a plugin file is Python code that bench runs)",
    "ResultsError": "check the results/report folder named above (writable, not in use by another run)",
}


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Options anywhere: ``run`` takes ``key=value`` overrides before, between and after its
    options (``run a=1 --no-report b=2``); anything else unknown is an error, as argparse says."""
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if e.startswith("-") or getattr(args, "command", None) != "run" or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.command == "run" and args.config is None and Path("pipelines/default.yaml").exists():
        args.config = "pipelines/default.yaml"
    _setup_logging(args.verbose, args.quiet)
    from . import provenance  # env.json records the command line of a run (the report's "Reproduce")
    provenance.set_launch_argv(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args) or 0
    except BenchError as exc:
        if args.debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        hint = (exc.hint or "").strip() or DEFAULT_HINTS.get(type(exc).__name__) or \
            "rerun with --debug for the traceback"
        print(f"hint: {hint}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `python -m bench list | head`
        with __import__("contextlib").suppress(Exception):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are saved; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: this is a bug in bench; rerun with --debug for the traceback and report it",
              file=sys.stderr)
        return 1
    finally:
        provenance.set_launch_argv(None)

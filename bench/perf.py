"""`python -m bench perf`: speed benchmarks, each a ratio measured in one run
against the plain way of doing the same thing, written to docs/BENCHMARKS.md.

Sections
* handcrafted: each bench extractor against the plain per-image scikit-image call
  (:mod:`bench.perf_handcrafted`).
* deep: CNN extraction from files on disk against ``model.predict`` on preloaded
  arrays and against the compiled forward pass alone (:mod:`bench.perf_deep`).
* cache: the feature stage of a run, cold against a second identical run.
* parallel: hand-crafted extraction of 2,000 PNG files with ``n_jobs=2`` against
  ``n_jobs=1``, end to end (pool start-up included), and the scaling model (Amdahl's law
  from the measured serial parts) in the notes.
* memory: peak RSS while extracting 20,000 generated 128 px images (streamed).
* memory (npz): peak RSS of opening a compressed MedMNIST-style ``.npz`` of 100,000
  28x28 images (extraction to the cache, per-image keys) and extracting LBP from it
  (``python -m bench perf --only memory``).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from .provenance import cpu_name
    cpu = cpu_name()
    return f"{cpu}, {cores} cores, Python {platform.python_version()}"


def _feature_stage_seconds(features: list, n_per_class: int, cache_dir: Path, n_jobs: int = 1,
                           size: int = 96) -> float:
    """Wall time of the feature stage of a run (extraction or cache loads)."""
    from .cache import FeatureCache, make_key
    from .components import load_components
    from .extraction import compute_per_image
    from .imaging import Prepare
    from .registry import DATASETS, FEATURES
    load_components()
    ds = DATASETS.create("synthetic-parcel", n_per_class=n_per_class, size=size, seed=0)
    cache = FeatureCache(cache_dir)
    t0 = time.perf_counter()
    for spec in features:
        ex = FEATURES.create(spec["name"], **spec.get("params", {}))
        stage, _ = ex.stages()
        prep = Prepare(depth_range="minmax")
        key = make_key(ds.fingerprint(), stage.cache_key(), prep.key())
        hit = cache.get(key)
        if hit is None:
            X, _ = compute_per_image(stage, ds, prep, n_jobs=n_jobs, chunk_size=32)
            cache.put(key, np.asarray(X) if X.dtype != object else X, {"ms_per_image": 0})
        else:
            X = hit[0]
            _ = np.asarray(X[: len(X)]) if X.dtype != object else X  # touch the data
    return time.perf_counter() - t0


def run_cache(quick: bool = False) -> list[dict]:
    rows = []
    n = 15 if quick else 60
    specs = {
        "cnn (mobilenetv2, 96 px)": [{"name": "cnn", "params": {"backbone": "mobilenetv2",
                                                                 "input_size": 96}}],
        "hand-crafted (hog, lbp, glcm, sift_bovw)": [{"name": "hog"}, {"name": "lbp"},
                                                     {"name": "glcm"}, {"name": "sift_bovw"}],
    }
    for name, feats in specs.items():
        with tempfile.TemporaryDirectory() as d:
            cold = _feature_stage_seconds(feats, n, Path(d))
            warms = [_feature_stage_seconds(feats, n, Path(d)) for _ in range(3)]
        warm = min(warms)  # best of 3 (each a whole second run's feature stage), as other rows
        rows.append({"section": "cache", "what": f"feature stage, second identical run: {name}",
                     "bench_s": warm, "baseline_s": cold, "ratio": cold / warm,
                     "baseline": "first run (extraction)", "n_images": n * 4,
                     "note": "best of 3 repeat runs: " + ", ".join(f"{w * 1e3:.1f}" for w in warms) + " ms"})
    return rows


_PAR_SCRIPT = r"""
import json, sys, time
t_imports = time.perf_counter()
import numpy as np
from bench import extraction, parallel
from bench.cache import FeatureCache
from bench.config import load_config
t_imports = time.perf_counter() - t_imports
root, cache_dir, n_jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = load_config(None, ["features=[hog, lbp, glcm, granulometry]", "classifiers=[logreg]", f"parallel.n_jobs={n_jobs}",
                         "dataset.kind=folder", f"dataset.path={root}"])
cpu0, t0 = time.process_time(), time.perf_counter()
parallel.start_workers(cfg["parallel"])          # what engine.run does first
from bench.components import load_components
from bench.engine import load_dataset
load_components()
ds = load_dataset(cfg)                           # scan + hash of the files, as a run does
feats = [extraction.build_feature(spec, cfg) for spec in cfg["features"]]
t_ds = time.perf_counter() - t0
out = extraction.extract_together(feats, ds, FeatureCache(cache_dir), cfg["parallel"])
t_x = time.perf_counter()
bad = sum(int((~np.isfinite(np.asarray(fm.X))).any(axis=1).sum()) for fm in out.values())  # the stage's check
t_check = time.perf_counter() - t_x
parallel.drop_workers()
total = time.perf_counter() - t0
p, s = extraction.last_pass, parallel.last_startup
print(json.dumps({"total_s": total, "dataset_s": t_ds, "check_s": t_check, "imports_s": t_imports,
                  "parent_cpu_s": time.process_time() - cpu0, "pass": p, "startup": s,
                  "features": {k: (v if isinstance(v, str) else [list(v.X.shape), v.ms_per_image])
                               for k, v in out.items()}, "nonfinite": bad}))
"""


def _par_once(root: Path, cache: Path, n_jobs: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PAR_SCRIPT, str(root), str(cache), str(n_jobs)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"bench perf parallel (n_jobs={n_jobs}) failed: {out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in res["features"].items() if isinstance(v, str)}
    if failed:
        raise RuntimeError(f"bench perf parallel: features failed: {failed}")
    return res


def scaling_model(one: dict, two: dict) -> dict:
    """Amdahl's law from the serial parts, each measured where other load disturbs it least:
    the parent's start-up (imports, opening the folder dataset: the n_jobs=1 run, where it
    has a core to itself), the part of the workers' start-up (their import CPU, n_jobs=2 run,
    sharing 2 cores with the parent's) that outlasts it, the parent's own CPU during the n_jobs=2 pass (scheduling, the first
    tasks' rows), storing the matrices (checksums, sidecars) and the NaN check; against the
    work of the tasks (the n_jobs=1 run's pass)."""
    p2 = two["pass"]
    st = two.get("startup") or {}
    store_s = two["total_s"] - two["dataset_s"] - p2["wall_s"] - two["check_s"]
    serial = {"dataset_s": one["dataset_s"],
              # 2 workers importing while the parent starts: 3 processes on 2 cores
              "pool_start_s": max(0.0, (one["dataset_s"] + 2 * st.get("import_cpu_s", 0.0)) / 2 - one["dataset_s"]),
              "parent_in_pass_s": p2["parent_cpu_s"], "store_s": max(0.0, store_s), "check_s": two["check_s"]}
    s = sum(serial.values())
    work = one["pass"]["wall_s"]  # one worker: the pass is all work
    cpu = p2["task_cpu_s"] / max(1e-9, p2["workers"] * p2["wall_s"])  # CPU the workers got during the pass
    busy = p2["task_s"] / max(1e-9, p2["workers"] * p2["wall_s"])  # time they spent inside tasks
    return {"serial": serial, "serial_s": s, "work_s": work, "fraction": s / (s + work),
            "worker_cpu_share": cpu, "worker_busy_share": busy, "worker_import_cpu_s": st.get("import_cpu_s"),
            "predicted": {n: one["total_s"] / (s + work / n) for n in (2, 8, 32)},
            "limit": one["total_s"] / s}


def run_parallel(quick: bool = False) -> list[dict]:
    """Hand-crafted extraction (hog, lbp, glcm, granulometry) of PNG files on disk, end to
    end: each side is a fresh interpreter that starts the run's pool (n_jobs=2), opens the
    folder dataset and extracts every feature into an empty cache, as ``bench run`` does;
    worker start-up is included. No TensorFlow is imported on either side."""
    from .perf_deep import write_images
    n = 500 if quick else 2000
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "images"
        for k, cls in enumerate(("a", "b")):
            write_images(root / cls, n // 2, size=256, seed=k, ext="png")
        load0 = os.getloadavg()[0]
        runs: dict = {1: [], 2: []}
        for rep in range(1 if quick else 2):  # interleaved, so a drift in background load hits both
            for n_jobs in (2, 1):
                runs[n_jobs].append(_par_once(root, Path(d) / f"c{n_jobs}-{rep}", n_jobs))
        load1 = os.getloadavg()[0]
    one, two = (min(runs[k], key=lambda r: r["total_s"]) for k in (1, 2))
    model = scaling_model(one, two)
    st = two.get("startup") or {}
    tries = "; ".join(f"n_jobs={k}: " + ", ".join(f"{r['total_s']:.1f}" for r in runs[k]) + " s"
                      for k in (2, 1))
    note = (f"best of {len(runs[1])} fresh interpreters each ({tries}), pool start-up included "
            f"(workers ready {st.get('ready_s', 0):.1f} s after the start, the parent waited "
            f"{st.get('wait_s', 0):.2f} s of it); "
            f"{two['pass']['tasks']} tasks of {two['pass']['chunk_size']} images; "
            f"serial parts {model['serial_s']:.2f} s of {model['work_s']:.1f} s of work; the workers got "
            f"{100 * model['worker_cpu_share']:.0f}% of 2 cores during the pass; load average "
            f"{load0:.1f} before, {load1:.1f} after")
    return [{"section": "parallel",
             "what": "hand-crafted extraction (hog, lbp, glcm, granulometry) of 256 px PNG files, n_jobs=2",
             "bench_s": two["total_s"], "baseline_s": one["total_s"], "ratio": one["total_s"] / two["total_s"],
             "baseline": "n_jobs=1", "n_images": n, "note": note, "scaling": model, "runs": [one, two]}]


_MEM_SCRIPT = r"""
import sys, time, numpy as np

def hwm_kb():  # peak RSS of this process image (ru_maxrss would include the parent's, kept across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

from bench.components import load_components
from bench.extraction import compute_per_image
from bench.data.base import Dataset
from bench.imaging import Prepare
from bench.registry import FEATURES
load_components()
n, size = int(sys.argv[1]), int(sys.argv[2])
def load(i):
    rng = np.random.default_rng(i)
    return (rng.random((size, size)) * 255).astype(np.uint8)
ds = Dataset("mem", load, np.arange(n) % 2, ["a", "b"], [str(i) for i in range(n)], modality="gray")
stage, _ = FEATURES.create("lbp").stages()
base = hwm_kb()
t0 = time.perf_counter()
X, _ = compute_per_image(stage, ds, Prepare(), n_jobs=1, chunk_size=256, out_path=sys.argv[3])
print(X.shape[0], X.shape[1], base, hwm_kb(), time.perf_counter() - t0)
"""


def run_memory(quick: bool = False) -> list[dict]:
    n = 2000 if quick else 20000
    size = 128
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(n), str(size),
                              str(Path(d) / "X.npy")], capture_output=True, text=True, check=True)
    rows_, dim, base_kb, peak_kb, secs = out.stdout.split()
    data_mb = int(rows_) * size * size / 1e6
    return [{"section": "memory", "what": f"peak RSS, LBP over {n} generated {size} px images, streamed",
             "bench_s": float(secs), "baseline_s": None, "ratio": None,
             "peak_rss_mb": int(peak_kb) / 1024, "import_rss_mb": int(base_kb) / 1024,
             "images_mb": data_mb, "n_images": n}]


_NPZ_MEM_SCRIPT = r"""
import sys, time

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

from bench.components import load_components
from bench.extraction import compute_per_image
from bench.data.npz import npz_dataset
from bench.imaging import Prepare
from bench.registry import FEATURES
load_components()
stage, _ = FEATURES.create("lbp").stages()
base = hwm_kb()
t0 = time.perf_counter()
ds = npz_dataset(sys.argv[1], cache_dir=sys.argv[2])
t_open = time.perf_counter() - t0
after_open = hwm_kb()
t0 = time.perf_counter()
X, _ = compute_per_image(stage, ds, Prepare(), n_jobs=1, chunk_size=256, out_path=sys.argv[3])
print(len(ds), X.shape[1], base, after_open, hwm_kb(), t_open, time.perf_counter() - t0)
"""

NPZ_MEMORY_BOUND_MB = 600


def write_medmnist_npz(path: Path, n: int, size: int = 28, seed: int = 0) -> Path:
    """A compressed MedMNIST-layout file of ``n`` random ``size`` px gray images (80/10/10 split)."""
    rng = np.random.default_rng(seed)
    n_tr, n_va = int(0.8 * n), int(0.1 * n)
    parts = {"train": n_tr, "val": n_va, "test": n - n_tr - n_va}
    arrays = {}
    for split, m in parts.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (m, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (m, 1), dtype=np.int64)
    np.savez_compressed(path, **arrays)
    return path


def run_memory_npz(quick: bool = False, n: int | None = None) -> list[dict]:
    """Peak RSS (VmHWM, fresh interpreter) of an npz dataset through LBP, against the bound."""
    n = n or (10_000 if quick else 100_000)
    with tempfile.TemporaryDirectory() as d:
        path = write_medmnist_npz(Path(d) / "mnist.npz", n)
        out = subprocess.run([sys.executable, "-c", _NPZ_MEM_SCRIPT, str(path), str(Path(d) / "cache"),
                              str(Path(d) / "X.npy")], capture_output=True, text=True, check=True)
    rows_, dim, base_kb, open_kb, peak_kb, t_open, t_lbp = out.stdout.split()
    peak = int(peak_kb) / 1024
    return [{"section": "npz-memory", "what": f"peak RSS, npz of {n:,} 28x28 images (compressed), LBP",
             "bench_s": float(t_lbp), "baseline_s": None, "ratio": None, "peak_rss_mb": peak,
             "import_rss_mb": int(base_kb) / 1024, "open_rss_mb": int(open_kb) / 1024,
             "images_mb": n * 28 * 28 / 1e6, "n_images": n, "open_s": float(t_open),
             "bound_mb": NPZ_MEMORY_BOUND_MB, "within_bound": peak < NPZ_MEMORY_BOUND_MB}]


def _deep_rows(r: dict) -> list[dict]:
    """One perf_deep measurement as ratio rows: (a) vs model.predict, (b) vs forward, and one
    pair per inference engine (:func:`bench.perf_deep.table_rows`)."""
    from .perf_deep import table_rows
    return table_rows(r)


def run(only: str | None = None, quick: bool = False, write: str | None = "docs/BENCHMARKS.md") -> list[dict]:
    rows: list[dict] = []
    if only in (None, "handcrafted"):
        from . import perf_handcrafted
        for r in perf_handcrafted.run(quick=quick):
            rows.append({"section": "handcrafted", **r})
    if only in (None, "deep"):
        from . import perf_deep
        for r in perf_deep.run(quick=quick):
            rows += _deep_rows(r)
        import gc
        gc.collect()  # the engines' sessions (and their thread pools) go before the next timings
    if only in (None, "cache"):
        rows += run_cache(quick)
        rows += run_parallel(quick)
        rows += run_memory(quick)
    if only in (None, "memory"):
        rows += run_memory_npz(quick)
    if write:
        write_markdown(rows, Path(write), quick=quick, only=only)
    return rows


def _fmt(v, nd=2):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_rows(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        what = r.get("what") or r.get("extractor") or r.get("name")
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        extra = f" peak RSS {r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") else ""
        lines.append(f"[{r['section']}] {what}: {ratio} (bench {_fmt(r.get('bench_s'), 3)} s,"
                     f" baseline {_fmt(r.get('baseline_s'), 3)} s){extra}")
    return "\n".join(lines)


def _memory_block(rows: list[dict], stamp: str, cmd: str) -> str:
    """The npz memory section: peak RSS against the stated bound (memory is not disturbed by CPU load)."""
    out = ["## Peak memory of an npz dataset", "",
           f"Measured {stamp} on {_machine()} with `{cmd}` (peak RSS is `VmHWM` of a fresh interpreter; "
           "CPU load from other processes does not change it).", "",
           "| what | peak RSS (MB) | after imports (MB) | after opening the dataset (MB) | pixels (MB) | "
           "open s | LBP s | bound |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ok = "met" if r["within_bound"] else "NOT met"
        out.append(f"| {r['what']} | {r['peak_rss_mb']:.0f} | {r['import_rss_mb']:.0f} | "
                   f"{r['open_rss_mb']:.0f} | {r['images_mb']:.0f} | {r['open_s']:.1f} | "
                   f"{r['bench_s']:.1f} | < {r['bound_mb']} MB: {ok} |")
    out += ["", "Opening extracts each compressed member once to a raw `.npy` in the cache (streamed, 1 MiB "
            "at a time) and hashes every image in 8 MiB blocks; extraction reads one image per `os.pread`, "
            "so neither the file nor the decompressed arrays are held in memory. Timings are from a shared "
            "machine: to be re-measured on a quiet one."]
    return "\n".join(out) + "\n"


def table_row(r: dict) -> str:
    """One row of a section's table in docs/BENCHMARKS.md."""
    what = r.get("what") or r.get("extractor") or r.get("name")
    notes = []
    for k in ("n_images", "size", "target", "note"):
        if r.get(k) is not None:
            notes.append(f"{k}={r[k]}")
    if r.get("peak_rss_mb") is not None:
        notes.append(f"peak RSS {r['peak_rss_mb']:.0f} MB (after imports {r['import_rss_mb']:.0f} MB; "
                     f"the images alone are {r['images_mb']:.0f} MB)")
    ratio = f"**{r['ratio']:.1f}x**" if r.get("ratio") else ""
    return (f"| {what} | {_fmt(r.get('bench_s'), 3)} | {_fmt(r.get('baseline_s'), 3)} | {ratio} | "
            f"{r.get('baseline', '')} | {'; '.join(notes)} |")


def write_markdown(rows: list[dict], path: Path, quick: bool, only: str | None) -> None:
    """Replace the sections measured now in ``path``, keeping the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python -m bench perf" + (f" --only {only}" if only else "") + (" --quick" if quick else "")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    titles = {"handcrafted": "Hand-crafted extractors against the plain per-image scikit-image call",
              "deep": "CNN extraction from files on disk",
              "cache": "Cache, parallelism and memory",
              "npz-memory": "Peak memory of an npz dataset"}
    blocks = {}
    for section in ("handcrafted", "deep", "cache", "npz-memory"):
        rs = [r for r in rows if r["section"] == section or
              (section == "cache" and r["section"] in ("cache", "parallel", "memory"))]
        if not rs:
            continue
        if section == "npz-memory":
            blocks[section] = _memory_block(rs, stamp, cmd)
            continue
        out = [f"## {titles[section]}", "", f"Measured {stamp} on {_machine()} with `{cmd}`.", ""]
        out += ["| what | bench (s) | baseline (s) | speed-up | baseline | notes |",
                "|---|---:|---:|---:|---|---|"]
        out += [table_row(r) for r in rs]
        blocks[section] = "\n".join(out) + "\n"
    old = path.read_text() if path.exists() else ""
    marker = "\n<!-- notes -->\n"
    kept = {}
    if old:  # the sections before the notes (a partial run keeps the others as they are)
        parts = old.split(marker, 1)[0].split("\n## ")
        for part in parts[1:]:
            title = part.splitlines()[0]
            for sec, t in titles.items():
                if title.strip() == t:
                    kept[sec] = "## " + part.rstrip() + "\n"
    kept.update(blocks)
    head = ("# Benchmarks\n\nEvery figure is a ratio of two timings taken in the same run "
            "(baseline time / bench time, so > 1 means bench is faster). Reproduce a section with "
            "the command shown under it. Timings from unit tests are never used.\n")
    body = "\n".join(kept[s] for s in ("handcrafted", "deep", "cache", "npz-memory") if s in kept)
    extra = ""
    if marker in old:
        extra = marker + old.split(marker, 1)[1]
    scaling = [r for r in rows if r.get("scaling")]
    if scaling:
        extra = _with_scaling(extra or marker, _scaling_block(scaling[0], stamp, cmd))
    path.write_text(head + "\n" + body + extra)


_SCALING = ("<!-- scaling: generated by python -m bench perf -->\n", "<!-- /scaling -->\n")


def _with_scaling(notes: str, block: str) -> str:
    """The notes with their generated "Scaling model" section replaced (or appended)."""
    a, b = _SCALING
    if a in notes and b in notes:
        before, rest = notes.split(a, 1)
        return before + a + block + b + rest.split(b, 1)[1]
    return notes.rstrip("\n") + "\n\n" + a + block + b


def _scaling_block(row: dict, stamp: str, cmd: str) -> str:
    m = row["scaling"]
    parts = {"dataset_s": "the parent's start-up: imports, opening the folder dataset (scan and hash of the files)",
             "pool_start_s": "the workers' start-up beyond it (their imports' CPU sharing 2 cores with it)",
             "parent_in_pass_s": "the parent's CPU during the pass (scheduling, the first tasks' rows)",
             "store_s": "storing the matrices (cache locks, checksums, sidecars)",
             "check_s": "the NaN/inf check of each matrix"}
    pred = m["predicted"]
    lines = ["## Scaling model", "",
             f"From the parallel row above ({stamp}, `{cmd}`, {row['n_images']} PNG files): Amdahl's law with "
             "the serial parts of the run's feature stage (what no added core shortens) against the work of "
             "the tasks (the n_jobs=1 pass: decode + prepare + 4 features). During the n_jobs=2 pass the "
             f"workers were inside a task {100 * m['worker_busy_share']:.0f}% of the time and got "
             f"{100 * m['worker_cpu_share']:.0f}% of 2 cores (CPU seconds of the tasks / (2 x wall))"
             + (": busy but short of CPU means the 2-core figure is held back by other load, not by bench."
                if m["worker_cpu_share"] < 0.9 else ": the cores were theirs."), "",
             "| serial part | seconds |", "|---|---:|"]
    lines += [f"| {parts[k]} | {v:.2f} |" for k, v in m["serial"].items()]
    lines += [f"| **total serial** | **{m['serial_s']:.2f}** |", "",
              f"Work of the tasks (decode + prepare + 4 features, one worker): {m['work_s']:.1f} s, so the serial "
              f"fraction is **{100 * m['fraction']:.1f}%**. Predicted speed-up over n_jobs=1 "
              f"(T1 / (serial + work / cores)): {pred[2]:.2f}x at 2 cores (measured: {row['ratio']:.2f}x), "
              f"**{pred[8]:.1f}x at 8 cores**, **{pred[32]:.1f}x at 32 cores**, at most {m['limit']:.0f}x. "
              f"What limits it beyond 2 cores is the serial part, mostly {parts[max(m['serial'], key=m['serial'].get)]} "
              f"({max(m['serial'].values()):.1f} s). "
              "The model ignores what else limits many cores: memory bandwidth of the decode, "
              "the disk (files read once per run), and worker start-up, which grows with the number of "
              "processes importing at once; the predictions are upper bounds.", ""]
    return "\n".join(lines)

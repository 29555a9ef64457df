#!/usr/bin/env python
"""Mutation check: plant each documented bug in a copy of the repository and run the
tests that must catch it (``make mutants``).

The planted bugs are listed in ``scripts/mutants.yaml``; each entry has

    id           short name
    description  the bug, as a user would notice it
    file         path relative to the repository root
    original     the exact lines it replaces, written without their common indentation
                 (they must occur exactly once in ``file``, at any indentation)
    replacement  the lines with the bug (indented like the original in the file)
    tests        pytest node ids (or ``-k``/``-m`` arguments) that must fail with the bug

For each mutant the script copies the tracked (and untracked, not ignored) files of the
working tree to a temporary folder, applies that one replacement, and runs its tests
there with ``PYTHONPATH`` pointing at the copy, so ``import bench``, ``python -m bench`` and
every worker process use the mutated code. Before the mutants it runs every listed test
on the unmodified copy: a test that fails there cannot tell anything.

Result per mutant: CAUGHT (its tests failed), SURVIVED (they passed: the suite misses the
bug), STALE (the original snippet is not in the file, or not exactly once: update the
list after changing the code) or ERROR (pytest did not run the tests, e.g. a syntax error
in the replacement). The exit status is non-zero unless every mutant is CAUGHT.

Usage: python scripts/mutants.py [--only ID ...] [--jobs N] [--list] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "scripts" / "mutants.yaml"
FIELDS = ("id", "description", "file", "original", "replacement", "tests")


@dataclass
class Mutant:
    id: str
    description: str
    file: str
    original: str
    replacement: str
    tests: list


@dataclass
class Outcome:
    mutant: Mutant
    status: str          # CAUGHT | SURVIVED | STALE | ERROR
    seconds: float
    detail: str = ""     # the failing test(s), or why it is stale / an error


def load_mutants(path: Path = LIST) -> list[Mutant]:
    data = yaml.safe_load(path.read_text())
    out, seen = [], set()
    for i, entry in enumerate(data):
        missing = [f for f in FIELDS if f not in entry]
        extra = set(entry) - set(FIELDS)
        if missing or extra:
            raise SystemExit(f"{path}: entry {i} ({entry.get('id', '?')}): missing {missing}, unknown {sorted(extra)}")
        if entry["id"] in seen:
            raise SystemExit(f"{path}: id {entry['id']!r} is used twice")
        seen.add(entry["id"])
        tests = entry["tests"] if isinstance(entry["tests"], list) else [entry["tests"]]
        out.append(Mutant(entry["id"], " ".join(entry["description"].split()), entry["file"],
                          entry["original"], entry["replacement"], [str(t) for t in tests]))
    return out


def tracked_files() -> list[str]:
    """Files of the working tree as git sees them: tracked + untracked-but-not-ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def copy_tree(files: list[str], dest: Path) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def run_tests(copy: Path, tests: list[str], log: Path, timeout: float) -> int:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header",
           "-o", "addopts=-ra --strict-markers", *tests]
    with open(log, "w") as fh:
        try:
            return subprocess.run(cmd, cwd=copy, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\ntimeout after {timeout:.0f} s\n")
            return -1


def failed_tests(log: Path) -> str:
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.startswith(("FAILED", "ERROR"))]
    return "; ".join(l.split(" ", 1)[1].split(" - ")[0] for l in lines[:3]) or "(see log)"


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def find_snippet(text: str, snippet: str) -> list[tuple[int, int, str]]:
    """Where the whole lines of ``snippet`` occur in ``text`` at some extra indentation:
    ``[(first line, end line, indentation)]``. Blank snippet lines match blank lines."""
    lines = text.split("\n")
    want = snippet.rstrip("\n").split("\n")
    first_ws = _indent(want[0])
    hits = []
    for i in range(len(lines) - len(want) + 1):
        ws = _indent(lines[i])
        if not ws.endswith(first_ws) or not lines[i].strip():
            continue
        pre = ws[: len(ws) - len(first_ws)]
        if all((lines[i + k] == pre + w) if w.strip() else not lines[i + k].strip()
               for k, w in enumerate(want)):
            hits.append((i, i + len(want), pre))
    return hits


def apply_mutant(text: str, m: "Mutant") -> str | None:
    """``text`` with the mutant's lines replaced, or ``None`` unless they occur exactly once."""
    hits = find_snippet(text, m.original)
    if len(hits) != 1:
        return None
    start, end, pre = hits[0]
    lines = text.split("\n")
    new = [pre + l if l.strip() else "" for l in m.replacement.rstrip("\n").split("\n")]
    return "\n".join(lines[:start] + new + lines[end:])


def check_mutant(m: Mutant, files: list[str], work: Path, timeout: float) -> Outcome:
    t0 = time.perf_counter()
    copy = work / m.id
    copy_tree(files, copy)
    target = copy / m.file
    if not target.is_file():
        return Outcome(m, "STALE", time.perf_counter() - t0, f"{m.file} does not exist")
    text = target.read_text()
    mutated = apply_mutant(text, m)
    if mutated is None:
        n = len(find_snippet(text, m.original))
        shutil.rmtree(copy, ignore_errors=True)
        return Outcome(m, "STALE", time.perf_counter() - t0,
                       f"original lines found {n} times in {m.file} (must be exactly once)")
    target.write_text(mutated)
    log = work / f"{m.id}.log"
    rc = run_tests(copy, m.tests, log, timeout)
    dt = time.perf_counter() - t0
    shutil.rmtree(copy, ignore_errors=True)
    if rc == 1:
        return Outcome(m, "CAUGHT", dt, failed_tests(log))
    if rc == 0:
        return Outcome(m, "SURVIVED", dt, "every listed test passed with the bug")
    return Outcome(m, "ERROR", dt, f"pytest exit code {rc}; see {log}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    ap.add_argument("--jobs", type=int, default=1, help="mutants checked at once (default 1)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder with the logs")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run on the unmodified copy")
    args = ap.parse_args(argv)

    mutants = load_mutants()
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            raise SystemExit(f"unknown mutant ids: {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id:<34} {m.file:<28} {m.description}\n{'':<34} tests: {' '.join(m.tests)}")
        return 0

    t_start = time.perf_counter()
    files = tracked_files()
    work = Path(tempfile.mkdtemp(prefix="bench-mutants-"))
    try:
        if not args.no_baseline:
            base = work / "baseline"
            copy_tree(files, base)
            tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
            log = work / "baseline.log"
            print(f"baseline: {len(tests)} test selections on the unmodified copy ...", flush=True)
            t0 = time.perf_counter()
            rc = run_tests(base, tests, log, args.timeout * 2)
            if rc != 0:
                print(log.read_text(errors="replace")[-4000:])
                print(f"baseline failed (exit {rc}): fix the tests before checking mutants")
                return 2
            print(f"baseline: passed in {time.perf_counter() - t0:.0f} s", flush=True)
            shutil.rmtree(base, ignore_errors=True)

        def one(m):
            out = check_mutant(m, files, work, args.timeout)
            print(f"  {out.status:<8} {m.id} ({out.seconds:.0f} s)", flush=True)
            return out

        print(f"{len(mutants)} mutants, {args.jobs} at a time ...", flush=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = list(pool.map(one, mutants))
    finally:
        if args.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    total = time.perf_counter() - t_start
    print()
    w = max(len(m.id) for m in mutants)
    print(f"{'mutant':<{w}}  {'status':<8} {'s':>5}  caught by / detail")
    for o in outcomes:
        print(f"{o.mutant.id:<{w}}  {o.status:<8} {o.seconds:5.0f}  {o.detail}")
    n_caught = sum(o.status == "CAUGHT" for o in outcomes)
    print(f"\n{n_caught}/{len(outcomes)} caught; total {total:.0f} s "
          f"({total / 60:.1f} min, {args.jobs} at a time)")
    return 0 if n_caught == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())

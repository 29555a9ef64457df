"""Where a run ran and came from: CPU, GPUs, package versions, the command line that
launched it and the code's git commit (``env.json``).

Also used by ``bench perf`` to name the machine of its figures. :func:`set_launch_argv` is
called by the command line (``bench.cli.main``) with the arguments it parsed, so a run
started from Python (``bench.engine.run``) or from a test records ``argv: null``; the
report's "Reproduce" section (:mod:`bench.report.sections`) turns ``argv`` and ``git``
back into commands a reader can paste. :func:`git_info` reads the commit of the checkout
the ``bench`` package was imported from, and only of that one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent  # .../bench
_LAUNCH_ARGV: list[str] | None = None


def set_launch_argv(argv) -> None:
    """Remember the arguments of ``python -m bench ARGS`` (``None`` forgets them)."""
    global _LAUNCH_ARGV
    _LAUNCH_ARGV = None if argv is None else [str(a) for a in argv]


def launch_argv() -> list[str] | None:
    return None if _LAUNCH_ARGV is None else list(_LAUNCH_ARGV)


def command_text(argv) -> str:
    """``python -m bench run --config x.yaml 'features=[hog, lbp]'``: shell-quoted, ready to paste."""
    return "python -m bench " + shlex.join(str(a) for a in argv)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(package_root: Path | None = None) -> dict | None:
    """``{"commit", "short", "branch", "dirty"}`` of the checkout holding ``package_root``
    (default: this ``bench`` package), or ``None`` when it is not a git checkout of bench
    (installed from a wheel, git missing, ...). ``dirty``: tracked files differ from the
    commit (untracked files are ignored)."""
    root = Path(package_root or PACKAGE_ROOT).resolve()
    top = _git(root, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != root.parent:
        return None
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    return {"commit": commit, "short": commit[:12], "branch": branch if branch != "HEAD" else None,
            "dirty": bool(status) if status is not None else None}


PACKAGES = ("numpy", "scipy", "scikit-learn", "scikit-image", "opencv-python-headless",
            "opencv-python", "tensorflow", "tensorflow-cpu", "keras", "jax", "torch",
            "pandas", "seaborn", "matplotlib", "joblib", "dask", "distributed", "bench")


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def available_cores() -> int:
    """Cores this process may use (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def package_versions(names=PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (the ones not installed are left out)."""
    from importlib import metadata
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def gpu_names() -> list[str]:
    """``nvidia-smi -L`` lines; empty without an NVIDIA GPU (or the tool)."""
    with contextlib.suppress(Exception):
        import shutil
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return []


def environment(seed: int) -> dict:
    """The ``env.json`` of a run session (start and end times are added by the engine)."""
    gpus = gpu_names()
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": package_versions(), "cpu": cpu_name(), "n_cores": os.cpu_count(),
            "cores_available": available_cores(), "gpu": gpus, "device": "GPU" if gpus else "CPU",
            "seed": seed, "command": " ".join(sys.argv), "argv": launch_argv(), "git": git_info(),
            "host": platform.node(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}

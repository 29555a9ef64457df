"""Where a run ran: CPU, GPUs, package versions, command line (``env.json``).

Also used by ``bench perf`` to name the machine of its figures.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

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
        import subprocess
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
            "seed": seed, "command": " ".join(sys.argv), "host": platform.node(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}

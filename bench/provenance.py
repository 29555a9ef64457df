"""Where a run came from: the command line that launched it and the code's git commit.

Both are recorded in ``env.json`` when a run starts (:func:`bench.engine.environment`:
``argv`` and ``git``); the report's "Reproduce" section (:mod:`bench.report.sections`)
turns them back into commands a reader can paste.

* :func:`set_launch_argv` is called by the command line (``bench.cli.main``) with the
  arguments it parsed, so a run started from Python (``bench.engine.run``) or from a
  test records ``argv: null`` instead of the test runner's own ``sys.argv``.
* :func:`git_info` reads the commit of the checkout the ``bench`` package was imported
  from, and only of that one: an installed copy inside some other repository (e.g. a
  virtual environment under a project folder) is not a checkout of bench.
"""
from __future__ import annotations

import logging
import shlex
import subprocess
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


__all__ = ["set_launch_argv", "launch_argv", "command_text", "git_info"]

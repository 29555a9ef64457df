"""The one owner of a run folder ``results/<run-id>/``: its paths, atomic writes, a
lock, and the records (read once, appended in place).

Layout::

    config.yaml        resolved config
    env.json           package versions, CPU/GPU, seed, command line, start time
    dataset.json       name, modality, class_names, labels, groups, ids, grouped?
    splits.json        {"splitter", "grouped", "folds": [{"split", "repeat", "fold", "train", "test"}]}
    records.jsonl      one JSON record per cell (schema: bench.records.SCHEMA)
    predictions/<cell_id>.npz   test_index, y_true, y_pred, proba (n_test, n_classes)
    features.json      per feature: label, family, weights provenance, dimension, ms/image
    analysis/          t-SNE embeddings, learning curves, galleries (see bench.analysis)
    finetune/<model>/<split>/   curves.csv, best checkpoint (CNN alternative)
    summary.csv        aggregated leaderboard
    run.log
    .lock              held (``fcntl.flock``) by the ``bench run`` writing the folder

* **Writes** go to a uniquely named temporary file in the same folder, renamed into
  place (:func:`atomic_path`): a reader sees the old or the new file, never half of
  one, and two processes never share a temporary name.
* **Records** are appended with one ``write`` + ``fsync`` of a whole line under an
  exclusive lock, so a killed run leaves every finished line intact; a torn last line
  is skipped on load (the cell is recomputed) and a fresh line starts after it.
  :meth:`RunFolder.records` reads the file once and keeps the list; appends through
  the folder extend it, so one ``bench run`` parses the file once.
* **The lock**: :meth:`RunFolder.lock` is held for a whole ``bench run``. A second run
  on the same folder waits for the first (logging who holds it) and then resumes
  what is left, which after a finished run is nothing: one record per cell.
  ``timeout=0`` stops at once with a :class:`~bench.errors.ResultsError` instead.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import ResultsError

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"
CONFIG = "config.yaml"
ENV = "env.json"
DATASET = "dataset.json"
SPLITS = "splits.json"
SPLITS_RANDOM = "splits_random.json"
FEATURES_META = "features.json"
SUMMARY = "summary.csv"
LOG = "run.log"
LOCK = ".lock"
PREDICTIONS = "predictions"
ANALYSIS = "analysis"
FINETUNE = "finetune"

_append_lock = threading.Lock()


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a unique temporary path beside ``path``; on success it replaces ``path``,
    on failure it is removed.

    ``suffix`` (default ``.tmp``) keeps writers that add an extension happy
    (``np.savez`` appends ``.npz`` to a name without one)."""
    path = Path(path)
    # unique per process and call (a plain open keeps the umask's permissions, which
    # tempfile.mkstemp's 0600 would not)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix or '.tmp'}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path, data, default=str) -> Path:
    return write_text(path, json.dumps(data, indent=1, default=default))


def read_json(path, default=None):
    """The parsed file, ``default`` when it is missing or unreadable (logged)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return default


# --------------------------------------------------------------------------- record lines
def read_records(path) -> list[dict]:
    """All complete records of a records file; a torn line from a crash is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def append_record(path, record: dict) -> None:
    """Append one record atomically (single write of a whole line, fsync)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        _append_line(Path(path), line)
    except OSError as exc:
        raise ResultsError(f"cannot write a record to {str(path)!r}: {exc.strerror or exc}",
                           "free disk space or fix permissions, then run the same command again: "
                           "finished records are kept and the run resumes") from None


def _append_line(path: Path, line: bytes) -> None:
    with _append_lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with contextlib.suppress(ImportError, OSError):
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_EX)
            # a previous crash may have left a torn line without newline: start a fresh one
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def latest_by_cell(records: list[dict]) -> dict[str, dict]:
    """Last record per cell id (a failed cell re-run later is replaced by its new record)."""
    out: dict[str, dict] = {}
    for r in records:
        out[r.get("cell_id")] = r
    return out


# --------------------------------------------------------------------------- predictions
def save_predictions(run_dir, cid: str, test_index, y_true, y_pred, proba=None) -> Path:
    d = Path(run_dir) / PREDICTIONS
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{cid}.npz"
    arrays = dict(test_index=np.asarray(test_index), y_true=np.asarray(y_true),
                  y_pred=np.asarray(y_pred))
    if proba is not None:
        arrays["proba"] = np.asarray(proba, dtype=np.float32)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def load_predictions(run_dir, cid: str) -> dict | None:
    path = Path(run_dir) / PREDICTIONS / f"{cid}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- the folder
class RunFolder:
    """Paths, lock, writes and records of one run folder (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        self._records: list[dict] | None = None
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        """``<folder>/<name>`` (one of the module's file-name constants)."""
        return self.path / name

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    @property
    def analysis_dir(self) -> Path:
        return self.path / ANALYSIS

    @property
    def finetune_dir(self) -> Path:
        return self.path / FINETUNE

    def is_run(self) -> bool:
        """Whether the folder holds records (a run started here)."""
        return self.records_path.exists()

    # -- opening
    @classmethod
    def open(cls, path) -> "RunFolder":
        """An existing run folder, for reading (``bench report``, ``bench compare``)."""
        folder = cls(path)
        if not folder.path.is_dir():
            raise ResultsError(f"run folder {folder.path} does not exist",
                               "pass a folder under results/, e.g. results/default-1a2b3c4d")
        if not folder.is_run():
            raise ResultsError(f"{folder.path} is not a run folder (no {RECORDS})",
                               "run `python -m bench run --config ...` first, or pass a folder "
                               "under results/, e.g. results/default-1a2b3c4d")
        return folder

    @classmethod
    def create(cls, path) -> "RunFolder":
        """The folder of a run about to write, made if needed and checked writable."""
        folder = cls(path)
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
            write_text(folder.path / ".write-test", "ok")
            (folder.path / ".write-test").unlink()
        except OSError as exc:
            raise ResultsError(f"cannot write to the results folder {str(folder.path)!r}: "
                               f"{exc.strerror or exc}",
                               "set output.results_dir to a writable folder with free space") from None
        return folder

    # -- the lock
    def acquire(self, timeout: float | None = None) -> None:
        """Hold the folder's lock; wait for another run holding it (``timeout`` seconds,
        ``None`` = as long as it takes, ``0`` = not at all: a :class:`ResultsError`)."""
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no lock
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_flock(fd, fcntl):
                self._wait(fd, fcntl, timeout)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": _now()}).encode(), 0)
        self._lock_fd = fd

    def _wait(self, fd: int, fcntl, timeout: float | None) -> None:
        holder = _holder(fd)
        if timeout is not None and timeout <= 0:
            raise ResultsError(f"another bench run ({holder}) is writing to {self.path}",
                               "wait for it to finish, or use --new (or another output.run_id) "
                               "for a separate run folder")
        log.warning("another bench run (%s) is writing to %s; waiting for it to finish "
                    "(Ctrl-C to stop)", holder, self.path)
        end = None if timeout is None else time.monotonic() + timeout
        while not _try_flock(fd, fcntl):
            if end is not None and time.monotonic() > end:
                raise ResultsError(f"another bench run ({holder}) still writes to {self.path} "
                                   f"after {timeout:g} s", "wait for it to finish, or use --new")
            time.sleep(0.2)
        log.info("the other run has finished; resuming %s", self.path)

    def release(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # closing the descriptor releases the flock

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None):
        self.acquire(timeout)
        try:
            yield self
        finally:
            self.release()

    # -- files
    def write_json(self, name: str, data) -> Path:
        return write_json(self.path / name, data)

    def write_text(self, name: str, text: str) -> Path:
        return write_text(self.path / name, text)

    def read_json(self, name: str, default=None):
        return read_json(self.path / name, default)

    # -- records
    def records(self) -> list[dict]:
        """Every record line, read on first use and then kept (appends extend it)."""
        if self._records is None:
            self._records = read_records(self.records_path)
        return self._records

    def latest(self) -> list[dict]:
        """The last record of each cell."""
        return list(latest_by_cell(self.records()).values())

    def done(self) -> set[str]:
        """Ids of the cells whose last record is ``ok`` (skipped when the run resumes)."""
        return {cid for cid, r in latest_by_cell(self.records()).items() if r.get("status") == "ok"}

    def append(self, record: dict) -> None:
        self.records()  # read before the first append: the file is parsed once
        append_record(self.records_path, record)
        self._records.append(record)

    def save_predictions(self, cid: str, test_index, y_true, y_pred, proba=None) -> Path:
        return save_predictions(self.path, cid, test_index, y_true, y_pred, proba)

    def load_predictions(self, cid: str) -> dict | None:
        return load_predictions(self.path, cid)


def _try_flock(fd: int, fcntl) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock: run unlocked rather than not at all
        log.debug("no file locks on this file system; running without the run-folder lock")
        return True


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid')}, since {info.get('since')}"
    except (OSError, ValueError):
        return "pid unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

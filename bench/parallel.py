"""Where the parallel work of a run goes: local processes (``loky``), threads, one
process (``sequential``) or a Dask cluster (``parallel.backend: dask``;
``parallel.address`` names a scheduler, otherwise a LocalCluster is started).

One loky pool per run: every ``Parallel(n_jobs=workers, backend="loky")`` of the run
(extraction and cells) gets joblib's reusable executor, which is the same one as long
as the worker count and environment do not change. :func:`start_workers` starts it at
the beginning of a run, in the background, so the workers import numpy, OpenCV,
scikit-learn and bench while the parent loads the dataset; :func:`wait_workers` takes
the start-up's answer before the first real task."""
from __future__ import annotations

import contextlib
import logging

from .errors import ConfigError
from .provenance import available_cores

log = logging.getLogger(__name__)

_warmup: dict = {}  # the start-up call in flight: {"gen": generator, "t0": time.time() at start, "submit_s"}
last_startup: dict = {}  # what the last wait_workers() learnt (perf and tests read it)


def n_workers(n_jobs: int) -> int:
    """Worker count of ``parallel.n_jobs`` (negative: every available core)."""
    return available_cores() if n_jobs < 0 else max(1, min(n_jobs, 64))


def _dask_plugin_loader(paths: list[str]):
    """A Dask worker plugin that imports the run's plugin files in every worker.

    Dask pickles a task's arguments with plain pickle (cloudpickle only for objects of
    the top-level call's own module), so a plugin's extractor or classifier travels by
    reference to its module, which a worker has to have imported under the same name.
    """
    from distributed import WorkerPlugin

    class LoadBenchPlugins(WorkerPlugin):
        name = "bench-plugins"

        def __init__(self, plugin_paths):
            self.plugin_paths = list(plugin_paths)

        def setup(self, worker):
            from .components import load_components
            from .plugins import load_plugins
            load_components()
            load_plugins(self.plugin_paths)

    return LoadBenchPlugins(paths)


@contextlib.contextmanager
def parallel_backend(par: dict, plugins: list[str] = ()):
    """The ``parallel:`` section's backend for joblib inside the block (Dask: a client)."""
    if par["backend"] != "dask":
        yield
        return
    try:
        from dask.distributed import Client, LocalCluster
        from joblib import parallel_config
    except ImportError:
        raise ConfigError("parallel.backend: dask needs dask.distributed",
                          "pip install -e '.[dask]'") from None
    if par["address"]:
        try:
            client = Client(par["address"], timeout="10s")
        except OSError as exc:
            raise ConfigError(f"parallel.address {par['address']!r}: cannot reach the Dask scheduler ({exc})",
                              "start one with `dask scheduler` and workers with `dask worker ADDRESS`") from None
        cluster = None
    else:
        cluster = LocalCluster(n_workers=n_workers(par["n_jobs"]), threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    log.info("Dask client: %s", client)
    try:
        if plugins:
            client.register_plugin(_dask_plugin_loader(plugins))
        with parallel_config(backend="dask"):
            yield
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def joblib_backend(par: dict) -> tuple[int, str | None]:
    """``(workers, backend)`` for a joblib ``Parallel`` over cells: dask uses the backend
    set by :func:`parallel_backend`; sequential runs one loky worker."""
    workers = 1 if par["backend"] == "sequential" else n_workers(par["n_jobs"])
    backend = {"dask": None, "sequential": "loky"}.get(par["backend"], par["backend"])
    return workers, backend


# --------------------------------------------------------------------------- the run's worker pool
def _warm() -> dict:
    """A worker's start-up task: import what extraction needs (never TensorFlow); the cells'
    classifiers are imported by the first cell task."""
    import os
    import sys
    import time
    t0, cpu0 = time.perf_counter(), time.process_time()
    from . import cache, records, weights  # noqa: F401  (what bench.extraction, the tasks' module, imports)
    from . import features  # noqa: F401  (every built-in extractor, as an unpickled stage needs)
    from .data import folder  # noqa: F401  (the folder loader: Pillow, the decoder)
    return {"pid": os.getpid(), "import_s": time.perf_counter() - t0, "done_at": time.time(),
            "import_cpu_s": time.process_time() - cpu0,
            "tensorflow": "tensorflow" in sys.modules}


def local_workers(par: dict) -> int:
    """How many loky worker processes a run with this ``parallel:`` section uses (0: none)."""
    workers = n_workers(par["n_jobs"])
    return workers if par["backend"] == "loky" and workers > 1 else 0


def start_workers(par: dict) -> bool:
    """Start the run's loky pool now, without waiting: one start-up task per worker
    (:func:`_warm`). Returns whether a pool is starting."""
    workers = local_workers(par)
    if not workers or _warmup:
        return bool(_warmup)
    import time
    from joblib import Parallel, delayed
    t0 = time.perf_counter()
    gen = Parallel(n_jobs=workers, backend="loky", batch_size=1, return_as="generator_unordered")(
        delayed(_warm)() for _ in range(workers))
    _warmup.update(gen=gen, t0=time.time(), submit_s=time.perf_counter() - t0)
    log.debug("starting %d loky workers", workers)
    return True


def wait_workers() -> dict | None:
    """The start-up's answer (worker pids, import seconds, wait seconds), once; None when
    no start-up is in flight. Called before a run's first Parallel call."""
    if not _warmup:
        return None
    import time
    gen, t0 = _warmup.pop("gen"), _warmup.pop("t0")
    submit_s = _warmup.pop("submit_s")
    t_wait = time.perf_counter()
    try:
        answers = list(gen)
    except Exception as exc:  # noqa: BLE001 - e.g. a worker killed while starting: joblib starts others
        log.warning("the worker pool did not start cleanly (%s: %s); joblib restarts it",
                    type(exc).__name__, exc)
        return None
    info = {"pids": sorted({a["pid"] for a in answers}), "import_s": max(a["import_s"] for a in answers),
            "import_cpu_s": max(a["import_cpu_s"] for a in answers),
            "tensorflow": any(a["tensorflow"] for a in answers), "submit_s": submit_s,
            "ready_s": max(a["done_at"] for a in answers) - t0, "wait_s": time.perf_counter() - t_wait}
    last_startup.clear()
    last_startup.update(info)
    if info["tensorflow"]:
        log.warning("a worker process imported TensorFlow at start-up (slow start-up)")
    log.info("workers %s ready %.1f s after the start (the parent waited %.2f s of it)",
             info["pids"], info["ready_s"], info["wait_s"])
    return info


def drop_workers(wait: bool = True) -> None:
    """End a start-up that nobody waited for (a run with nothing to compute, or one that
    stopped on an error): ``wait`` takes its answer and keeps the pool (idle workers leave
    after joblib's timeout); otherwise (Ctrl-C) joblib aborts it."""
    gen = _warmup.pop("gen", None)
    _warmup.clear()
    if gen is not None and wait:
        with contextlib.suppress(Exception):
            list(gen)

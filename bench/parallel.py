"""Where the parallel work of a run goes: local processes (``loky``), threads, one
process (``sequential``) or a Dask cluster (``parallel.backend: dask``;
``parallel.address`` names a scheduler, otherwise a LocalCluster is started)."""
from __future__ import annotations

import contextlib
import logging

from .errors import ConfigError
from .provenance import available_cores

log = logging.getLogger(__name__)


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

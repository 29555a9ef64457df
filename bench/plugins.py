"""Plugin files: Python files named under ``plugins:`` that register components.

A plugin runs code when it is imported: name only files you trust (README, "Plugins").
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import traceback
from pathlib import Path

from .errors import BenchError, PluginError


def load_plugins(paths: list[str], base: Path | None = None) -> list[str]:
    """Import plugin files so the components they register can be named in the config.

    Returns their absolute paths (what Dask workers load, see :mod:`bench.parallel`)."""
    loaded = []
    for p in paths:
        path = Path(p)
        if not path.is_absolute() and base is not None and not path.exists():
            path = base / path
        if not path.exists():
            raise PluginError(f"plugin file {p!r} does not exist", "check the path in 'plugins:'")
        loaded.append(str(path.resolve()))
        name = "bench_plugin_" + path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
            continue
        _import(name, path)
    return loaded


def _import(name: str, path: Path) -> None:
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise PluginError(f"plugin {path}: syntax error at line {exc.lineno}: {exc.msg}",
                          "fix the plugin file") from None
    except BenchError:
        sys.modules.pop(name, None)
        raise
    except Exception as exc:  # noqa: BLE001 - any plugin failure becomes a clear message
        sys.modules.pop(name, None)
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if Path(f.filename).resolve() == path.resolve()]
        line = f" line {frames[-1].lineno}" if frames else ""
        raise PluginError(f"plugin {path}{line}: {type(exc).__name__}: {exc}",
                          "fix the plugin file (run it with python to see the traceback)") from None
    sys.modules[name] = module
    # worker processes cannot import a plugin by name: ship its classes by value
    with contextlib.suppress(Exception):
        import cloudpickle
        cloudpickle.register_pickle_by_value(module)

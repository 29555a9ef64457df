"""Registries: one per axis (datasets, features, backbones, classifiers, regressors).

A component registers itself with a decorator::

    from bench.registry import FEATURES

    @FEATURES.register("lbp", "Multi-radius uniform LBP histograms")
    class LBPHistogram(Extractor):
        ...

and a config names it with keyword arguments: ``FEATURES.create("lbp", radii=[1, 2])``.
Duplicate names are rejected, unknown names get a "did you mean" hint, and
``list("sift*")`` filters with shell wildcards.
"""
from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import ConfigError, did_you_mean


@dataclass
class Entry:
    name: str
    obj: Any
    description: str
    meta: dict = field(default_factory=dict)


class Registry:
    """A named collection of factories (classes or functions)."""

    def __init__(self, axis: str):
        self.axis = axis
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str | None = None, **meta) -> Callable:
        def deco(obj):
            old = self._entries.get(name)
            same = old is not None and (getattr(old.obj, "__module__", None), getattr(
                old.obj, "__qualname__", None)) == (getattr(obj, "__module__", None),
                                                    getattr(obj, "__qualname__", None))
            if old is not None and not same:  # re-importing the same plugin replaces it
                raise ValueError(f"{self.axis} {name!r} is already registered "
                                 f"(by {self._entries[name].obj!r})")
            desc = description
            if desc is None:
                doc = inspect.getdoc(obj) or ""
                desc = doc.strip().splitlines()[0] if doc.strip() else ""
            self._entries[name] = Entry(name, obj, desc, dict(meta))
            return obj
        return deco

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def list(self, pattern: str = "*") -> list[Entry]:
        return [e for e in self if fnmatch.fnmatch(e.name, pattern)]

    def entry(self, name: str, where: str | None = None) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            hint = did_you_mean(name, self.names()) + \
                f"known {self.axis}: {', '.join(self.names())}; see `python -m bench list {self.axis}`"
            loc = f" in {where}" if where else ""
            raise ConfigError(f"unknown {self.axis[:-1] if self.axis.endswith('s') else self.axis} "
                              f"{name!r}{loc}", hint) from None

    def get(self, name: str, where: str | None = None) -> Any:
        return self.entry(name, where).obj

    def create(self, name: str, where: str | None = None, **params) -> Any:
        """Instantiate ``name`` with ``params``; a wrong keyword becomes a ConfigError."""
        obj = self.get(name, where)
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            sig = None
        if sig is not None:
            accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
            allowed = [p for p in sig.parameters if p not in ("self",)]
            for key in params:
                if key not in sig.parameters and not accepts_kwargs:
                    loc = f" ({where})" if where else ""
                    raise ConfigError(
                        f"{self.axis[:-1]} {name!r} has no parameter {key!r}{loc}",
                        did_you_mean(key, allowed) + f"allowed: {', '.join(allowed) or '(none)'}")
        return obj(**params)


DATASETS = Registry("datasets")
FEATURES = Registry("features")
BACKBONES = Registry("backbones")
CLASSIFIERS = Registry("classifiers")
REGRESSORS = Registry("regressors")   # count regressors (bench/regressors.py, counting)

ALL = {"datasets": DATASETS, "features": FEATURES, "backbones": BACKBONES,
       "classifiers": CLASSIFIERS, "regressors": REGRESSORS}


def accepts(factory, name: str) -> bool:
    """Whether a registered factory takes keyword ``name`` (e.g. ``random_state``)."""
    return name in inspect.signature(factory).parameters

"""No import cycle in ``bench/``: every module's imports (module-level and inside
functions, ``from . import x``, ``__import__("bench.x")`` and
``importlib.import_module("bench.x")`` with literal names) form an acyclic graph.

A function-level import that closes a cycle works at run time but is a sign that a
helper lives in the wrong module; the test names the cycle so it can be moved.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bench"


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``target`` that is a module of ``bench``."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def _literal_call_targets(node: ast.Call) -> list[str]:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("__import__", "import_module") or not node.args:
        return []
    arg = node.args[0]
    return [arg.value] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []


def _loop_targets(tree: ast.AST) -> list[str]:
    """``for mod in ("bench.a", "bench.b"): __import__(mod)``: the literal names iterated."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.iter, (ast.Tuple, ast.List)):
            calls = [c for c in ast.walk(node) if isinstance(c, ast.Call)
                     and getattr(c.func, "id", getattr(c.func, "attr", None)) in ("__import__", "import_module")]
            if calls:
                out += [e.value for e in node.iter.elts
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return out


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """Modules of ``bench`` that importing ``name`` (or calling its functions) imports."""
    tree = ast.parse(modules[name].read_text(), str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    targets: set[str] = set()

    def add(full: str):
        hit = _resolve(full, modules)
        if hit is not None and hit != name and not name.startswith(hit + "."):
            targets.add(hit)  # importing a submodule of one's own package is no edge to it

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bench"):
                    add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("bench"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                add(sub if sub in modules else mod)
        elif isinstance(node, ast.Call):
            for t in _literal_call_targets(node):
                if t.startswith("bench"):
                    add(t)
    for t in _loop_targets(tree):
        if t.startswith("bench"):
            add(t)
    return targets


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = _modules(root)
    return {name: imports_of(name, modules) for name in modules}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, comp) for comp in comps]


def _one_cycle(graph, comp: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself."""
    members, start = set(comp), comp[0]
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def test_no_import_cycle_in_bench():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in bench/:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_walker_sees_function_level_and_relative_imports(tmp_path):
    """The walker itself: a cycle closed by an import inside a function is found."""
    pkg = tmp_path / "bench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("def g():\n    import bench.a\n")
    (pkg / "d.py").write_text("def h():\n    __import__('bench.c')\n")
    graph = import_graph(pkg)
    assert graph["bench.a"] == {"bench.sub.b"}
    assert graph["bench.sub.b"] == {"bench.c"}
    assert graph["bench.d"] == {"bench.c"}
    cycles = find_cycles(graph)
    assert len(cycles) == 1 and set(cycles[0]) == {"bench.a", "bench.sub.b", "bench.c"}


@pytest.mark.parametrize("src, expect", [
    ("from . import records as rec\n", {"bench.records"}),
    ("from .features import concat\n", {"bench.features.concat"}),
    ("from .features.concat import build_part\n", {"bench.features.concat"}),
    ("for m in ('bench.c',):\n    __import__(m)\n", {"bench.c"}),
])
def test_walker_forms(tmp_path, src, expect):
    pkg = tmp_path / "bench"
    (pkg / "features").mkdir(parents=True)
    for f in ("__init__.py", "records.py", "c.py", "features/__init__.py", "features/concat.py"):
        (pkg / f).write_text("")
    (pkg / "x.py").write_text(src)
    assert import_graph(pkg)["bench.x"] == expect


def test_readme_layout_names_every_module_of_the_package():
    """The README's layout paragraph names each module and subpackage of bench/."""
    readme = (ROOT.parent / "README.md").read_text()
    start = readme.index("Layout (docs/ARCHITECTURE.md")
    layout = readme[start:readme.index("`docs/`.", start)]
    names = {p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"}
    names |= {p.name + "/" for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    perf = {n for n in names if n.startswith("perf")}  # `perf*.py`
    missing = sorted(n for n in names - perf if f"`{n}`" not in layout)
    assert not missing, f"README layout misses {missing}"
    assert (ROOT.parent / "docs" / "ARCHITECTURE.md").exists()

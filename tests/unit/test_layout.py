"""The tree's own rules.

Tests: pytest imports test modules by basename (rootdir-relative `prepend` import mode), so
two test files with one name in different tiers break collection.

Source: the packages and the arrows allowed between them (docs/design.md, "Packages and
arrows"). Every `import` counts, wherever it is — at the top, inside a function, under
`TYPE_CHECKING` — because an import hidden in a function is still a dependency (and a
cycle hidden there is still a cycle).
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
TOP = ("keyd", "cluster", "sprayer")

#: the daemons and tools: each imports shared code only (and `clusterctl` the two it drives)
PROGRAMS = ("keyd", "sprayer", "cluster.node", "cluster.hooks", "cluster.lab", "cluster.cli")

#: code two programs share, and what each part of it may import of the project
SHARED: dict[str, frozenset[str]] = {
    "cluster": frozenset(),          # the package's own __init__ (not its modules)
    "cluster.config": frozenset(),
    "cluster.logs": frozenset(),
    "cluster.start": frozenset(),
    "cluster.systemd": frozenset(),
    "cluster.metrics": frozenset(),
    "cluster.host": frozenset(),
    "cluster.netlink": frozenset({"cluster.host"}),
    "cluster.probe": frozenset(),
    "cluster.rendezvous": frozenset(),
    "cluster.plan": frozenset({"cluster.rendezvous"}),
    "cluster.grants": frozenset(),
    "cluster.pki": frozenset(),
    "cluster.procs": frozenset(),
    "cluster.freeradius": frozenset({"cluster.procs"}),
    "cluster.esp": frozenset(),
    "cluster.xfrm": frozenset(),
    "cluster.policy": frozenset(),
    "cluster.store": frozenset({"cluster.config", "cluster.grants", "cluster.policy"}),
}

ALLOWED: dict[str, frozenset[str]] = {
    **SHARED,
    **{p: frozenset(SHARED) for p in PROGRAMS},
    # `clusterctl watch` shows the hooks' events; `clusterctl lab` drives the lab
    "cluster.cli": frozenset(SHARED) | {"cluster.hooks", "cluster.lab"},
}

#: sans-I/O cores: no sockets, no threads, no event loop, no etcd, no clock (STYLE.md)
SANS_IO = ("keyd.ike", "cluster.esp", "cluster.plan", "cluster.rendezvous")
IO_MODULES = frozenset({"socket", "selectors", "asyncio", "threading", "subprocess", "time",
                        "requests", "etcd3", "grpc"})


@dataclass(frozen=True, slots=True)
class Import:
    module: str      # the importing module
    target: str      # the module (or package) imported
    line: int


def package_of(module: str) -> str:
    """The package (an entry of ALLOWED) a module belongs to: the longest key it is in, else
    the module itself (then it is in no package the layout knows)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in ALLOWED and (name != "cluster" or module == "cluster"):
            return name
    return module


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name → file of every module of the project."""
    out: dict[str, Path] = {}
    for top in TOP:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(module: str, source: str, known: set[str] | dict[str, Path],
               is_package: bool) -> Iterator[Import]:
    """Every project import in `source` (of `module`), relative ones resolved; `from p import
    m` where p.m is a module counts as importing p.m."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in TOP:
                yield Import(module, target, node.lineno)


@functools.cache
def project_imports(root: Path = ROOT) -> list[Import]:
    modules = source_modules(root)
    return [imp for name, path in modules.items()
            for imp in imports_of(name, path.read_text(), modules, path.name == "__init__.py")]


def forbidden(imports: list[Import]) -> list[str]:
    """Imports across an arrow the layout does not allow, as readable lines."""
    bad = []
    for imp in imports:
        src, dst = package_of(imp.module), package_of(imp.target)
        if src == dst:
            continue
        if src not in ALLOWED:
            bad.append(f"{imp.module} is in no package of the layout (add it to ALLOWED)")
        elif dst not in ALLOWED[src]:
            bad.append(f"{imp.module}:{imp.line} imports {imp.target}: {src} -> {dst} "
                       "is not an allowed arrow")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), i.e. the cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = package_of(imp.module), package_of(imp.target)
        if src != dst:
            edges.setdefault(src, set()).add(dst)
    return edges


def module_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.module:
            edges.setdefault(imp.module, set()).add(imp.target)
    return edges


# -- the tree as it is -----------------------------------------------------------------------


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py"
                    and "__pycache__" not in p.parts)
    assert not [n for n, k in names.items() if k > 1]


def test_every_module_is_in_a_package_of_the_layout() -> None:
    assert not [m for m in source_modules() if package_of(m) not in ALLOWED]


def test_imports_follow_the_allowed_arrows() -> None:
    assert forbidden(project_imports()) == []


def test_no_cycle_between_packages() -> None:
    assert cycles(package_edges(project_imports())) == []


def test_no_cycle_between_modules() -> None:
    assert cycles(module_edges(project_imports())) == []


def test_the_allowed_arrows_have_no_cycle() -> None:
    assert cycles({p: set(a) for p, a in ALLOWED.items()}) == []


def test_sans_io_cores_import_no_io() -> None:
    bad = []
    for name, path in source_modules().items():
        if not any(name == c or name.startswith(c + ".") for c in SANS_IO):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom)
                    and not node.level else [])
            bad += [f"{name}:{node.lineno} imports {m}" for m in mods
                    if m.split(".")[0] in IO_MODULES]
    assert bad == []


def test_no_two_error_classes_share_a_name() -> None:
    """One name for one thing: an error is named after its protocol or part (IkeProtocolError,
    EspProtocolError, HandoffError, ProbeError, ...), so a reader and an `except` clause
    never need an import alias to tell two apart."""
    where: dict[str, list[str]] = {}
    for name, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Exception")):
                where.setdefault(node.name, []).append(name)
    assert {n: m for n, m in where.items() if len(m) > 1} == {}


# -- the checks catch what they are for --------------------------------------------------------


def _imports(module: str, source: str) -> list[Import]:
    return list(imports_of(module, source, set(source_modules()), False))


def test_a_node_module_importing_the_sprayer_is_caught() -> None:
    for source in ("import sprayer\n", "from sprayer.health import HealthTracker\n",
                   "def f() -> None:\n    from sprayer import plan\n",
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import keyd.ike\n"):
        assert forbidden(_imports("cluster.node.agent", source)), source


def test_shared_code_importing_a_program_is_caught() -> None:
    assert forbidden(_imports("cluster.store.client", "from cluster.cli import main\n"))
    assert forbidden(_imports("cluster.probe", "from .node import agent\n"))


def test_relative_imports_resolve() -> None:
    (imp,) = _imports("keyd.server", "from .ike.events import RadiusRequested\n")
    assert imp.target == "keyd.ike.events"
    (imp,) = _imports("cluster.store.watch", "from ..plan import choose\n")
    assert imp.target == "cluster.plan"


def test_a_cycle_is_caught() -> None:
    edges = package_edges([Import("cluster.store.client", "cluster.pki", 1),
                           Import("cluster.pki", "cluster.store.rbac", 2)])
    assert cycles(edges) == [["cluster.pki", "cluster.store"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []

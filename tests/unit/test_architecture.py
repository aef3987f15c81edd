"""The shape of `extproc/` that DESIGN.md promises, checked from the source text.

- No import cycle between modules. Every import counts wherever it is written: at the top,
  inside a function (a deferred import hides a cycle from the interpreter, not from the
  design) and under `if TYPE_CHECKING:` (the same, for the type checker).
- The data path (gate, providers, quota, policy, telemetry) imports nothing from the
  process model, the operator tools, the deployment helpers or the development tools.
- At most six modules sit flat in `extproc/`: the rest is grouped by role.

A package's `__init__` that re-exports its own submodules is a facade, not a dependency of
the design: its edges into its own subtree are left out, and a module that imports a name
through a facade (`from extproc.quota import QuotaStore`) is charged with an edge to the
submodule that defines it (`extproc.quota.store`). So a facade never makes a cycle, and a
real cycle routed through one is still found. The checker is plain functions over a source
tree, so the tests below first prove on small fake trees that it finds what it must.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "extproc"
DATA_PATH = ("gate", "providers", "quota", "policy", "telemetry")
NOT_FROM_DATA_PATH = ("control", "ctl", "kube", "dev", "serve")
MAX_FLAT_MODULES = 6

Graph = dict[str, set[str]]


# --- the checker ------------------------------------------------------------------------


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a directory under `root`) by dotted name; a package is
    named by its `__init__.py`."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: Mapping[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _base(name: str, node: ast.ImportFrom, modules: Mapping[str, Path]) -> str:
    """The module `from <base> import …` names, with relative levels resolved."""
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    if not _is_package(name, modules):
        parts = parts[:-1]  # a module's level 1 is its package; a package's is itself
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _imports(name: str, modules: Mapping[str, Path]) -> list[tuple[str, str | None]]:
    """(module named, imported name or None) for every import statement in the file."""
    tree = ast.parse(modules[name].read_text(encoding="utf-8"), filename=str(modules[name]))
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, node, modules)
            found.extend((base, alias.name) for alias in node.names)
    return found


def _known(target: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of `target` that is one of our modules (None: not ours)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def import_graph(root: Path, package: str) -> Graph:
    """Module -> the modules of `package` it imports (see the module docstring for facades)."""
    modules = module_files(root, package)
    # What each package facade re-exports: name -> the submodule of its own it comes from.
    reexports: dict[str, dict[str, str]] = {}
    for name in modules:
        if _is_package(name, modules):
            reexports[name] = {
                alias: source
                for base, alias in _imports(name, modules)
                if alias is not None
                and (source := _known(f"{base}.{alias}", modules) or _known(base, modules))
                and source != name
                and _within(source, name)
            }
    graph: Graph = {name: set() for name in modules}
    for name in modules:
        for base, alias in _imports(name, modules):
            target = _known(f"{base}.{alias}", modules) if alias else None
            if target is None or target == _known(base, modules):
                target = _known(base, modules)
                if target is not None and alias is not None:
                    target = reexports.get(target, {}).get(alias, target)
            if target is None or target == name:
                continue
            if _is_package(name, modules) and _within(target, name):
                continue  # a facade's own re-exports
            graph[name].add(target)
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One concrete cycle (a path that returns to its start) per strongly connected group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_through(graph, group) for group in groups]


def _path_through(graph: Mapping[str, Iterable[str]], group: set[str]) -> list[str]:
    """The shortest way from the group's first module back to itself, inside the group."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt not in group or nxt in came_from:
                    continue
                came_from[nxt] = node
                if nxt == start:
                    path = [start]
                    while path[-1] != start or len(path) == 1:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {sorted(group)}")  # Tarjan said there is one


def layering_violations(
    graph: Mapping[str, Iterable[str]], *, lower: Iterable[str], upper: Iterable[str]
) -> list[str]:
    """`module -> import` for every module inside a `lower` package that imports a module
    inside an `upper` one (both given as dotted package names)."""
    lower, upper = tuple(lower), tuple(upper)
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if any(_within(name, package) for package in lower)
        for target in targets
        if any(_within(target, package) for package in upper)
    )


def flat_modules(root: Path, package: str) -> list[str]:
    return sorted(
        path.name
        for path in (root / package).glob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )


# --- the real tree ----------------------------------------------------------------------


def test_extproc_has_no_import_cycle() -> None:
    found = cycles(import_graph(ROOT, PACKAGE))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_data_path_imports_no_process_model_operator_deployment_or_dev_code() -> None:
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 50  # the walk found the tree (a wrong root would pass vacuously)
    bad = layering_violations(
        graph,
        lower=[f"{PACKAGE}.{name}" for name in DATA_PATH],
        upper=[f"{PACKAGE}.{name}" for name in NOT_FROM_DATA_PATH],
    )
    assert not bad, "the data path imports:\n" + "\n".join(bad)


def test_extproc_is_grouped_by_role() -> None:
    flat = flat_modules(ROOT, PACKAGE)
    assert "errors.py" in flat  # the walk found the tree
    assert len(flat) <= MAX_FLAT_MODULES, f"flat modules in {PACKAGE}/: {flat}"


# --- the checker on small trees: it finds what it must, and only that ---------------------


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_follows_relative_absolute_and_deferred_imports_around_a_cycle(
    tmp_path: Path,
) -> None:
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "def later():\n    from .sub.c import thing\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from ..a import value\nimport json\n",
            "pkg/d.py": "import pkg.a\n",  # depends on the cycle, is not part of it
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.c"] == {"pkg.a"}  # `json` is not ours
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_checker_counts_imports_under_type_checking(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/x.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.y import Y\n"
            ),
            "pkg/y.py": "from pkg import x\n",
        },
    )
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.x", "pkg.y", "pkg.x"]]


def test_checker_lets_a_facade_re_export_but_sees_a_cycle_routed_through_it(
    tmp_path: Path,
) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/store/__init__.py": "from .core import Store\nfrom pkg.store.extra import Extra\n",
        "pkg/store/core.py": "import pkg.store.extra\n",
        "pkg/store/extra.py": "VALUE = 1\nclass Extra: ...\n",
        "pkg/user.py": "from pkg.store import Store\n",
    }
    graph = import_graph(_tree(tmp_path / "ok", files), "pkg")
    assert graph["pkg.user"] == {"pkg.store.core"}  # charged to the defining submodule
    assert cycles(graph) == []
    # extra.py now needs `Store` through the facade, and core.py already needs extra.py.
    files["pkg/store/extra.py"] = "from pkg.store import Store\nclass Extra: ...\n"
    bad = import_graph(_tree(tmp_path / "bad", files), "pkg")
    assert cycles(bad) == [["pkg.store.core", "pkg.store.extra", "pkg.store.core"]]


def test_checker_finds_a_layering_violation(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/gate/__init__.py": "",
            "pkg/gate/phase.py": "from pkg.errors import E\nfrom ..control import api\n",
            "pkg/control/__init__.py": "",
            "pkg/control/api.py": "from pkg.gate import phase\n",  # upward: allowed
            "pkg/errors.py": "",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert layering_violations(graph, lower=["pkg.gate"], upper=["pkg.control"]) == [
        "pkg.gate.phase -> pkg.control.api"
    ]


@pytest.mark.parametrize("count", [MAX_FLAT_MODULES, MAX_FLAT_MODULES + 1])
def test_checker_counts_flat_modules(tmp_path: Path, count: int) -> None:
    files = {f"pkg/m{n}.py": "" for n in range(count)}
    files.update({"pkg/__init__.py": "", "pkg/__main__.py": "", "pkg/sub/x.py": ""})
    assert len(flat_modules(_tree(tmp_path, files), "pkg")) == count

"""The package's shape: components keep their internals to themselves, and no imports go in a circle.

A *component* is a direct child of ``llamahome`` (``cli``, ``monitoring``, ``resources``, ``errors``) or of
``llamahome.cache`` (``disk``, ``memory``, ``model``, ``redis``, ``training``, ``kv``, ``config``, ``codecs``, ...).
Inside a component, modules may share private names and ``_private`` modules; across components, only public
names of public modules. Imports inside functions ("lazy" imports) count too; imports under
``if TYPE_CHECKING:`` do not, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "llamahome"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _component(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["llamahome", "cache"] and len(parts) > 2:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges() -> list[tuple[str, str, str | None]]:
    """(importer, imported module, imported name or None) for every runtime import inside llamahome."""
    edges: list[tuple[str, str, str | None]] = []
    for module, path in MODULES.items():
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(module, a.name, None) for a in node.names if a.name.startswith("llamahome")]
                continue
            target = _resolve(module, node)
            if not target.startswith("llamahome"):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:
                    edges.append((module, submodule, None))
                else:
                    edges.append((module, target, alias.name))
    return edges


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_owner(module: str) -> str | None:
    """The package a ``_private`` module belongs to (``a.b._c`` -> ``a.b``), or None for a public module."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:i])
    return None


def _private_path(module: str) -> bool:
    return _private_owner(module) is not None


def test_no_private_names_cross_a_component_boundary() -> None:
    crossings = []
    for importer, target, name in _edges():
        owner = _private_owner(target)
        private_module = owner is not None and not (importer + ".").startswith(owner + ".")
        private_name = name is not None and _is_private(name) and _component(importer) != _component(target)
        if private_module or private_name:
            crossings.append(f"{importer} imports {target}{'.' + name if name else ''}")
    assert crossings == [], "\n".join(crossings)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for importer, target, _ in _edges():
        if target in MODULES and target != importer:
            graph[importer].add(target)
    cycles = _cycles(graph)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_cache_never_imports_monitoring_cli_or_resources() -> None:
    upward = [
        f"{importer} imports {target}"
        for importer, target, _ in _edges()
        if importer.startswith("llamahome.cache") and target.startswith(("llamahome.monitoring", "llamahome.cli"))
    ]
    assert upward == [], "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_checker_sees_a_crossing_and_a_cycle() -> None:
    """The checks above can fail: a private import across components and a two-module cycle are found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _component("llamahome.cache.disk._index") != _component("llamahome.cache.model._store")
    assert _private_path("llamahome.cache.disk._index") and not _private_path("llamahome.cache.disk")
    assert _private_owner("llamahome.cache._procs") == "llamahome.cache"

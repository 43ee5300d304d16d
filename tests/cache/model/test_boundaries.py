"""The model cache is one package: its ``__init__`` is the public face, its ``_private`` modules stay inside.

Checked on the source with ``ast`` (lazy imports inside functions included), so a new import that reaches
into the package's internals from elsewhere, or out of it into another component's private names, fails here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import llamahome

SRC = Path(llamahome.__file__).parent
PACKAGE = "llamahome.cache.model"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import in a file, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [alias.name for alias in node.names]
            found.append((module, names))
            found.extend((f"{module}.{n}", []) for n in names)  # `from . import _io` imports a module
    return found


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def test_nothing_outside_the_package_imports_its_internals() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if _module_name(path).startswith(PACKAGE):
            continue
        for module, _ in _imports(path):
            if module.startswith(PACKAGE + ".") and _is_private(module.removeprefix(PACKAGE)):
                offenders.append(f"{path.relative_to(SRC)} imports {module}")
    assert offenders == []


def test_the_package_imports_no_private_names_of_other_components() -> None:
    # The one shared helper module of llamahome.cache that several components use (process liveness for
    # sweeping dead writers' temp files) is allowed; it exports a public name.
    allowed = {"llamahome.cache._procs"}
    offenders = []
    for path in (SRC / "cache" / "model").glob("*.py"):
        for module, names in _imports(path):
            if (
                module.startswith(PACKAGE)
                or not module.startswith("llamahome")
                or module.rpartition(".")[0] in allowed
                or module in allowed
            ):
                continue
            private = [n for n in names if n.startswith("_")]
            if _is_private(module) or private:
                offenders.append(f"{path.name} imports {module} {private}")
    assert offenders == []


def test_public_face_and_old_import_paths() -> None:
    from llamahome.cache import ModelCache
    from llamahome.cache.model import ModelCache as Same, ModelInfo, ModelNotFoundError

    assert ModelCache is Same and ModelInfo.__module__.startswith(PACKAGE)
    assert issubclass(ModelNotFoundError, KeyError)
    model = importlib.import_module(PACKAGE)
    assert all(hasattr(model, name) for name in model.__all__)
    assert not [name for name in model.__all__ if name.startswith("_")]

"""The disk tier's package boundary (issue 12): one public face, internals that talk through objects."""

from __future__ import annotations

import ast
from pathlib import Path

import llamahome.cache as cache_pkg
import llamahome.cache.disk as disk_pkg
from llamahome.cache import DiskCache
from llamahome.cache.disk import DiskCache as DiskCacheFromPackage

PACKAGE = Path(disk_pkg.__file__).parent


def test_the_package_is_the_public_face() -> None:
    assert DiskCache is DiskCacheFromPackage is cache_pkg.DiskCache
    assert set(disk_pkg.__all__) == {"DiskCache", "POLICIES", "INLINE_MAX"}
    assert sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py") == sorted(
        p.name for p in PACKAGE.glob("_*.py") if p.name != "__init__.py"
    )  # every module besides __init__ is private


def test_upkeep_works_through_the_index_and_files_objects_only() -> None:
    """cleanup's module never touches DiskCache (or any object's) private members, nor imports the store."""
    tree = ast.parse((PACKAGE / "_upkeep.py").read_text())
    private = [
        f"{ast.unparse(node.value)}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        and ast.unparse(node.value) not in {"self", "os", "dx", "df"}
    ]
    assert private == []
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "_store" not in imported

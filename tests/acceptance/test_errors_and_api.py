"""Acceptance: the public face of the library.

Misuse of any public class or function (a wrong type, a bad interval, an unknown policy) raises an error
that derives from ``llamahome.errors.CacheError``, never a bare Python error; and every name
``llamahome.cache`` exports stays the real object, whichever of its submodules a user imported first
(the ``llamahome.errors`` docstring; issues 2 and 12). The error tree itself is checked in
``tests/test_public_api.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from llamahome.cache import AsyncScheduler, CacheManager, DiskCache, MemoryCache, TieredCache
from llamahome.errors import CacheError, ConfigError

from ._support import child_env, small_config


def test_misuse_raises_cache_errors_not_bare_python_errors(tmp_path: Path) -> None:
    """'Every error the library raises derives from CacheError': wrong arguments included."""
    with pytest.raises(ConfigError):
        CacheManager("cache.yaml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CacheManager({"cache": {}})  # type: ignore[arg-type]
    for bad in ("soon", None, 0, -1, float("nan")):
        with pytest.raises(ConfigError):
            asyncio.run(AsyncScheduler().schedule(lambda: None, interval=bad))  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        asyncio.run(AsyncScheduler().schedule(lambda: None, interval=1, delay="later"))  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        MemoryCache(size="lots")
    with pytest.raises(CacheError):
        MemoryCache(policy="random")
    with pytest.raises(CacheError):
        DiskCache(tmp_path / "d", policy="random")
    with pytest.raises(CacheError):
        MemoryCache(size=1).set("k", 1, ttl="soon")  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        TieredCache()

    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            with pytest.raises(CacheError):
                await cache.get_or_set("k", 5)  # type: ignore[arg-type]
            with pytest.raises(CacheError):
                cache.get_or_set_sync("k", "not callable")  # type: ignore[arg-type]

    asyncio.run(main())


def test_exports_stay_the_real_objects_whatever_was_imported_first() -> None:
    # A fresh interpreter, as a user's script that imported every submodule first (those inside the component
    # packages too): an export named like its submodule would be rebound to the module by the import system.
    script = (
        "import importlib, pkgutil, types, llamahome.cache as c\n"
        "names = [m.name for m in pkgutil.walk_packages(c.__path__, 'llamahome.cache.')]\n"
        "assert len(names) > 10, names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from llamahome.cache import memoize\n"
        "assert callable(memoize) and not isinstance(memoize, types.ModuleType), type(memoize)\n"
        "bad = [n for n in c.__all__ if isinstance(getattr(c, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr

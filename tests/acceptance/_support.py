"""Helpers shared by the acceptance tests; like the tests, they use only the public imports."""

from __future__ import annotations

import ast
import asyncio
import os
from typing import Any

import llamahome
from llamahome.cache import CacheConfig

MiB = 1024 * 1024
KiB = 1024


def child_env() -> dict[str, str]:
    """The environment for a child process (the console script, a second writer) that runs the same
    ``llamahome`` as this test: its directory goes first on PYTHONPATH. A relative ``PYTHONPATH=src`` would
    otherwise be read from the test's tmp working directory, and the child would import an installed copy."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(llamahome.__file__)))
    rest = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, *rest])}


def small_config(**kwargs: Any) -> CacheConfig:
    """The shortcut kwargs of the public contract, small enough for tests."""
    base: dict[str, Any] = {"memory_size": 1, "disk_size": 8}
    base.update(kwargs)
    return CacheConfig(**base)


class Custom:
    """A value of a user's own class: only pickle could store it, and pickle is opt-in."""

    def __init__(self) -> None:
        self.x = 1


# The seed's MonitoredCacheManager snippet, verbatim (tests/test_seed_snippets.py checks it against the seed).
SNIPPET_MONITORED = '''from llamahome.monitoring import CacheMetricsCollector
from llamahome.cache import CacheManager

class MonitoredCacheManager(CacheManager):
    def __init__(self, config: CacheConfig):
        super().__init__(config)
        self.metrics = CacheMetricsCollector()
        
    async def get_metrics(self):
        return {
            "hit_rate": await self.metrics.get_hit_rate(),
            "memory_usage": await self.metrics.get_memory_usage(),
            "eviction_count": await self.metrics.get_eviction_count()
        }
'''


def run_source(source: str, namespace: dict[str, Any]) -> None:
    """Execute ``source`` as a user's script; a top-level ``await``/``async with`` runs on a fresh loop."""
    code = compile(source, "<seed>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # noqa: S307 - the seed's own code
    if asyncio.iscoroutine(result):
        asyncio.run(result)

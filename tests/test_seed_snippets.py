'''The three code snippets of the seed (seed/Cache.md), copied verbatim, run against the library and tell the truth.

Each snippet is kept as a string exactly as the seed prints it (a test compares them with the seed when the
seed file is at hand) and executed as written:

- Snippet 1 is an excerpt of the library's own ``CacheManager`` module, so it runs in that module's namespace
  (where ``AsyncScheduler`` and ``CacheConfig`` are defined); no line is added.
- Snippets 2 and 3 run in one namespace, in order, as a user's script would, after the one line the seed
  leaves out: ``from llamahome.cache import CacheConfig``. (Snippet 3 uses ``CacheManager`` as imported by
  snippet 2, and its ``async with`` runs at top level, compiled with ``PyCF_ALLOW_TOP_LEVEL_AWAIT``.)

Every test runs in a tmp directory (``monkeypatch.chdir``): the default config writes ``./cache`` and
``.cache/temp`` relative to the working directory.
'''

from __future__ import annotations

import ast
import asyncio
import random
import re
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import llamahome.cache.manager as manager_module
from llamahome.cache import AsyncScheduler, CacheConfig, CacheManager

# The seed sits in shared/, beside the checkout (as for CI); the test that compares skips without it.
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "Cache.md"
ADDED_IMPORT = "from llamahome.cache import CacheConfig\n"

SNIPPET_1 = '''class CacheManager:
    """Manages cache lifecycle and cleanup."""
    
    def __init__(self, config: CacheConfig):
        self.config = config
        self.cleanup_scheduler = AsyncScheduler()
        
    async def start(self):
        """Start cache management tasks."""
        await self.cleanup_scheduler.schedule(
            self.cleanup,
            interval=self.config.cleanup_interval
        )
'''

SNIPPET_2 = '''from llamahome.monitoring import CacheMetricsCollector
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

SNIPPET_3 = '''from llamahome.resources import ResourceManager

async with ResourceManager() as resources:
    cache_size = await resources.get_available_memory() * 0.3  # 30% of available memory
    cache_config = CacheConfig(memory_size=cache_size)
    cache = CacheManager(cache_config)
'''

MIB = 1024 * 1024


def run_snippet(source: str, namespace: dict[str, Any]) -> None:
    """Execute ``source`` in ``namespace``; top-level ``await``/``async with`` run on a fresh event loop."""
    code = compile(source, "<seed snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # noqa: S307 - the seed's own code
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def user_namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "seed_user_script"}
    run_snippet(ADDED_IMPORT + SNIPPET_2, namespace)
    return namespace


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_snippets_are_the_seeds_own_text() -> None:
    if not SEED.exists():
        pytest.skip("the seed (shared/seed/Cache.md beside the checkout) is not available here; the snippets below are copies of it.")
    blocks = re.findall(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), re.S)
    assert blocks == [SNIPPET_1, SNIPPET_2, SNIPPET_3]


# --- snippet 1: CacheManager with AsyncScheduler -------------------------------------------------------
def test_snippet_1_schedules_cleanup_every_cleanup_interval() -> None:
    namespace = dict(vars(manager_module))  # the module this excerpt comes from
    run_snippet(SNIPPET_1, namespace)
    SeedCacheManager = namespace["CacheManager"]
    assert SeedCacheManager is not CacheManager

    class Probe(SeedCacheManager):  # type: ignore[misc, valid-type]
        """The seed's class leaves cleanup() to the reader; this one records when it runs."""

        def __init__(self, config: CacheConfig) -> None:
            super().__init__(config)
            self.runs: list[float] = []

        async def cleanup(self) -> None:
            self.runs.append(time.monotonic())

    async def main() -> Probe:
        probe = Probe(CacheConfig(cleanup_interval=0.05))
        assert isinstance(probe.cleanup_scheduler, AsyncScheduler)
        await probe.start()
        await asyncio.sleep(0.33)
        await probe.cleanup_scheduler.stop()
        return probe

    probe = asyncio.run(main())
    assert 4 <= len(probe.runs) <= 7
    assert min(b - a for a, b in zip(probe.runs, probe.runs[1:])) >= 0.04


def test_the_library_manager_has_the_seed_shape_and_its_cleanup_really_runs() -> None:
    async def main() -> None:
        cfg = CacheConfig(cleanup_interval=0.05, memory_size=1, disk_size=4)
        async with CacheManager(cfg) as cache:
            assert isinstance(cache.cleanup_scheduler, AsyncScheduler)
            job = cache.jobs["cleanup"]
            assert job.fn == cache.cleanup and job.interval == cfg.cleanup_interval == 0.05
            await cache.set("short", b"x" * 100, ttl=0.01)
            await asyncio.sleep(0.3)
            assert job.runs >= 3 and job.failures == 0
            # The expired entry was removed by a scheduled pass, not by a read.
            assert "short" not in cache.memory
            assert cache.memory.stats.expirations + cache.disk.stats.expirations >= 1

    asyncio.run(main())


# --- snippet 2: MonitoredCacheManager ------------------------------------------------------------------
def test_snippet_2_reports_a_true_hit_rate() -> None:
    MonitoredCacheManager = user_namespace()["MonitoredCacheManager"]

    async def main() -> dict[str, Any]:
        cache = MonitoredCacheManager(CacheConfig(memory_size=1, disk_size=4))
        async with cache:
            assert cache.metrics.manager is cache  # the collector observes its own manager
            await cache.set("a", {"text": "hello"})
            await cache.set("b", [1, 2, 3])
            assert await cache.get("a") == {"text": "hello"}
            assert await cache.get("b") == [1, 2, 3]
            assert await cache.get("a") == {"text": "hello"}
            assert await cache.get("missing") is None
            metrics = await cache.get_metrics()
            assert metrics["memory_usage"] == cache.memory.stats.bytes > 0
            return metrics

    metrics = asyncio.run(main())
    assert metrics["hit_rate"] == 0.75
    assert metrics["eviction_count"] == 0


def test_snippet_2_counts_what_the_tiers_evicted_and_the_memory_tiers_bytes() -> None:
    MonitoredCacheManager = user_namespace()["MonitoredCacheManager"]

    async def main() -> None:
        # A 64 KiB memory tier in front of a 4 MB disk tier: 40 values of 4 KiB force memory evictions only.
        cache = MonitoredCacheManager(CacheConfig(memory_size="64KB", disk_size=4))
        async with cache:
            values = [random.Random(i).randbytes(4096) for i in range(40)]  # incompressible
            for i, value in enumerate(values):
                await cache.set(f"k{i}", value)
            for i, value in enumerate(values):
                assert await cache.get(f"k{i}") == value  # the evicted ones come back from disk
            metrics = await cache.get_metrics()
            evicted = sum(store.stats.evictions for store in cache.caches.values())
            assert cache.memory.stats.evictions > 0
            assert metrics["eviction_count"] == evicted
            assert metrics["memory_usage"] == cache.memory.stats.bytes
            assert 0 < metrics["memory_usage"] <= 64 * 1024
            assert metrics["hit_rate"] == 1.0

    asyncio.run(main())


# --- snippet 3: sizing from ResourceManager ------------------------------------------------------------
def test_snippet_3_memory_tier_is_30_percent_of_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pin what psutil reports so the 30% is exact (available memory moves between two reads otherwise).
    real = psutil.virtual_memory()
    available = 6 * 1024 * MIB + 12345
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=available))
    namespace = user_namespace()
    run_snippet(SNIPPET_3, namespace)
    cache = namespace["cache"]
    try:
        assert namespace["cache_size"] == available / MIB * 0.3
        assert namespace["cache_config"].cache.memory.size == available / MIB * 0.3
        assert abs(cache.memory.stats.max_bytes - available * 0.3) <= 1  # float rounding of MB, at most 1 byte
        assert cache.config is namespace["cache_config"]
    finally:
        cache.close()


def test_snippet_3_with_the_real_probe() -> None:
    namespace = user_namespace()
    before = psutil.virtual_memory().available
    run_snippet(SNIPPET_3, namespace)
    after = psutil.virtual_memory().available
    cache = namespace["cache"]
    try:
        low, high = sorted((before, after))
        assert 0.3 * low * 0.95 <= cache.memory.stats.max_bytes <= 0.3 * high * 1.05
    finally:
        cache.close()

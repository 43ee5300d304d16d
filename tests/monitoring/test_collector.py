"""CacheMetricsCollector: true numbers from the manager it is bound to."""

from __future__ import annotations

import asyncio

import pytest

from llamahome.cache import CacheManager
from llamahome.errors import CacheError
from llamahome.monitoring import CacheMetricsCollector


def test_unbound_collector_says_how_to_bind() -> None:
    with pytest.raises(CacheError, match=r"CacheMetricsCollector\(manager\)"):
        asyncio.run(CacheMetricsCollector().get_hit_rate())


def test_explicit_binding_and_true_numbers(manager: CacheManager) -> None:
    collector = CacheMetricsCollector(manager)

    async def main() -> None:
        assert await collector.get_hit_rate() == 0.0
        await manager.set("a", b"x" * 1000)
        for _ in range(3):
            assert await manager.get("a") == b"x" * 1000
        assert await manager.get("nope") is None
        assert await collector.get_hit_rate() == 0.75
        assert await collector.get_memory_usage() == manager.memory.stats.bytes >= 1000
        assert await collector.get_eviction_count() == 0
        snap = await collector.get_snapshot()
        assert snap["hit_rate"] == 0.75
        assert snap["manager"]["hits"] == 3 and snap["manager"]["misses"] == 1
        assert set(snap["caches"]) == set(manager.caches)
        assert snap["caches"]["cache/memory"]["entries"] == 1
        assert snap["caches"]["cache/disk"]["sets"] == 1

    asyncio.run(main())


def test_eviction_count_sums_every_cache(manager: CacheManager) -> None:
    collector = CacheMetricsCollector(manager)
    for i in range(300):  # 300 x 8 KiB through a 1 MB memory tier
        manager.set_sync(f"k{i}", bytes(8192))
    evicted = manager.memory.stats.evictions
    assert evicted > 0
    assert collector.eviction_count() == sum(s.stats.evictions for s in manager.caches.values()) == evicted + manager.disk.stats.evictions

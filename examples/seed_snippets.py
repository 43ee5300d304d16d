"""The seed's three snippets (shared/seed/Cache.md), run as a user would copy them.

    python examples/seed_snippets.py

Runs in a temporary directory so the default ``./cache`` and ``.cache/temp`` paths land there.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

from llamahome.cache import CacheConfig, CacheManager
from llamahome.monitoring import CacheMetricsCollector
from llamahome.resources import ResourceManager


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


async def main() -> None:
    # Integration with resource management: a memory tier of 30% of available memory.
    async with ResourceManager() as resources:
        cache_size = await resources.get_available_memory() * 0.3  # 30% of available memory
        cache_config = CacheConfig(memory_size=cache_size)
        cache = CacheManager(cache_config)
    print(f"memory tier sized from available memory: {cache.memory.max_bytes / 2**20:,.0f} MB")
    cache.close()

    # Integration with monitoring: true hit rate, memory usage and evictions.
    async with MonitoredCacheManager(CacheConfig(memory_size=1)) as manager:
        for i in range(3):
            await manager.set(f"response:{i}", {"text": f"answer {i}", "tokens": list(range(50))})
        for i in range(3):
            await manager.get(f"response:{i}")  # 3 hits
        await manager.get("response:missing")  # 1 miss
        print("metrics:", await manager.get_metrics())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        asyncio.run(main())

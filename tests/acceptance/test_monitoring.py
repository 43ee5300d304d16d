"""Acceptance: what a user learns about a running cache.

The seed's ``MonitoredCacheManager`` snippet, verbatim, reports each manager's own hit rate;
``CacheMonitor`` gives advice that names the YAML key to change; ``serve_metrics`` serves a Prometheus
exposition that parses; ``ResourceManager`` reports memory in megabytes (README "Cache manager, scheduling and
monitoring"; the seed's second and third snippets; issue 6). The snippets' own numbers are checked in
``tests/test_seed_snippets.py``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from llamahome.cache import CacheConfig, CacheManager
from llamahome.monitoring import CacheMonitor
from llamahome.resources import ResourceManager

from ._support import SNIPPET_MONITORED, run_source, small_config


def test_two_seed_monitored_managers_each_observe_their_own(tmp_path: Path) -> None:
    ns: dict[str, Any] = {"__name__": "user"}
    run_source("from llamahome.cache import CacheConfig\n" + SNIPPET_MONITORED, ns)
    Monitored = ns["MonitoredCacheManager"]

    async def main() -> None:
        one = Monitored(CacheConfig(memory_size=1, disk_size=8, disk_path=str(tmp_path / "one")))
        two = Monitored(CacheConfig(memory_size=1, disk_size=8, disk_path=str(tmp_path / "two")))
        async with one, two:
            await one.set("a", 1)
            await two.set("a", 1)
            for _ in range(3):
                await one.get("a")
            await one.get("x")
            await two.get("a")
            await two.get("x")
            await two.get("y")
            assert (await one.get_metrics())["hit_rate"] == pytest.approx(0.75)
            assert (await two.get_metrics())["hit_rate"] == pytest.approx(1 / 3)

    asyncio.run(main())


def test_cache_monitor_gives_recommendations_for_a_thrashing_memory_tier() -> None:
    async def main() -> None:
        # The seed's default: compression on. Random values do not compress, so that advice must come too.
        async with CacheManager(CacheConfig(memory_size="256KB", disk_size=16), monitor=CacheMonitor()) as cache:
            assert isinstance(cache.monitor, CacheMonitor)
            for _ in range(3):
                for i in range(60):  # ~1.2 MB cycled through a 256 KB LRU tier: memory hits nothing
                    if await cache.get(f"k{i}") is None:
                        await cache.set(f"k{i}", os.urandom(20_000))
            assert cache.memory.stats.hit_rate < 0.5 and cache.memory.stats.evictions > 100
            recs = await cache.monitor.get_cache_recommendations()
            text = " ".join(str(r) for r in recs)
            assert "cache.memory.size" in text
            assert "cache.memory.compression" in text
            assert "0.25 MB" in text and " 0 MB" not in text and "-0%" not in text
            metrics = await cache.monitor.get_metrics()
            assert metrics["memory_usage"] == cache.memory.stats.bytes

    asyncio.run(main())


def test_prometheus_exposition_is_served_and_parses() -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from llamahome.monitoring import serve_metrics

    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            await cache.set("k", b"v")
            await cache.get("k")
            await cache.get("missing")
            server = serve_metrics(cache, port=0)
            try:
                body = await asyncio.to_thread(lambda: urllib.request.urlopen(server.url, timeout=5).read())
            finally:
                server.close()
            families = list(text_string_to_metric_families(body.decode()))
            names = {f.name for f in families}
            assert names and all(n.startswith("llamahome_cache_") for n in names)
            labels = {key for f in families for s in f.samples for key in s.labels}
            assert {"cache", "tier"} <= labels
            hits = [
                s.value
                for f in families
                for s in f.samples
                if s.name.startswith("llamahome_cache_hits") and s.labels.get("tier") == "memory"
            ]
            assert hits and hits[0] >= 1

    asyncio.run(main())


def test_resource_manager_words() -> None:
    async def main() -> None:
        async with ResourceManager() as resources:
            available = await resources.get_available_memory()
            total = await resources.get_total_memory()
            assert 0 < available <= total
            assert total < 64 * 1024 * 1024  # megabytes, not bytes
            assert await resources.get_free_disk(".") > 0

    asyncio.run(main())

"""CacheManager from a YAML file, its async facade, scheduled cleanup, and monitoring.

    python examples/manager_monitoring.py

Builds every cache from one configuration (as in examples/cache.yaml), serves a burst of requests through
`get_or_set` from many coroutines at once, then reads the monitoring side: hit rate, memory use,
recommendations, and a Prometheus scrape. Everything lives in a temporary directory.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import urllib.request
from pathlib import Path

from llamahome.cache import CacheConfig, CacheManager, memoize
from llamahome.monitoring import CacheMetricsCollector, CacheMonitor, serve_metrics

CONFIG = """
cache:
  memory: {size: 1, type: lru}          # 1 MB: small, so the monitor has something to recommend
  disk: {size: 64, path: "{root}/cache", cleanup_interval: 15m}
model_cache: {size: 64}
training_cache: {size: 64}
system_cache: {size: 16, temp_dir: "{root}/temp", max_age: 1h}
"""

calls = 0


async def embed(text: str) -> list[float]:
    """Stands in for a model call: slow, and counted so we can see it runs once per text."""
    global calls
    calls += 1
    await asyncio.sleep(0.05)
    return [float(len(text))] * 384


async def main(root: Path) -> None:
    path = root / "cache.yaml"
    path.write_text(CONFIG.replace("{root}", str(root)))
    config = CacheConfig.from_yaml(path)

    async with CacheManager(config) as cache:  # start(): cleanup every 15 minutes, system cache sweeps
        # 50 coroutines ask for 5 texts at once: each embedding is computed once, the rest wait and share it.
        texts = [f"prompt {i % 5}" for i in range(50)]
        await asyncio.gather(*(cache.get_or_set(f"emb:{t}", lambda t=t: embed(t)) for t in texts))
        print(f"50 requests, {calls} model calls")

        # @memoize does the same for a function: keys are a stable digest of the arguments.
        @memoize(cache, ttl=3600)
        async def answer(prompt: str) -> dict:
            return {"prompt": prompt, "text": prompt.upper()}

        for _ in range(3):
            await answer("hello")
        # Fill the 1 MB memory tier well past its size (random bytes: compression cannot shrink them), so
        # entries are evicted from memory and later reads are served by the disk tier.
        for i in range(400):
            await cache.set(f"response:{i}", {"kv": random.Random(i).randbytes(4000), "id": i})
        for i in range(400):
            await cache.get(f"response:{i}")

        metrics = CacheMetricsCollector(cache)
        print(f"hit rate {await metrics.get_hit_rate():.1%}, memory tier holds {await metrics.get_memory_usage():,} "
              f"bytes, {await metrics.get_eviction_count()} evictions")
        for advice in await CacheMonitor(cache).get_cache_recommendations():
            print("advice:", advice.message)

        report = await cache.cleanup()  # what the scheduler runs every cleanup_interval
        print(f"cleanup: {report.expired} expired, {report.evicted} evicted, {report.bytes_freed:,} bytes freed")

        with serve_metrics(cache, port=0) as server:  # port 0: any free port; 9464 is the usual one
            scrape = urllib.request.urlopen(server.url, timeout=5).read().decode()
        hits = [line for line in scrape.splitlines() if line.startswith("llamahome_cache_hits_total")]
        print(f"Prometheus: {len(scrape.splitlines())} lines, e.g. {hits[0]}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))

"""The network tier: Redis shared by several machines, behind memory and disk.

    REDIS_URL=redis://localhost:6379/0 python examples/redis_tier.py

Needs a running Redis (`apt-get install redis-server`) and the `redis` extra (`pip install -e ".[redis]"`).
Everything the example writes lives under its own namespace, which it clears at the end (SCAN + UNLINK of
its keys only; never FLUSHDB). Local tiers live in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time

from llamahome.cache import CacheConfig, CacheManager, RedisCache

URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
NAMESPACE = "llamahome-example"


def direct(url: str) -> None:
    # Signed entries: another client with the wrong secret (or foreign data) reads a miss, never an exception.
    cache = RedisCache(url, namespace=NAMESPACE, ttl=600, secret="shared-key")
    cache.set("response:1", {"text": "Hello from Redis", "tokens": [15496]})
    print("direct:", cache.get("response:1"))
    wrong = RedisCache(url, namespace=NAMESPACE, secret="other-key")
    print("with the wrong secret:", wrong.get("response:1"), f"({wrong.stats.corrupt} corrupt)")
    wrong.close()

    # get_or_set takes a short Redis lock: of four "machines" (threads here) asking at once, one computes.
    calls = []

    def compute() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "expensive answer"

    threads = [threading.Thread(target=cache.get_or_set, args=("answer:1", compute)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"get_or_set from 4 threads: {len(calls)} computation")
    cache.close()


async def behind_the_manager(url: str, root: str) -> None:
    # A `cache.network` block puts Redis behind memory and disk; a Redis hit is copied into the local tiers.
    config = CacheConfig.from_dict(
        {
            "cache": {
                "disk": {"path": f"{root}/cache"},
                "network": {"url": url, "namespace": NAMESPACE, "secret": "shared-key", "timeout": 0.5},
            },
            "system_cache": {"temp_dir": f"{root}/temp"},
        }
    )
    async with CacheManager(config) as cache:
        print("through the manager:", await cache.get("response:1"))  # from Redis, written by direct()
        print("now also in memory:", "response:1" in cache.memory)
        cache.network.clear()  # only this namespace's keys


def main() -> int:
    probe = RedisCache(URL, namespace=NAMESPACE, timeout=1.0)
    if not probe.ping():
        print(f"No Redis answers at {URL}; start one (redis-server) or set REDIS_URL.", file=sys.stderr)
        return 1
    probe.close()
    direct(URL)
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(behind_the_manager(URL, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())

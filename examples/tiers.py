"""Memory, disk and tiered caches: the building blocks under CacheManager.

    python examples/tiers.py

Everything lives in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import tempfile

import numpy as np

from llamahome.cache import DiskCache, MemoryCache, TieredCache
from llamahome.errors import ValueTooLargeError


def memory_tier() -> None:
    # A byte-bounded in-process cache: 1 MB here, so a few hundred embeddings fit and the rest are evicted.
    cache = MemoryCache(size=1, policy="lru")
    for i in range(1000):
        cache.set(f"emb:{i}", np.full(384, i, dtype=np.float32))  # 1.5 KiB each
    assert cache.get("emb:999") is not None  # the newest survive ...
    assert cache.get("emb:0") is None  # ... the oldest were evicted to stay within 1 MB
    stats = cache.stats
    print(f"memory: {stats.entries} entries, {stats.bytes:,} of {stats.max_bytes:,} bytes, {stats.evictions} evictions")
    # A value larger than the whole tier is refused rather than evicting everything for nothing.
    try:
        cache.set("huge", b"x" * (2 * 1024 * 1024))
    except ValueTooLargeError as exc:
        print("memory:", exc)
    cache.close()


def disk_and_tiered(directory: str) -> None:
    # The disk tier survives restarts: write, close, reopen, read back.
    disk = DiskCache(directory, size=64)
    disk.set("response:1", {"text": "Hello!", "tokens": [15496, 0]}, ttl=3600)
    disk.set("emb:1", np.arange(4096, dtype=np.float32))
    disk.close()
    disk = DiskCache(directory, size=64)
    print("disk after reopening:", disk.get("response:1"))
    view = disk.get("emb:1", mmap=True)  # a read-only, zero-copy view of the value file
    print("disk mmap view:", view[:4], "writeable" if view.flags.writeable else "read-only")
    del view

    # Memory in front of disk: a disk hit is promoted, so the second read is a memory hit.
    cache = TieredCache(MemoryCache(size=1), disk)
    disk_hits = disk.stats.hits
    cache.get("response:1")  # from disk, copied into memory
    cache.get("response:1")  # from memory
    by_tier = cache.stats_by_tier()
    print(f"tiered: memory hits {by_tier['memory'].hits}, disk hits {by_tier['disk'].hits - disk_hits}")
    report = cache.cleanup()  # expired entries, orphans and damaged files, tier by tier
    print(f"tiered cleanup: {report.expired} expired, {report.orphans} orphan files")
    cache.close()  # closes both tiers


if __name__ == "__main__":
    memory_tier()
    with tempfile.TemporaryDirectory() as tmp:
        disk_and_tiered(tmp)

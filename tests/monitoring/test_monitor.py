"""CacheMonitor: metrics and recommendations derived from real stats."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

from llamahome.cache import CacheManager
from llamahome.monitoring import CacheMonitor
from llamahome.resources import DiskInfo, MemoryInfo

from .conftest import small_config

MB = 1024 * 1024


def plenty_of_memory() -> MemoryInfo:
    return MemoryInfo(total=64 * 1024 * MB, available=32 * 1024 * MB)


def roomy_disk(path: str) -> DiskInfo:
    return DiskInfo(path=path, total=1000 * 1024 * MB, used=100 * 1024 * MB, free=900 * 1024 * MB)


def test_a_healthy_cache_gets_no_advice(manager: CacheManager) -> None:
    monitor = CacheMonitor(manager, disk_probe=roomy_disk, memory_probe=plenty_of_memory)
    for i in range(10):
        manager.set_sync(f"k{i}", b"v" * 100)
    for _ in range(20):
        for i in range(10):
            manager.memory.get(f"k{i}")
    assert asyncio.run(monitor.get_cache_recommendations()) == []
    metrics = asyncio.run(monitor.get_metrics())
    assert metrics["memory_usage"] == manager.memory.stats.bytes
    assert set(metrics["filesystems"]) == {
        "cache/disk",
        "model_cache/disk",
        "training_cache/disk",
        "system_cache/disk",
        "kv_cache/disk",
    }


def test_low_hit_rate_with_evictions_suggests_a_memory_size(manager: CacheManager) -> None:
    monitor = CacheMonitor(manager, disk_probe=roomy_disk, memory_probe=plenty_of_memory)
    # 400 keys of 16 KiB cycled through a 1 MB memory tier: LRU with a scan larger than the cache hits nothing.
    for _ in range(2):
        for i in range(400):
            key = f"k{i}"
            if manager.memory.get(key) is None:
                manager.memory.set(key, bytes(16 * 1024))
    stats = manager.memory.stats
    assert stats.hit_rate == 0.0 and stats.evictions > 300
    advice = [r for r in monitor.recommendations() if r.setting == "cache.memory.size"]
    assert len(advice) == 1
    avg_entry = stats.bytes / stats.entries
    working_set_mb = avg_entry * (stats.entries + stats.evictions) / MB  # hit rate 0: the eviction estimate
    expected = max(64, math.ceil(working_set_mb * 1.25 / 64) * 64)
    assert advice[0].suggested == expected
    assert advice[0].current == 1.0
    assert f"Raise cache.memory.size to about {expected:,} MB" in advice[0].message
    # The estimate covers the 400 keys seen; the scan went round twice, so it counts some keys twice.
    assert 400 * avg_entry <= working_set_mb * MB <= 2 * 400 * avg_entry


def test_incompressible_values_suggest_turning_compression_off(tmp_path: Path) -> None:
    with CacheManager(small_config(tmp_path, memory=4, compression=True)) as cache:
        for i in range(20):
            cache.memory.set(f"r{i}", os.urandom(100 * 1024))
        monitor = CacheMonitor(cache, disk_probe=roomy_disk, memory_probe=plenty_of_memory)
        advice = [r for r in monitor.recommendations() if r.setting == "cache.memory.compression"]
        assert len(advice) == 1
        assert advice[0].suggested is False and advice[0].cache == "cache/memory"
        assert "turn it off (cache.memory.compression: false)" in advice[0].message


def test_disk_tier_near_its_bound(tmp_path: Path) -> None:
    # 8 MB, not 1: the disk bound also covers the directory's own pages (index, folders), which in a 1 MB
    # cache leave entries under 90% of the bound.
    with CacheManager(small_config(tmp_path, disk=8)) as cache:
        for i in range(160):
            cache.disk.set(f"d{i}", os.urandom(64 * 1024))
        stats = cache.disk.stats
        assert stats.evictions > 0 and stats.bytes >= 0.9 * stats.max_bytes
        monitor = CacheMonitor(cache, disk_probe=roomy_disk, memory_probe=plenty_of_memory)
        advice = [r for r in monitor.recommendations() if r.setting == "cache.disk.size"]
        assert len(advice) == 1 and advice[0].suggested == 256
        assert "raise cache.disk.size to about 256 MB" in advice[0].message


def test_nearly_full_filesystem(manager: CacheManager) -> None:
    def nearly_full(path: str) -> DiskInfo:
        return DiskInfo(path=path, total=100 * MB, used=97 * MB, free=3 * MB)

    monitor = CacheMonitor(manager, disk_probe=nearly_full, memory_probe=plenty_of_memory)
    advice = {r.cache: r for r in monitor.recommendations()}
    disk = advice["cache/disk"]
    assert disk.severity == "critical"  # 3 MB free, the 8 MB disk tier may grow by ~8 MB
    assert disk.setting == "cache.disk.size"
    assert "97% full with 3 MB free" in disk.message
    assert disk.suggested == int((manager.disk.stats.bytes + 3 * MB * 0.8) / MB)
    assert advice["system_cache/disk"].setting == "system_cache.size"


def test_many_corrupt_entries(tmp_path: Path) -> None:
    with CacheManager(small_config(tmp_path)) as cache:
        for i in range(5):
            cache.disk.set(f"c{i}", os.urandom(256 * 1024))  # large: stored as value files
        data = tmp_path / "cache" / "data"
        files = [p for p in data.rglob("*") if p.is_file()]
        assert len(files) == 5
        for path in files:
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            path.write_bytes(bytes(raw))
        for i in range(5):
            assert cache.disk.get(f"c{i}") is None
        assert cache.disk.stats.corrupt == 5
        monitor = CacheMonitor(cache, disk_probe=roomy_disk, memory_probe=plenty_of_memory)
        critical = [r for r in monitor.recommendations() if r.severity == "critical"]
        assert [r.cache for r in critical] == ["cache/disk"]
        assert critical[0].message.startswith("5 entries in cache/disk failed their checksum")


def test_snapshots_go_to_the_ring(manager: CacheManager) -> None:
    monitor = CacheMonitor(manager, history_size=2)
    for _ in range(3):
        monitor.record_snapshot()
    assert len(monitor.history) == 2
    latest = monitor.history.latest()
    assert latest is not None and set(latest.data["caches"]) == set(manager.caches)


def test_memory_advice_warns_when_the_suggestion_exceeds_available_memory(manager: CacheManager) -> None:
    def little_memory() -> MemoryInfo:
        return MemoryInfo(total=256 * MB, available=100 * MB)

    for _ in range(2):
        for i in range(400):
            if manager.memory.get(f"k{i}") is None:
                manager.memory.set(f"k{i}", bytes(16 * 1024))
    advice = [r for r in CacheMonitor(manager, memory_probe=little_memory).recommendations() if r.setting == "cache.memory.size"]
    assert len(advice) == 1 and advice[0].suggested > 50
    assert "more than 50% of the 100 MB available" in advice[0].message


def test_keys_that_never_repeat_get_no_size_advice(manager: CacheManager) -> None:
    for i in range(200):
        manager.memory.get(f"unique{i}")
    advice = CacheMonitor(manager, disk_probe=roomy_disk, memory_probe=plenty_of_memory).recommendations()
    assert [(r.severity, r.setting) for r in advice] == [("info", None)]
    assert "keys rarely repeat" in advice[0].message

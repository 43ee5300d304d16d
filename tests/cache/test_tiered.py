"""TieredCache over real tiers: memory -> disk (-> another disk, -> Redis), read-through with promotion."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from llamahome.cache.disk import _files as disk_files
from llamahome.cache.base import Key, Store
from llamahome.cache.disk import DiskCache
from llamahome.cache.memory import MemoryCache
from llamahome.cache.stats import CacheStats, CleanupReport
from llamahome.cache.tiered import TieredCache
from llamahome.errors import ConfigError, DiskFullError, ValueTooLargeError


@pytest.fixture
def tiers(tmp_path: Path, clock: Any) -> Any:
    memory = MemoryCache(size=0.05, clock=clock)
    disk = DiskCache(tmp_path / "disk", size=4, clock=clock)
    cache = TieredCache(memory, disk)
    yield cache, memory, disk
    cache.close()


def test_reads_go_down_and_promote_up(tiers: Any) -> None:
    cache, memory, disk = tiers
    cache.set("k", b"v")
    assert memory.get("k") == b"v" and disk.get("k") == b"v"  # written through
    disk_hits = disk.stats.hits
    assert cache.get("k") == b"v"
    assert disk.stats.hits == disk_hits  # a memory hit never reaches the disk
    memory.delete("k")
    assert cache.get("k") == b"v"  # found on disk ...
    assert "k" in memory  # ... and copied up
    assert cache.get("missing", "d") == "d"
    st = cache.stats
    assert (st.hits, st.misses, st.sets) == (2, 1, 1)


def test_promotion_keeps_the_remaining_ttl(tiers: Any, clock: Any) -> None:
    cache, memory, disk = tiers
    cache.set("t", b"v", ttl=30)
    clock.advance(10)
    memory.delete("t")
    assert cache.get("t") == b"v"
    assert memory.get("t") == b"v"
    clock.advance(21)  # 31 s after the write: expired everywhere, the copy included
    assert memory.get("t") is None
    assert cache.get("t") is None


def test_value_too_large_for_memory_lives_below(tiers: Any) -> None:
    cache, memory, disk = tiers
    cache.set("k", b"small")
    big = os.urandom(200_000)  # larger than the 0.05 MB memory tier
    cache.set("k", big)
    assert memory.get("k") is None  # the old small value is gone from memory, not left stale
    assert cache.get("k") == big
    assert "k" not in memory  # and a read does not try to force it up
    with pytest.raises(ValueTooLargeError):
        cache.set("huge", os.urandom(5 * 1024 * 1024))
    assert "huge" not in cache


def test_failed_write_leaves_no_tier_stale(tmp_path: Path, clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = MemoryCache(size=1, clock=clock)
    disk = DiskCache(tmp_path / "disk", size=4, clock=clock)
    remote = CountingStore()
    with TieredCache(memory, disk, remote) as cache:
        cache.set("k", b"old" * 20_000)  # 60 KB: a value file on disk

        def full(fd: int, buffers: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(disk_files.os, "writev", full)
        with pytest.raises(DiskFullError):
            cache.set("k", b"new" * 20_000)
        monkeypatch.undo()
        # The remote tier (written first) has the new value; disk and memory dropped the old one.
        assert remote.data["k"] == b"new" * 20_000
        assert "k" not in disk and "k" not in memory
        assert cache.get("k") == b"new" * 20_000


def test_failed_write_in_the_slowest_tier_changes_nothing(tiers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, memory, disk = tiers
    cache.set("k", b"old" * 15_000)

    def full(fd: int, buffers: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_files.os, "writev", full)
    with pytest.raises(DiskFullError):
        cache.set("k", b"new" * 15_000)
    monkeypatch.undo()
    assert disk.get("k") == memory.get("k") == b"old" * 15_000


def test_delete_and_clear_reach_every_tier(tiers: Any) -> None:
    cache, memory, disk = tiers
    cache.set_many({"a": b"1", "b": b"2"})
    assert cache.delete("a") is True
    assert "a" not in memory and "a" not in disk and "a" not in cache
    assert cache.delete("a") is False
    disk.set("only-disk", b"x")
    assert cache.delete("only-disk") is True
    cache.clear()
    assert memory.stats.entries == 0 and disk.stats.entries == 0
    assert cache.stats.deletes == 2


class CountingStore(Store):
    """A minimal third-party tier (dict-backed, no ttl reporting) that records its multi-key calls."""

    name = "counting"

    def __init__(self) -> None:
        self.data: dict[Key, Any] = {}
        self.calls: list[tuple[str, list[Key]]] = []
        self.stats = CacheStats(name=self.name, max_bytes=1 << 30)

    def get(self, key: Key, default: Any = None) -> Any:
        self.calls.append(("get", [key]))
        return self.data.get(key, default)

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        self.calls.append(("set", [key]))
        self.data[key] = value

    def delete(self, key: Key) -> bool:
        return self.data.pop(key, None) is not None

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def clear(self) -> None:
        self.data.clear()

    def cleanup(self) -> CleanupReport:
        return CleanupReport(cache=self.name, expired=1)

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        keys = list(keys)
        self.calls.append(("get_many", keys))
        return {k: self.data[k] for k in keys if k in self.data}

    def set_many(self, items: Mapping[Key, Any], ttl: float | None = None) -> None:
        self.calls.append(("set_many", list(items)))
        self.data.update(items)


class RacingStore(CountingStore):
    """A slow tier: while it serves a read, the same key is written through the tiered cache."""

    cache: TieredCache | None = None

    def get(self, key: Key, default: Any = None) -> Any:
        value = self.data.get(key, default)
        if self.cache is not None:
            cache, self.cache = self.cache, None
            cache.set(key, b"new")
        return value


def test_a_read_racing_a_write_does_not_copy_the_older_value_up(clock: Any) -> None:
    memory = MemoryCache(size=1, clock=clock)
    slow = RacingStore()
    with TieredCache(memory, slow) as cache:
        slow.data["k"] = b"old"
        slow.cache = cache
        assert cache.get("k") == b"old"  # the read began before the write
        assert memory.get("k") == b"new" and slow.data["k"] == b"new"  # and did not overwrite it with "old"
        assert cache.get("k") == b"new"


def test_a_third_store_plugs_in_and_multi_key_calls_delegate(tmp_path: Path, clock: Any) -> None:
    memory = MemoryCache(size=1, clock=clock)
    disk = DiskCache(tmp_path / "disk", size=4, clock=clock)
    remote = CountingStore()
    with TieredCache(memory, disk, remote) as cache:
        cache.set_many({"a": b"1", "b": b"2", "c": b"3"})
        assert remote.calls == [("set_many", ["a", "b", "c"])]  # one multi-key call per tier
        remote.data["r"] = b"remote only"
        memory.delete("a")
        remote.calls.clear()
        got = cache.get_many(["a", "b", "r", "zz", "b"])
        assert got == {"a": b"1", "b": b"2", "r": b"remote only"}
        # Each tier is asked once, for the keys the faster tiers missed.
        assert remote.calls == [("get_many", ["r", "zz"])]
        assert memory.get("a") == b"1" and memory.get("r") == b"remote only" and disk.get("r") == b"remote only"
        assert (cache.stats.hits, cache.stats.misses) == (3, 1)
        report = cache.cleanup()
        assert [p.cache for p in report.parts] == ["memory", "disk", "counting"]
        assert report.removed == 1


def test_two_disk_tiers_and_stats_by_tier(tmp_path: Path, clock: Any) -> None:
    fast = DiskCache(tmp_path / "fast", size=0.2, clock=clock)
    slow = DiskCache(tmp_path / "slow", size=4, clock=clock)
    with TieredCache(fast, slow) as cache:
        for i in range(20):
            cache.set(f"k{i}", os.urandom(30_000))
        by_tier = cache.stats_by_tier()
        assert list(by_tier) == ["disk", "disk#2"]
        assert by_tier["disk"].evictions > 0 and by_tier["disk#2"].evictions == 0
        assert by_tier["disk#2"].entries == 20
        assert by_tier["disk"].bytes <= by_tier["disk"].max_bytes
        st = cache.stats
        assert st.bytes == by_tier["disk"].bytes + by_tier["disk#2"].bytes
        assert st.max_bytes == fast.max_bytes + slow.max_bytes
        assert st.evictions == by_tier["disk"].evictions
        assert len(cache) == 20
        evicted = next(f"k{i}" for i in range(20) if f"k{i}" not in fast)
        assert cache.get(evicted) is not None and evicted in fast  # promoted back into the faster disk


def test_get_below_skips_the_tiers_already_asked(tiers: Any) -> None:
    cache, memory, disk = tiers
    cache.set("k", b"v")
    memory.delete("k")
    misses = memory.stats.misses
    assert cache.get_below("k", 0) == b"v"
    assert memory.stats.misses == misses  # memory was not asked again
    assert memory.get("k") == b"v"  # but the hit was promoted into it


def test_close_closes_every_tier(tmp_path: Path, clock: Any) -> None:
    disk = DiskCache(tmp_path / "d", size=1, clock=clock)
    cache = TieredCache(MemoryCache(size=1, clock=clock), disk)
    cache.close()
    cache.close()
    from llamahome.errors import CacheClosedError

    with pytest.raises(CacheClosedError):
        disk.get("k")


def test_bad_tiers_are_refused() -> None:
    with pytest.raises(ConfigError):
        TieredCache()
    with pytest.raises(ConfigError, match="Store"):
        TieredCache({})  # type: ignore[arg-type]


@pytest.mark.redis
def test_redis_as_a_third_tier(tmp_path: Path, clock: Any, redis_url: str, redis_namespace: str) -> None:
    from llamahome.cache.redis import RedisCache

    memory = MemoryCache(size=1, clock=clock)
    disk = DiskCache(tmp_path / "disk", size=4, clock=clock)
    redis_tier = RedisCache(redis_url, namespace=redis_namespace, timeout=2.0)
    with TieredCache(memory, disk, redis_tier) as cache:
        cache.set("shared", {"answer": 42}, ttl=60)
        memory.clear()
        disk.clear()
        assert cache.get("shared") == {"answer": 42}  # from Redis, copied into disk and memory
        assert disk.get("shared") == {"answer": 42} and memory.get("shared") == {"answer": 42}
        assert cache.get_many(["shared", "nope"]) == {"shared": {"answer": 42}}
        assert cache.delete("shared") is True
        assert "shared" not in cache
        assert set(cache.stats_by_tier()) == {"memory", "disk", "redis"}

"""Acceptance: ``CacheManager`` and ``AsyncScheduler`` as the README's quick start uses them.

The manager builds every cache from one ``CacheConfig`` (memory in front of disk, the model, training and
system caches, a cleanup scheduler); its async ``get``/``set``/``delete``/``get_or_set``/``cleanup`` write
through both tiers, run a factory once under concurrency, honour ttl across tiers, refuse what cannot be
cached with a ``CacheError``, and clean up on ``cleanup_interval`` (README "Quick start" and "Cache manager,
scheduling and monitoring"; the seed's first snippet; issue 6).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache import (
    AsyncScheduler,
    CacheConfig,
    CacheManager,
    DiskCache,
    MemoryCache,
    ModelCache,
    SystemCache,
    TrainingCache,
)
from llamahome.errors import CacheError

from ._support import Custom, KiB, MiB, small_config


def test_manager_contract_end_to_end(tmp_path: Path) -> None:
    import torch

    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            assert isinstance(cache.memory, MemoryCache)
            assert isinstance(cache.disk, DiskCache)
            assert isinstance(cache.model_cache, ModelCache)
            assert isinstance(cache.training_cache, TrainingCache)
            assert isinstance(cache.system_cache, SystemCache)
            assert isinstance(cache.cleanup_scheduler, AsyncScheduler)

            assert await cache.get("key") is None
            assert await cache.get("key", default="d") == "d"
            await cache.set("key", b"value", ttl=None)
            assert await cache.get("key", default=None) == b"value"
            # The tiers behind get/set: written through to both.
            assert "key" in cache.memory and "key" in cache.disk
            assert await cache.delete("key") is True
            assert await cache.delete("key") is False
            assert await cache.get("key") is None

            values: dict[str, Any] = {
                "b": b"\x00raw",
                "s": "text",
                "i": 42,
                "f": 1.5,
                "d": {"ids": [1, 2, 3], "meta": {"lang": "en"}},
                "l": [1, "a", None],
            }
            for k, v in values.items():
                await cache.set(k, v)
            arr = np.arange(12, dtype=np.float32).reshape(3, 4)
            ten = torch.arange(6, dtype=torch.int64)
            await cache.set("arr", arr)
            await cache.set("ten", ten)
            for k, v in values.items():
                assert await cache.get(k) == v
            got_arr = await cache.get("arr")
            assert got_arr.dtype == np.float32 and np.array_equal(got_arr, arr)
            assert torch.equal(await cache.get("ten"), ten)
            # And from the disk tier alone (a fresh process would see this).
            cache.memory.clear()
            assert await cache.get("d") == values["d"]
            assert np.array_equal(await cache.get("arr"), arr)

            report = await cache.cleanup()  # one report over every cache; nothing was due, nothing goes
            assert report.parts and (report.expired, report.evicted, report.corrupt) == (0, 0, 0)
            assert await cache.get("d") == values["d"]
        assert (tmp_path / "cache").is_dir()  # the seed's default ./cache, relative to the working directory

    asyncio.run(main())


def test_manager_start_stop_explicitly_and_default_config(tmp_path: Path) -> None:
    async def main() -> None:
        cache = CacheManager()  # config defaults to CacheConfig()
        assert cache.config.cache.memory.size == 1000
        await cache.start()
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        await cache.stop()

    asyncio.run(main())
    assert (tmp_path / "cache").is_dir()


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "time"])
def test_manager_builds_every_policy_named_in_the_yaml(policy: str, tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(
        f"cache:\n  memory:\n    size: 512KB\n    type: {policy}\n    compression: false\n"
        f"  disk:\n    size: 8\n    path: ./c\n",
        encoding="utf-8",
    )
    cfg = CacheConfig.from_yaml(path)
    assert cfg.cache.network is None  # the optional Redis block is off by default

    async def main() -> None:
        async with CacheManager(cfg) as cache:
            assert cache.memory.stats.max_bytes == 512 * KiB
            assert cache.disk.stats.max_bytes == 8 * MiB
            await cache.set("k", [1, 2])
            assert await cache.get("k") == [1, 2]

    asyncio.run(main())
    assert (tmp_path / "c").is_dir()


def test_manager_get_or_set_runs_the_factory_once_under_concurrency() -> None:
    calls: list[str] = []

    async def main() -> None:
        async with CacheManager(small_config()) as cache:

            async def factory() -> dict[str, Any]:
                calls.append("async")
                await asyncio.sleep(0.05)
                return {"answer": 42}

            results = await asyncio.gather(*(cache.get_or_set("q", factory) for _ in range(50)))
            assert results == [{"answer": 42}] * 50
            assert calls == ["async"]

            def sync_factory() -> str:
                calls.append("sync")
                return "computed"

            assert await cache.get_or_set("s", sync_factory) == "computed"
            assert await cache.get_or_set("s", sync_factory) == "computed"
            assert calls == ["async", "sync"]
            assert await cache.get("q") == {"answer": 42}

    asyncio.run(main())


def test_manager_cleanup_removes_expired_entries_and_reports_them() -> None:
    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            await cache.set("short", b"x", ttl=0.05)
            await cache.set("long", b"y")
            await asyncio.sleep(0.15)
            report = await cache.cleanup()
            # One report with one part per cache; the expired entry was in both tiers.
            assert sum(part.expired for part in report.parts) == 2
            assert report.expired == 2  # top-level counters are totals over the parts
            assert report.removed == 2
            assert await cache.get("short") is None
            assert await cache.get("long") == b"y"

    asyncio.run(main())


def test_manager_scheduled_cleanup_uses_cfg_cleanup_interval() -> None:
    async def main() -> None:
        cfg = small_config(cleanup_interval=0.05)
        async with CacheManager(cfg) as cache:
            await cache.set("short", b"x" * 100, ttl=0.01)
            await asyncio.sleep(0.4)
            # Nothing read the entry, so only a scheduled cleanup() can have removed it from the disk tier
            # ("in" alone would answer False for an expired entry that is still stored).
            assert cache.disk.stats.entries == 0 and cache.disk.stats.expirations == 1
            assert "short" not in cache.memory and "short" not in cache.disk

    asyncio.run(main())


def test_manager_refuses_pickle_and_too_large_values_with_cache_errors() -> None:
    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            with pytest.raises(CacheError, match="pickle"):
                await cache.set("obj", Custom())
            with pytest.raises(CacheError):
                await cache.set("huge", os.urandom(12 * MiB))
            with pytest.raises(CacheError):
                await cache.set(123, b"v")  # type: ignore[arg-type]

    asyncio.run(main())


def test_manager_is_closed_after_stop_with_a_cache_error() -> None:
    async def main() -> None:
        cache = CacheManager(small_config())
        async with cache:
            await cache.set("k", 1)
        with pytest.raises(CacheError):
            await cache.get("k")

    asyncio.run(main())


def test_manager_cleanup_keeps_what_the_typed_caches_hold_under_the_disk_path(tmp_path: Path) -> None:
    weights = {"w": np.arange(300_000, dtype=np.float32)}

    async def main() -> None:
        async with CacheManager(small_config(disk_size=4)) as cache:
            cache.model_cache.put("m", weights)
            cache.training_cache.put("batch", {"ids": [1, 2, 3]})
            scratch = Path(cache.system_cache.temp_file(suffix=".tmp"))
            scratch.write_bytes(b"scratch")
            await cache.set("k", b"v")
            disk_bytes = cache.disk.stats.bytes
            await cache.cleanup()
            await cache.cleanup()
            assert np.array_equal(cache.model_cache.load("m")["w"], weights["w"])
            assert cache.model_cache.verify("m") is True
            assert cache.training_cache.get("batch") == {"ids": [1, 2, 3]}
            assert scratch.exists()
            assert await cache.get("k") == b"v"
            # The disk tier's bound covers its own entries, not the model cache's files beside them.
            assert cache.disk.stats.bytes == disk_bytes < 1 * MiB

    asyncio.run(main())


def test_a_memory_hit_never_leaves_the_event_loop() -> None:
    from concurrent.futures import ThreadPoolExecutor

    class Refusing(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            raise AssertionError("a memory hit went to a worker thread")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ordinary = ThreadPoolExecutor(max_workers=2)
        loop.set_default_executor(ordinary)  # asyncio.run shuts it down at the end
        async with CacheManager(small_config()) as cache:
            await cache.set("hot", {"v": 1})
            refusing = Refusing(max_workers=1)
            loop.set_default_executor(refusing)
            try:
                for _ in range(100):
                    assert await cache.get("hot") == {"v": 1}
            finally:
                loop.set_default_executor(ordinary)
                refusing.shutdown()

    asyncio.run(main())


def test_manager_ttl_holds_across_tiers_and_promotion_does_not_extend_it() -> None:
    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            await cache.set("t", b"short-lived", ttl=1.0)
            await asyncio.sleep(0.6)
            cache.memory.clear()
            assert await cache.get("t") == b"short-lived"  # from disk, promoted into memory
            assert "t" in cache.memory
            # 1.2 s after the set the entry is gone; a promotion that restarted the ttl would keep it to 1.6 s.
            await asyncio.sleep(0.6)
            assert await cache.get("t") is None
            assert "t" not in cache.memory and "t" not in cache.disk

    asyncio.run(main())


def test_async_scheduler_words() -> None:
    runs: list[str] = []

    async def main() -> None:
        scheduler = AsyncScheduler()

        def sync_job() -> None:
            runs.append("sync")

        async def async_job() -> None:
            runs.append("async")

        def failing() -> None:
            runs.append("fail")
            raise RuntimeError("job failed")

        await scheduler.schedule(sync_job, interval=0.03)
        handle = await scheduler.schedule(async_job, interval=0.03)
        await scheduler.schedule(failing, interval=0.03)
        await asyncio.sleep(0.2)
        handle.cancel()
        await asyncio.sleep(0.05)
        cancelled_at = runs.count("async")
        await asyncio.sleep(0.1)
        assert runs.count("async") == cancelled_at
        await scheduler.stop()
        frozen = len(runs)
        await asyncio.sleep(0.1)
        assert len(runs) == frozen
        assert runs.count("sync") >= 3 and runs.count("fail") >= 3 and cancelled_at >= 3

    asyncio.run(main())

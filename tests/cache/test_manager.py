"""CacheManager: built from the config, async facade over the tiers, once-per-key get_or_set, cleanup, lifecycle."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import llamahome.cache.manager as manager_module
from llamahome.cache import (
    AsyncScheduler,
    CacheConfig,
    CacheManager,
    DiskCache,
    MemoryCache,
    ModelCache,
    SystemCache,
    TieredCache,
    TrainingCache,
)
from llamahome.cache.stats import CleanupReport
from llamahome.errors import CacheClosedError, CacheError, ConfigError
from llamahome.monitoring import CacheMetricsCollector, CacheMonitor


def make_config(root: Path, **overrides: Any) -> CacheConfig:
    data: dict[str, Any] = {
        "cache": {"memory": {"size": 1}, "disk": {"size": 8, "path": str(root / "cache")}},
        "model_cache": {"size": 8},
        "training_cache": {"size": 8},
        "system_cache": {"size": 1, "temp_dir": str(root / "temp")},
    }
    for block, values in overrides.items():
        target = data.setdefault(block, {})
        for key, value in values.items():
            if isinstance(value, dict):
                target.setdefault(key, {}).update(value)
            else:
                target[key] = value
    return CacheConfig.from_dict(data)


@pytest.fixture
def cfg(tmp_path: Path) -> CacheConfig:
    return make_config(tmp_path)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_builds_every_cache_from_the_config(cfg: CacheConfig, tmp_path: Path) -> None:
    with CacheManager(cfg) as cache:
        assert isinstance(cache.memory, MemoryCache) and cache.memory.stats.max_bytes == 1024 * 1024
        assert isinstance(cache.disk, DiskCache)
        assert isinstance(cache.tiered, TieredCache)
        assert cache.network is None
        assert isinstance(cache.model_cache, ModelCache)
        assert isinstance(cache.training_cache, TrainingCache)
        assert isinstance(cache.system_cache, SystemCache)
        assert isinstance(cache.cleanup_scheduler, AsyncScheduler)
        assert list(cache.caches) == [
            "cache/memory",
            "cache/disk",
            "model_cache/disk",
            "training_cache/disk",
            "system_cache/disk",
            "kv_cache/disk",
        ]
        assert (tmp_path / "cache" / "models").is_dir()
        assert (tmp_path / "cache" / "training").is_dir()
        assert not (tmp_path / "temp").exists()  # the system cache makes temp_dir on first use
        cache.system_cache.new_temp_file()
        assert (tmp_path / "temp").is_dir()
        assert cache.monitor is None  # monitoring is opt-in: the cache layer never builds one itself
    assert cache.closed


def test_a_monitor_passed_or_assigned_is_bound_and_anything_else_is_refused(tmp_path: Path) -> None:
    monitor = CacheMonitor()
    with CacheManager(make_config(tmp_path / "a"), monitor=monitor) as cache:
        assert cache.monitor is monitor and monitor.manager is cache
        later = CacheMonitor()
        cache.monitor = later  # assigning binds too (the seed's `self.metrics = ...` pattern)
        assert later.manager is cache
    with pytest.raises(ConfigError, match="monitor must be an observer"):
        CacheManager(make_config(tmp_path / "b"), monitor="yes")  # type: ignore[arg-type]


def test_default_config_is_the_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with CacheManager() as cache:
        assert cache.config == CacheConfig()
        assert cache.memory.stats.max_bytes == 1000 * 1024 * 1024
    # Only the disk tier's directory: `.cache/temp` appears when scratch space is first used (issue 17).
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_get_set_delete_round_trip(cfg: CacheConfig) -> None:
    async def main() -> None:
        async with CacheManager(cfg) as cache:
            assert await cache.get("k") is None
            assert await cache.get("k", default="d") == "d"
            await cache.set("k", {"a": [1, 2]})
            await cache.set(b"k", b"bytes key")
            assert await cache.get("k") == {"a": [1, 2]}
            assert await cache.get(b"k") == b"bytes key"
            assert await cache.contains("k")
            assert await cache.delete("k") is True
            assert await cache.delete("k") is False
            assert await cache.get("k") is None
            assert "k" not in cache.memory and "k" not in cache.disk
            assert cache.stats.hits == 2 and cache.stats.misses == 3

    run(main())


def test_memory_hit_never_leaves_the_loop_and_disk_hits_are_promoted(
    cfg: CacheConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    offloaded: list[str] = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        offloaded.append(getattr(fn, "__name__", repr(fn)))
        return await real_to_thread(fn, *args, **kwargs)

    async def main() -> None:
        async with CacheManager(cfg) as cache:
            await cache.set("k", "value")
            monkeypatch.setattr(manager_module.asyncio, "to_thread", counting_to_thread)
            assert await cache.get("k") == "value"
            assert offloaded == []  # memory hit: answered on the loop
            cache.memory.clear()
            assert await cache.get("k") == "value"  # from disk, in a worker thread
            assert len(offloaded) == 1
            assert "k" in cache.memory  # promoted
            assert await cache.get("k") == "value"
            assert len(offloaded) == 1
            monkeypatch.setattr(manager_module.asyncio, "to_thread", real_to_thread)

    run(main())


def test_ttl_is_honoured(cfg: CacheConfig) -> None:
    async def main() -> None:
        async with CacheManager(cfg) as cache:
            await cache.set("t", "v", ttl=0.1)
            assert await cache.get("t") == "v"
            await asyncio.sleep(0.15)
            assert await cache.get("t") is None

    run(main())


# --- get_or_set ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory_kind", ["sync", "async"])
def test_get_or_set_runs_the_factory_once_under_50_coroutines_and_8_threads(
    cfg: CacheConfig, factory_kind: str
) -> None:
    calls = 0
    calls_lock = threading.Lock()

    def count() -> dict[str, int]:
        nonlocal calls
        with calls_lock:
            calls += 1
        return {"answer": 42}

    def sync_factory() -> dict[str, int]:
        time.sleep(0.2)
        return count()

    async def async_factory() -> dict[str, int]:
        await asyncio.sleep(0.2)
        return count()

    factory = sync_factory if factory_kind == "sync" else async_factory
    results: list[Any] = []
    barrier = threading.Barrier(9)

    with CacheManager(cfg) as cache:

        def thread_main(i: int) -> None:
            barrier.wait()
            if i % 2 and factory_kind == "sync":
                results.append(cache.get_or_set_sync("key", sync_factory))
            else:
                results.append(asyncio.run(cache.get_or_set("key", factory)))

        async def main() -> list[Any]:
            threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            barrier.wait()
            values = await asyncio.gather(*(cache.get_or_set("key", factory) for _ in range(50)))
            for t in threads:
                await asyncio.to_thread(t.join)
            return values

        values = run(main())
        assert calls == 1
        assert values == [{"answer": 42}] * 50 and results == [{"answer": 42}] * 8
        assert cache.get_sync("key") == {"answer": 42}
        assert cache.stats.gets == 58 + 1


def test_get_or_set_shares_an_exception_then_retries(cfg: CacheConfig) -> None:
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        if calls == 1:
            raise RuntimeError("backend down")
        return "ok"

    async def main() -> None:
        async with CacheManager(cfg) as cache:
            outcomes = await asyncio.gather(*(cache.get_or_set("k", failing) for _ in range(10)), return_exceptions=True)
            assert all(isinstance(o, RuntimeError) and str(o) == "backend down" for o in outcomes)
            assert calls == 1
            assert await cache.get_or_set("k", failing) == "ok"
            assert calls == 2
            assert await cache.get_or_set("k", failing) == "ok"
            assert calls == 2

    run(main())


def test_a_cancelled_leader_hands_over_to_a_waiter(cfg: CacheConfig) -> None:
    calls = 0

    async def main() -> None:
        first_started = asyncio.Event()

        async def factory() -> str:
            nonlocal calls
            calls += 1
            first_started.set()
            await asyncio.sleep(0.1)
            return f"value {calls}"

        async with CacheManager(cfg) as cache:
            leader = asyncio.create_task(cache.get_or_set("k", factory))
            await first_started.wait()
            waiter = asyncio.create_task(cache.get_or_set("k", factory))
            await asyncio.sleep(0.01)
            leader.cancel()
            assert await waiter == "value 2"
            with pytest.raises(asyncio.CancelledError):
                await leader

    run(main())
    assert calls == 2


def test_get_or_set_sync_refuses_an_async_factory(cfg: CacheConfig) -> None:
    async def factory() -> int:
        return 1

    with CacheManager(cfg) as cache:
        with pytest.raises(CacheError, match="await CacheManager.get_or_set"):
            cache.get_or_set_sync("k", factory)
        # The failed flight is gone: the next caller computes.
        assert cache.get_or_set_sync("k", lambda: 2) == 2


def test_value_too_large_to_cache_is_still_returned(cfg: CacheConfig) -> None:
    async def main() -> None:
        async with CacheManager(cfg) as cache:
            big = os.urandom(9 * 1024 * 1024)  # incompressible, larger than both the 1 MB memory and the 8 MB disk tier
            assert await cache.get_or_set("big", lambda: big) == big
            assert await cache.get("big") is None
            assert cache.stats.errors == 1

    run(main())


# --- cleanup and scheduling ----------------------------------------------------------------------------
def test_cleanup_returns_one_report_with_a_part_per_cache(cfg: CacheConfig) -> None:
    async def main() -> None:
        async with CacheManager(cfg) as cache:
            await cache.set("a", "1", ttl=0.05)
            await cache.set("b", "2")
            await asyncio.sleep(0.1)
            report = await cache.cleanup()
            assert isinstance(report, CleanupReport) and report.cache == "manager"
            assert [p.cache for p in report.parts] == list(cache.caches)
            parts = {p.cache: p for p in report.parts}
            assert parts["cache/memory"].expired == 1
            assert parts["cache/disk"].expired == 1
            assert report.removed >= 2
            assert await cache.get("b") == "2"

    run(main())


def test_cleanup_keeps_going_when_one_cache_fails(cfg: CacheConfig, caplog: pytest.LogCaptureFixture) -> None:
    with CacheManager(cfg) as cache:
        cache.training_cache.close()  # its cleanup now raises CacheClosedError
        report = cache.cleanup_sync()
        parts = {p.cache: p for p in report.parts}
        assert list(parts) == list(cache.caches)
        assert parts["training_cache/disk"].details["error"].startswith("CacheClosedError: ")
        assert all("error" not in p.details for label, p in parts.items() if label != "training_cache/disk")
        assert cache.stats.errors == 1
        assert any("Cleanup of training_cache/disk failed" in r.getMessage() for r in caplog.records)


def test_start_schedules_cleanup_system_sweep_and_snapshots(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, cache={"disk": {"cleanup_interval": 0.05}}, system_cache={"max_age": 0.4})
    monitor = CacheMonitor(snapshot_interval=0.05, history_size=4)

    async def main() -> None:
        cache = CacheManager(cfg, monitor=monitor)
        assert monitor.manager is cache
        assert cache.system_cleanup_interval is None  # max_age/4 = 0.1 s is not shorter than 0.05 s
        async with cache:
            assert set(cache.jobs) == {"cleanup", "snapshot"}
            await asyncio.sleep(0.35)
            assert cache.jobs["cleanup"].runs >= 3 and cache.jobs["cleanup"].failures == 0
            assert len(monitor.history) == 4  # ring buffer: the last 4 of >= 5 snapshots
            jobs = list(cache.jobs.values())
        assert all(job.done for job in jobs)
        runs = [job.runs for job in jobs]
        await asyncio.sleep(0.15)
        assert [job.runs for job in jobs] == runs  # nothing runs after stop()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())


def test_system_cache_gets_its_own_sweep_when_max_age_is_short(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, system_cache={"max_age": 0.4})
    assert cfg.cleanup_interval == 3600

    async def main() -> None:
        async with CacheManager(cfg, monitor=CacheMonitor(snapshot_interval=None)) as cache:
            assert cache.system_cleanup_interval == pytest.approx(0.1)
            assert set(cache.jobs) == {"cleanup", "system_cache"}
            scratch = cache.system_cache.new_temp_file(suffix=".bin")
            Path(scratch).write_bytes(b"partial download")
            await asyncio.sleep(0.75)
            assert cache.jobs["system_cache"].runs >= 4
            assert not Path(scratch).exists()  # gone within max_age + max_age/4 (+ scheduling slack)

    run(main())


def test_stop_pauses_and_close_is_for_good(cfg: CacheConfig) -> None:
    async def main() -> CacheManager:
        cache = CacheManager(cfg, monitor=CacheMonitor())  # its snapshot job is the second
        await cache.start()
        await cache.start()  # no second set of jobs
        assert len(cache.cleanup_scheduler.jobs) == 2
        await cache.stop()
        await cache.stop()
        assert not cache.started and not cache.closed and cache.cleanup_scheduler.jobs == []
        await cache.set("k", "v")  # stores stay open while paused
        assert await cache.get("k") == "v"
        await cache.start()  # and the jobs resume
        assert cache.started and len(cache.cleanup_scheduler.jobs) == 2
        await cache.aclose()
        await cache.aclose()
        with pytest.raises(CacheClosedError, match="create a new one"):
            await cache.get("k")
        with pytest.raises(CacheClosedError):
            await cache.start()
        return cache

    cache = run(main())
    assert cache.closed and not cache.started


def test_leaving_async_with_closes_everything(cfg: CacheConfig) -> None:
    async def main() -> CacheManager:
        async with CacheManager(cfg) as cache:
            await cache.set("k", "v")
        return cache

    cache = run(main())
    assert cache.closed and not cache.started and cache.cleanup_scheduler.jobs == []
    with pytest.raises(CacheClosedError):
        cache.disk.get("k")


def test_start_in_one_loop_and_stop_or_close_in_another(cfg: CacheConfig) -> None:
    cache = CacheManager(cfg)
    run(cache.start())  # this loop closes, and its job tasks end with it
    run(cache.stop())  # raised "Event loop is closed" before
    assert not cache.started
    run(cache.start())
    run(cache.aclose())
    assert cache.closed


def test_stop_from_another_thread_while_the_jobs_loop_runs(cfg: CacheConfig) -> None:
    cache = CacheManager(cfg)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(cache.start(), loop).result(10)
        tasks = [job._task for job in cache.cleanup_scheduler.jobs]
        run(cache.stop())  # a different loop, in this thread
        assert all(task is not None and task.done() for task in tasks)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        cache.close()


def test_cancelling_every_caller_of_one_get_or_set_logs_nothing(
    cfg: CacheConfig, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    async def main() -> None:
        async with CacheManager(cfg) as cache:
            started = asyncio.Event()

            async def factory() -> str:
                started.set()
                await asyncio.sleep(30)
                return "never"

            callers = [asyncio.create_task(cache.get_or_set("k", factory)) for _ in range(10)]
            await started.wait()
            await asyncio.sleep(0.01)  # the nine others are waiting on the flight now
            for task in callers:
                task.cancel()
            results = await asyncio.gather(*callers, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            assert cache._flights == {}
            # The next caller leads a fresh flight.
            assert await cache.get_or_set("k", lambda: "fresh") == "fresh"

    with caplog.at_level("ERROR", logger="asyncio"):
        run(main())
        gc.collect()
    assert "never retrieved" not in caplog.text and "_LeaderGone" not in caplog.text


def test_close_during_get_or_set_returns_the_value_uncached(cfg: CacheConfig) -> None:
    cache = CacheManager(cfg)
    entered, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        entered.set()
        release.wait(10)
        return b"computed"

    async def main() -> bytes:
        call = asyncio.create_task(cache.get_or_set("k", slow))
        await asyncio.to_thread(entered.wait, 10)
        await asyncio.to_thread(cache.close)
        release.set()
        return await call

    assert run(main()) == b"computed"  # before: CacheClosedError "... open a new DiskCache"
    assert cache.closed
    with pytest.raises(CacheClosedError, match="CacheManager is closed"):
        run(cache.get_or_set("k", slow))


def test_close_during_a_lookup_speaks_of_the_manager(cfg: CacheConfig) -> None:
    """A get whose lower tiers are asked after close() began hears "CacheManager is closed", not the tier's words."""
    cache = CacheManager(cfg)
    entered, release = threading.Event(), threading.Event()
    below = cache.tiered.get_below

    def slow_get_below(key: Any, index: int, default: Any = None) -> Any:  # the real tiers, reached late
        entered.set()
        release.wait(10)
        return below(key, index, default)

    cache.tiered.get_below = slow_get_below  # type: ignore[method-assign]

    async def main() -> None:
        call = asyncio.create_task(cache.get("k"))
        await asyncio.to_thread(entered.wait, 10)
        await asyncio.to_thread(cache.close)
        release.set()
        with pytest.raises(CacheClosedError, match="This CacheManager is closed") as info:
            await call
        assert "DiskCache" not in str(info.value)

    run(main())


# --- monitoring objects bind to the manager they are assigned to ---------------------------------------
def test_assigned_collector_binds_to_its_manager(cfg: CacheConfig, tmp_path: Path) -> None:
    with CacheManager(cfg) as cache:
        collector = CacheMetricsCollector()
        assert not collector.bound
        cache.metrics = collector  # type: ignore[attr-defined]
        assert collector.manager is cache
        with CacheManager(make_config(tmp_path / "other")) as other:
            with pytest.raises(CacheError, match="already observes another"):
                other.metrics = collector  # type: ignore[attr-defined]


def test_network_tier_is_the_third_store_when_configured(tmp_path: Path, redis_url: str, redis_namespace: str) -> None:
    cfg = make_config(tmp_path, cache={"network": {"url": redis_url, "namespace": redis_namespace, "timeout": 1}})

    async def main() -> None:
        async with CacheManager(cfg) as cache:
            assert cache.network is not None
            assert list(cache.caches)[:3] == ["cache/memory", "cache/disk", "cache/network"]
            await cache.set("shared", {"v": 1})
            assert cache.network.get("shared") == {"v": 1}
            cache.memory.clear()
            cache.disk.clear()
            assert await cache.get("shared") == {"v": 1}  # served by Redis, promoted
            assert "shared" in cache.memory

    run(main())


def test_a_monitor_of_another_manager_is_refused_before_anything_opens(tmp_path: Path) -> None:
    with CacheManager(make_config(tmp_path / "a"), monitor=CacheMonitor()) as first:
        with pytest.raises(CacheError, match="already observes another"):
            CacheManager(make_config(tmp_path / "b"), monitor=first.monitor)
    assert not (tmp_path / "b").exists()

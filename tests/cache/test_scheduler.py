"""AsyncScheduler: jobs run every interval, survive failures, never overlap, and stop() leaves nothing behind."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time

import pytest

from llamahome.cache.scheduler import AsyncScheduler
from llamahome.errors import ConfigError

INTERVAL = 0.05


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def _only_current_task() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


def test_sync_job_runs_every_interval_in_a_worker_thread() -> None:
    starts: list[float] = []
    threads: set[int] = set()

    def job() -> None:
        starts.append(time.monotonic())
        threads.add(threading.get_ident())

    async def main() -> None:
        scheduler = AsyncScheduler()
        handle = await scheduler.schedule(job, interval=INTERVAL)
        await asyncio.sleep(INTERVAL * 6.5)
        await scheduler.stop()
        assert handle.runs == len(starts)
        assert _only_current_task()

    run(main())
    assert 4 <= len(starts) <= 7
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= INTERVAL * 0.8  # fixed rate: never early
    assert threading.get_ident() not in threads


def test_async_job_runs_on_the_loop_thread() -> None:
    seen: list[int] = []

    async def job() -> None:
        seen.append(threading.get_ident())

    async def main() -> None:
        scheduler = AsyncScheduler()
        await scheduler.schedule(job, interval=INTERVAL)
        await asyncio.sleep(INTERVAL * 3.5)
        await scheduler.stop()

    run(main())
    assert len(seen) >= 2
    assert set(seen) == {threading.get_ident()}


def test_partial_of_coroutine_function_is_awaited() -> None:
    calls: list[str] = []

    async def job(tag: str) -> None:
        calls.append(tag)

    async def main() -> None:
        scheduler = AsyncScheduler()
        await scheduler.schedule(functools.partial(job, "x"), interval=INTERVAL, delay=0)
        await asyncio.sleep(INTERVAL / 2)
        await scheduler.stop()

    run(main())
    assert calls == ["x"]


def test_failing_job_is_logged_and_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def job() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"boom {calls}")

    async def main() -> None:
        scheduler = AsyncScheduler()
        handle = await scheduler.schedule(job, interval=INTERVAL, name="flaky")
        await asyncio.sleep(INTERVAL * 4.5)
        await scheduler.stop()
        return handle

    with caplog.at_level(logging.ERROR, logger="llamahome.cache.scheduler"):
        handle = run(main())
    assert calls >= 3
    assert handle.runs == handle.failures == calls
    assert str(handle.last_error) == f"boom {calls}"
    records = [r for r in caplog.records if "flaky" in r.getMessage()]
    assert len(records) == calls
    assert records[0].exc_info is not None


def test_nothing_runs_after_stop_and_nothing_is_pending() -> None:
    calls = 0

    def job() -> None:
        nonlocal calls
        calls += 1

    async def main() -> None:
        scheduler = AsyncScheduler()
        await scheduler.schedule(job, interval=INTERVAL)
        await scheduler.schedule(job, interval=INTERVAL * 2)
        await asyncio.sleep(INTERVAL * 2.5)
        await scheduler.stop()
        at_stop = calls
        assert scheduler.jobs == []
        assert _only_current_task()
        await asyncio.sleep(INTERVAL * 4)
        assert calls == at_stop

    run(main())
    assert calls >= 2


def test_runs_of_one_job_never_overlap_and_skip_missed_ticks() -> None:
    active = 0
    most = 0
    starts: list[float] = []

    async def slow() -> None:
        nonlocal active, most
        starts.append(time.monotonic())
        active += 1
        most = max(most, active)
        await asyncio.sleep(INTERVAL * 2.5)
        active -= 1

    async def main() -> None:
        scheduler = AsyncScheduler()
        await scheduler.schedule(slow, interval=INTERVAL, delay=0)
        await asyncio.sleep(INTERVAL * 8)
        await scheduler.stop()

    run(main())
    assert most == 1
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # A 2.5-interval run lands on the 3rd tick after its start: missed ticks are skipped, not queued.
    assert gaps and all(g >= INTERVAL * 2.5 for g in gaps)


def test_stop_waits_for_a_thread_job_in_progress() -> None:
    state = {"started": False, "finished": False}

    def job() -> None:
        state["started"] = True
        time.sleep(0.15)
        state["finished"] = True

    async def main() -> None:
        scheduler = AsyncScheduler()
        handle = await scheduler.schedule(job, interval=10, delay=0)
        while not state["started"]:
            await asyncio.sleep(0.005)
        assert handle.running
        await scheduler.stop()
        assert state["finished"]
        assert handle.runs == 1 and handle.done and not handle.running

    run(main())


def test_cancel_one_job_leaves_the_others() -> None:
    counts = {"a": 0, "b": 0}

    async def main() -> None:
        scheduler = AsyncScheduler()
        a = await scheduler.schedule(lambda: counts.__setitem__("a", counts["a"] + 1), interval=INTERVAL)
        await scheduler.schedule(lambda: counts.__setitem__("b", counts["b"] + 1), interval=INTERVAL)
        await asyncio.sleep(INTERVAL * 1.5)
        a.cancel()
        await a.wait()
        assert a.done and a.cancelled
        frozen = counts["a"]
        await asyncio.sleep(INTERVAL * 3)
        assert counts["a"] == frozen
        assert len(scheduler.jobs) == 1
        await scheduler.stop()

    run(main())
    assert counts["b"] >= counts["a"] + 2


def test_stop_with_timeout_cancels_a_hung_async_job() -> None:
    async def main() -> None:
        flag = {"cancelled": False}

        async def hung() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                flag["cancelled"] = True
                raise

        scheduler = AsyncScheduler()
        handle = await scheduler.schedule(hung, interval=INTERVAL, delay=0)
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await scheduler.stop(timeout=0.05)
        assert time.monotonic() - t0 < 1.0
        assert flag["cancelled"] and handle.done
        assert _only_current_task()

    run(main())


def test_sync_function_returning_a_coroutine_is_awaited() -> None:
    done: list[int] = []

    async def inner() -> None:
        done.append(1)

    async def main() -> None:
        scheduler = AsyncScheduler()
        await scheduler.schedule(lambda: inner(), interval=10, delay=0)
        await asyncio.sleep(0.05)
        await scheduler.stop()

    run(main())
    assert done == [1]


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf")])
def test_bad_interval_is_refused(interval: float) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match="positive number of seconds"):
            await AsyncScheduler().schedule(lambda: None, interval=interval)

    run(main())

"""AsyncScheduler: jobs run every interval, survive failures, never overlap, and stop() leaves nothing behind.

Every test runs on virtual time (``VirtualTime``, injected as the scheduler's clock and sleep): intervals pass
when the test advances the clock, so no test sleeps through an interval.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llamahome.cache.scheduler import AsyncScheduler
from llamahome.errors import ConfigError

INTERVAL = 10.0


class VirtualTime:
    """A clock and an async sleep for one event loop: sleepers wake only when :meth:`advance` passes their time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # as asyncio.sleep(0): just yield
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def settle(self, scheduler: AsyncScheduler | None = None) -> None:
        """Let every task run until it waits again (thread jobs included: they finish in real time)."""
        for _ in range(1000):
            for _ in range(10):
                await asyncio.sleep(0)
            if scheduler is None or not any(job.running and not job._is_async for job in scheduler.jobs):
                return
            await asyncio.sleep(0.001)  # a thread job is finishing: give it a moment of real time
        raise AssertionError("a thread job did not finish")

    async def advance(self, seconds: float, scheduler: AsyncScheduler | None = None) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its own time, in order."""
        target = self.now + seconds
        await self.settle(scheduler)
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():  # cancelled while asleep
                continue
            self.now = max(self.now, when)
            future.set_result(None)
            await self.settle(scheduler)
        self.now = target
        await self.settle(scheduler)


def on_virtual_time(test: Callable[[AsyncScheduler, VirtualTime], Awaitable[Any]]) -> Any:
    """Run ``test(scheduler, vtime)`` in a fresh event loop with a scheduler on virtual time."""

    async def main() -> Any:
        vtime = VirtualTime()
        return await test(AsyncScheduler(clock=vtime, sleep=vtime.sleep), vtime)

    return asyncio.run(main())


def _only_current_task() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


def test_sync_job_runs_every_interval_in_a_worker_thread() -> None:
    starts: list[float] = []
    threads: set[int] = set()

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        def job() -> None:
            starts.append(vtime())
            threads.add(threading.get_ident())

        handle = await scheduler.schedule(job, interval=INTERVAL)
        await vtime.advance(INTERVAL * 6.5, scheduler)
        await scheduler.stop()
        assert handle.runs == len(starts) == 6
        assert _only_current_task()

    on_virtual_time(body)
    assert [b - a for a, b in zip(starts, starts[1:])] == [INTERVAL] * 5  # fixed rate, first after one interval
    assert threading.get_ident() not in threads


def test_async_job_runs_on_the_loop_thread() -> None:
    seen: list[int] = []

    async def job() -> None:
        seen.append(threading.get_ident())

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        await scheduler.schedule(job, interval=INTERVAL)
        await vtime.advance(INTERVAL * 3.5)
        await scheduler.stop()

    on_virtual_time(body)
    assert len(seen) == 3
    assert set(seen) == {threading.get_ident()}


def test_partial_of_coroutine_function_is_awaited() -> None:
    calls: list[str] = []

    async def job(tag: str) -> None:
        calls.append(tag)

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        await scheduler.schedule(functools.partial(job, "x"), interval=INTERVAL, delay=0)
        await vtime.advance(INTERVAL / 2)
        await scheduler.stop()

    on_virtual_time(body)
    assert calls == ["x"]


def test_failing_job_is_logged_and_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def job() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"boom {calls}")

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> Any:
        handle = await scheduler.schedule(job, interval=INTERVAL, name="flaky")
        await vtime.advance(INTERVAL * 4.5, scheduler)
        await scheduler.stop()
        return handle

    with caplog.at_level(logging.ERROR, logger="llamahome.cache.scheduler"):
        handle = on_virtual_time(body)
    assert calls == 4
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

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        await scheduler.schedule(job, interval=INTERVAL)
        await scheduler.schedule(job, interval=INTERVAL * 2)
        await vtime.advance(INTERVAL * 2.5, scheduler)
        assert calls == 3  # the first job at 10 and 20, the second at 20
        await scheduler.stop()
        assert scheduler.jobs == []
        assert _only_current_task()
        await vtime.advance(INTERVAL * 10, scheduler)
        assert calls == 3

    on_virtual_time(body)


def test_runs_of_one_job_never_overlap_and_skip_missed_ticks() -> None:
    active = 0
    most = 0
    starts: list[float] = []

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        async def slow() -> None:
            nonlocal active, most
            starts.append(vtime())
            active += 1
            most = max(most, active)
            await vtime.sleep(INTERVAL * 2.5)
            active -= 1

        await scheduler.schedule(slow, interval=INTERVAL, delay=0)
        await vtime.advance(INTERVAL * 8)  # runs start at 0, 30 and 60; the third ends at 85
        await vtime.advance(INTERVAL / 2)
        await scheduler.stop()

    on_virtual_time(body)
    assert most == 1
    # A 2.5-interval run lands on the 3rd tick after its start: missed ticks are skipped, not queued.
    assert [b - a for a, b in zip(starts, starts[1:])] == [INTERVAL * 3, INTERVAL * 3]


def test_stop_waits_for_a_thread_job_in_progress() -> None:
    started, release = threading.Event(), threading.Event()
    state = {"finished": False}

    def job() -> None:
        started.set()
        release.wait(10)
        state["finished"] = True

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        handle = await scheduler.schedule(job, interval=INTERVAL, delay=0)
        await asyncio.to_thread(started.wait, 10)
        assert handle.running
        stopping = asyncio.create_task(scheduler.stop())
        await vtime.settle()
        assert not stopping.done()  # stop() is waiting for the run
        release.set()
        await stopping
        assert state["finished"]
        assert handle.runs == 1 and handle.done and not handle.running

    on_virtual_time(body)


def test_cancel_one_job_leaves_the_others() -> None:
    counts = {"a": 0, "b": 0}

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        a = await scheduler.schedule(lambda: counts.__setitem__("a", counts["a"] + 1), interval=INTERVAL)
        await scheduler.schedule(lambda: counts.__setitem__("b", counts["b"] + 1), interval=INTERVAL)
        await vtime.advance(INTERVAL * 1.5, scheduler)
        a.cancel()
        await a.wait()
        assert a.done and a.cancelled
        await vtime.advance(INTERVAL * 3, scheduler)
        assert len(scheduler.jobs) == 1
        await scheduler.stop()

    on_virtual_time(body)
    assert counts == {"a": 1, "b": 4}


def test_stop_with_timeout_cancels_a_hung_async_job() -> None:
    flag = {"cancelled": False}

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        async def hung() -> None:
            try:
                await vtime.sleep(3600)  # never advanced: hangs
            except asyncio.CancelledError:
                flag["cancelled"] = True
                raise

        handle = await scheduler.schedule(hung, interval=INTERVAL, delay=0)
        await vtime.settle()
        assert handle.running
        await scheduler.stop(timeout=0.01)  # asyncio.wait's timeout: a hundredth of a real second
        assert flag["cancelled"] and handle.done
        assert _only_current_task()

    on_virtual_time(body)


def test_sync_function_returning_a_coroutine_is_awaited() -> None:
    done: list[int] = []

    async def inner() -> None:
        done.append(1)

    async def body(scheduler: AsyncScheduler, vtime: VirtualTime) -> None:
        await scheduler.schedule(lambda: inner(), interval=INTERVAL, delay=0)
        await vtime.advance(1, scheduler)
        await scheduler.stop()

    on_virtual_time(body)
    assert done == [1]


def test_without_injection_the_loop_time_drives_jobs() -> None:
    runs: list[float] = []

    async def main() -> None:
        scheduler = AsyncScheduler()
        loop = asyncio.get_running_loop()
        await scheduler.schedule(lambda: runs.append(loop.time()), interval=3600, delay=0)
        for _ in range(1000):
            if runs:
                break
            await asyncio.sleep(0.001)
        await scheduler.stop()
        assert len(runs) == 1 and scheduler.jobs == []

    asyncio.run(main())


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf")])
def test_bad_interval_is_refused(interval: float) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match="positive number of seconds"):
            await AsyncScheduler().schedule(lambda: None, interval=interval)

    asyncio.run(main())


def test_bad_clock_or_sleep_is_refused() -> None:
    with pytest.raises(ConfigError, match="clock"):
        AsyncScheduler(clock=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sleep"):
        AsyncScheduler(sleep="later")  # type: ignore[arg-type]

"""AsyncScheduler: run maintenance jobs (cache cleanup, metric snapshots) every N seconds on the event loop.

    scheduler = AsyncScheduler()
    job = await scheduler.schedule(cache.cleanup, interval=3600)   # async or sync callables
    ...
    job.cancel()              # stop one job (a run in progress finishes first)
    await scheduler.stop()    # stop them all; returns when nothing is running or pending

Rules every job follows:

- The first run comes one ``interval`` after scheduling (``delay=`` changes that), then every ``interval``
  seconds measured from the previous *start*. A run that overruns skips the ticks it missed instead of
  queueing them, so runs of one job never overlap and never bunch up.
- Coroutine functions run on the loop; plain functions run in a worker thread (``asyncio.to_thread``), so
  blocking cleanup never stalls the loop. A plain function that returns an awaitable has it awaited.
- A job that raises is logged (logger ``llamahome.cache.scheduler``), counted, and runs again next interval.
- ``stop()`` lets a run in progress finish (a thread cannot be interrupted, and half a cleanup helps nobody),
  cancels the sleeping jobs, and waits for all of them: once it returns, no job runs and no task is pending.

Time is injectable, as in the stores: ``AsyncScheduler(clock=..., sleep=...)`` takes a clock (seconds) and an
async sleep; the defaults are the running loop's ``time()`` and ``asyncio.sleep``. Tests drive jobs with a
virtual clock whose ``sleep`` returns when the test advances it, so no test waits for an interval.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from llamahome.errors import CacheError, ConfigError

__all__ = ["AsyncScheduler", "ScheduledJob", "is_async_callable"]

logger = logging.getLogger(__name__)

Job = Callable[[], Any]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


def is_async_callable(fn: object) -> bool:
    """True if calling ``fn`` gives a coroutine: a coroutine function, a partial of one, or an async ``__call__``."""
    while hasattr(fn, "func") and not inspect.isfunction(fn):  # functools.partial, possibly nested
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class ScheduledJob:
    """Handle to one scheduled job: its counters, and ``cancel()`` to stop it.

    ``runs`` counts finished runs (failed ones included), ``failures`` the runs that raised, and
    ``last_error`` keeps the latest exception for inspection.
    """

    def __init__(self, fn: Job, interval: float, name: str, clock: Clock | None = None, sleep: Sleep | None = None) -> None:
        self.fn = fn
        self.interval = interval
        self.name = name
        self.runs = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self.last_started: float | None = None  # the scheduler's clock (the loop's time by default)
        self._clock = clock
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self.last_duration: float | None = None
        self._is_async = is_async_callable(fn)
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._cancel_requested = False

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self._running

    @property
    def cancelled(self) -> bool:
        return self._cancel_requested

    @property
    def done(self) -> bool:
        """True once the job will never run again and its task has finished."""
        return self._task is not None and self._task.done()

    def cancel(self) -> None:
        """Stop the job: no new run starts; a run in progress finishes. ``await job.wait()`` to join it.

        Works from any thread and any loop: the job's own loop is asked to cancel it, and a job whose loop
        has closed is already over.
        """
        self._cancel_requested = True
        task = self._task
        if task is None or self._running or task.done():
            return
        loop = task.get_loop()
        if loop.is_closed():
            return  # the loop is gone, and the task with it: nothing will ever run it again
        if _running_loop() is loop:
            task.cancel()
        else:
            loop.call_soon_threadsafe(task.cancel)

    async def wait(self) -> None:
        """Return when the job's task has ended (after ``cancel()``, or after the scheduler stopped).

        The task may live on another loop (``start()`` in one ``asyncio.run``, ``stop()`` in the next):
        a closed loop's task is over; a loop still running in another thread is waited on from here.
        """
        task = self._task
        if task is None or task.done():
            return
        loop = task.get_loop()
        if loop.is_closed():
            return
        if asyncio.get_running_loop() is loop:
            # gather(return_exceptions=True) absorbs the CancelledError of a cancelled task without
            # swallowing a cancellation aimed at the caller.
            await asyncio.gather(task, return_exceptions=True)
            return
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: task.add_done_callback(lambda _: done.set()))
        while not done.is_set() and not loop.is_closed():
            await asyncio.to_thread(done.wait, 0.1)

    async def _run_once(self) -> None:
        if self._is_async:
            result = self.fn()
        else:
            result = await asyncio.to_thread(self.fn)
        if inspect.isawaitable(result):
            await result

    async def _loop(self, delay: float) -> None:
        now = self._clock if self._clock is not None else asyncio.get_running_loop().time
        next_start = now() + delay
        while not self._cancel_requested:
            # Cancellation only ever lands here, in the sleep: cancel() never cancels a running job.
            await self._sleep(max(0.0, next_start - now()))
            if self._cancel_requested:
                break
            self._running = True
            started = now()
            self.last_started = started
            error: BaseException | None = None
            try:
                await self._run_once()
            except asyncio.CancelledError:
                # Only a forced cancel gets here (stop(timeout=...) or loop shutdown): cancel() waits for runs.
                self._cancel_requested = True
                raise
            except Exception as exc:  # a failing job must not kill the schedule
                error = exc
            finally:
                self._running = False
                self._record(error, started, now())
            # Fixed rate from the previous start; skip ticks a slow run missed so runs never bunch up.
            ended = now()
            next_start = started + self.interval
            if next_start < ended:
                missed = math.ceil((ended - next_start) / self.interval)
                next_start += missed * self.interval

    def _record(self, error: BaseException | None, started: float, ended: float) -> None:
        self.runs += 1
        self.last_duration = ended - started
        if error is None:
            return
        self.failures += 1
        self.last_error = error
        logger.error(
            "Scheduled job %r failed (run %d, %d failures so far); it runs again in %.3g s.",
            self.name,
            self.runs,
            self.failures,
            self.interval,
            exc_info=(type(error), error, error.__traceback__),
        )

    def __repr__(self) -> str:
        state = "cancelled" if self._cancel_requested else ("running" if self._running else "waiting")
        return f"<ScheduledJob {self.name!r} every {self.interval:g}s {state} runs={self.runs} failures={self.failures}>"


class AsyncScheduler:
    """Runs jobs periodically on the running event loop; see the module docstring for the rules.

    ``clock`` (seconds, monotonic) and ``sleep`` (an async function taking seconds) default to the running
    loop's ``time()`` and ``asyncio.sleep``; inject both to run jobs on virtual time.
    """

    def __init__(self, *, clock: Clock | None = None, sleep: Sleep | None = None) -> None:
        if clock is not None and not callable(clock):
            raise ConfigError(f"AsyncScheduler clock must be a callable returning seconds, not {type(clock).__name__}.")
        if sleep is not None and not callable(sleep):
            raise ConfigError(f"AsyncScheduler sleep must be an async function of seconds, not {type(sleep).__name__}.")
        self.clock = clock
        self.sleep = sleep
        self._jobs: list[ScheduledJob] = []

    @property
    def jobs(self) -> list[ScheduledJob]:
        """The jobs scheduled and not yet finished."""
        self._jobs = [job for job in self._jobs if not job.done]
        return list(self._jobs)

    async def schedule(
        self,
        fn: Callable[[], Any] | Callable[[], Awaitable[Any]],
        interval: float,
        *,
        delay: float | None = None,
        name: str | None = None,
    ) -> ScheduledJob:
        """Run ``fn()`` every ``interval`` seconds, first after ``delay`` (default: ``interval``).

        Returns the job's handle. Must be awaited inside a running event loop; the job lives on that loop.
        """
        if not callable(fn):
            raise CacheError(f"AsyncScheduler.schedule needs a callable, not {type(fn).__name__}.")
        given = interval
        try:
            interval = float(interval)
        except (TypeError, ValueError):
            interval = math.nan  # reported below, as a ConfigError like any other bad interval
        if not math.isfinite(interval) or interval <= 0:
            raise ConfigError(
                f"A scheduling interval must be a positive number of seconds, not {given!r}; "
                "check cache.disk.cleanup_interval."
            )
        try:
            first = interval if delay is None else float(delay)
        except (TypeError, ValueError):
            first = math.nan
        if not math.isfinite(first) or first < 0:
            raise ConfigError(f"A scheduling delay must be zero or more seconds, not {delay!r}.")
        job = ScheduledJob(
            fn, interval, name or getattr(fn, "__qualname__", None) or repr(fn), clock=self.clock, sleep=self.sleep
        )
        job._task = asyncio.get_running_loop().create_task(job._loop(first), name=f"llamahome-job-{job.name}")
        self._jobs = [j for j in self._jobs if not j.done]
        self._jobs.append(job)
        return job

    async def stop(self, timeout: float | None = None) -> None:
        """Cancel every job and wait for them. Runs in progress finish first.

        With ``timeout``, runs still going after that many seconds are cancelled (async jobs stop at their
        next ``await``; a thread job is abandoned to finish on its own).
        """
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.cancel()
        here = asyncio.get_running_loop()
        # Jobs scheduled on another loop are joined through ScheduledJob.wait (a closed loop's are over).
        elsewhere = [job for job in jobs if job._task is not None and job._task.get_loop() is not here]
        if elsewhere:
            await asyncio.gather(*(job.wait() for job in elsewhere))
        tasks = [job._task for job in jobs if job._task is not None and job._task.get_loop() is here]
        if not tasks:
            return
        if timeout is None:
            await asyncio.gather(*tasks, return_exceptions=True)
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            logger.warning("Scheduled job %r did not finish within %.3g s of stop(); cancelling it.", task.get_name(), timeout)
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def running(self) -> bool:
        """True while at least one job is scheduled."""
        return bool(self.jobs)

    def __repr__(self) -> str:
        return f"<AsyncScheduler jobs={len(self.jobs)}>"

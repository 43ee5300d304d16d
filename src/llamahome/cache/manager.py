"""CacheManager: builds every cache from a CacheConfig, serves them through an async facade, runs cleanup.

    async with CacheManager(CacheConfig(memory_size=512)) as cache:
        await cache.set("prompt:1", {"text": "hello"}, ttl=3600)
        await cache.get("prompt:1")
        await cache.get_or_set("embedding:1", compute)      # compute runs once, however many callers ask
        report = await cache.cleanup()                       # one pass over every cache

What it builds (attribute name == YAML block name):

- ``memory``, ``disk`` and, when ``cache.network`` is set, ``network``: the tiers behind ``get``/``set``,
  composed by ``tiered`` (a :class:`~llamahome.cache.tiered.TieredCache`: memory -> disk -> network). With a
  network tier, ``tiered`` listens for other machines' writes and drops its local copies of those keys.
- ``model_cache`` at ``<cache.disk.path>/models``, ``training_cache`` at ``<cache.disk.path>/training``,
  ``system_cache`` at ``system_cache.temp_dir``, ``kv_cache`` at ``<cache.disk.path>/kv`` (sharing the network
  tier when one is configured).

Threads and the event loop. ``get`` asks the memory tier synchronously first: a memory hit never leaves the
loop. Everything that may block (disk, Redis, a cleanup pass, closing files) runs in a worker thread via
``asyncio.to_thread``. The stores are thread-safe, so the same manager also serves threads through the
``*_sync`` methods, and several event loops in several threads at once.

Scheduling. ``start()`` schedules ``cleanup`` every ``config.cleanup_interval`` seconds, exactly as the seed
does. The system cache's files must vanish after ``max_age``; when ``max_age / 4`` is shorter than the cleanup
interval, its cleanup also runs on its own every ``max_age / 4`` seconds (at least 0.1 s), so no scratch file
outlives ``max_age`` by more than a quarter of it. A ``monitor`` that keeps a history (a
:class:`~llamahome.cache.observers.SnapshotRecorder`, e.g. ``llamahome.monitoring.CacheMonitor``) records a
snapshot every ``monitor.snapshot_interval`` seconds while the manager is started.

Observers (anything with ``bind(manager)`` and ``bound``: ``CacheMetricsCollector``, ``CacheMonitor``) that
are passed to a manager or assigned as its attributes are bound to it: that is how the seed's
``MonitoredCacheManager`` works. The manager knows them only through those protocols, so the cache package
never imports ``llamahome.monitoring``, which is built on top of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamahome.errors import CacheClosedError, CacheError, ConfigError, ValueTooLargeError

from .base import MISSING, Key, MaintainedCache, Store, validate_key
from .config import CacheConfig
from .observers import ManagerObserver, SnapshotRecorder
from .scheduler import AsyncScheduler, ScheduledJob, is_async_callable
from .stats import CacheStats, CleanupReport

if TYPE_CHECKING:
    from .disk import DiskCache
    from .kv import KVCache
    from .memory import MemoryCache
    from .model import ModelCache
    from .system import SystemCache
    from .tiered import TieredCache
    from .training import TrainingCache

__all__ = ["CacheManager"]

logger = logging.getLogger(__name__)

Factory = Callable[[], Any] | Callable[[], Awaitable[Any]]

_CLOSED = "This CacheManager is closed; create a new one to keep caching."

#: Shortest period of the system cache's own cleanup job, in seconds.
MIN_SYSTEM_INTERVAL = 0.1


class _LeaderGone(Exception):
    """The caller computing a value was cancelled; the callers waiting on it must try again."""


class _Flight:
    """One factory call in progress for one key; every concurrent caller (any thread or loop) waits on it."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class CacheManager:
    """Every cache the configuration describes, an async facade over the tiers, and scheduled cleanup.

    ``config`` defaults to ``CacheConfig()`` (the seed's values). ``monitor`` is optional: pass a
    :class:`~llamahome.monitoring.CacheMonitor` (or assign ``cache.monitor = CacheMonitor()``) for
    recommendations and a history of snapshots; without one the manager records none. ``stats`` counts the manager's own
    lookups (``get`` and ``get_or_set``): its hit rate is the share that found a value in any tier.

    Construction opens every store (directories, the disk index) synchronously, as a constructor must;
    create managers at start-up rather than per request.

    Lifecycle: ``start()`` schedules the jobs and ``stop()`` pauses them (stores stay open; ``start()`` again
    resumes, from any event loop). ``close()`` (or ``await aclose()``) closes every store for good; leaving
    ``async with`` does both.
    """

    memory: MemoryCache
    disk: DiskCache
    network: Store | None
    tiered: TieredCache
    model_cache: ModelCache
    training_cache: TrainingCache
    system_cache: SystemCache
    kv_cache: KVCache

    def __init__(self, config: CacheConfig | None = None, monitor: ManagerObserver | None = None) -> None:
        if config is not None and not isinstance(config, CacheConfig):
            raise ConfigError(
                f"CacheManager takes a CacheConfig, not {type(config).__name__}; build one with "
                "CacheConfig.from_yaml(path), CacheConfig.from_dict(data) or CacheConfig(memory_size=...)."
            )
        self.config = config if config is not None else CacheConfig()
        self.cleanup_scheduler = AsyncScheduler()
        self.stats = CacheStats(name="manager")
        self.jobs: dict[str, ScheduledJob] = {}
        self._flights: dict[Key, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._cleanup_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._started = False
        self._built: list[Store] = []
        # Bound before any store opens, so a monitor already observing another manager fails cleanly.
        if monitor is not None and not isinstance(monitor, ManagerObserver):
            raise ConfigError(
                f"CacheManager's monitor must be an observer with bind(manager), e.g. "
                f"llamahome.monitoring.CacheMonitor(), not {type(monitor).__name__}."
            )
        self.monitor: ManagerObserver | None = monitor
        try:
            self._build()
        except BaseException:
            self._close_stores()
            raise

    # --- construction -------------------------------------------------------------------------------
    def _build(self) -> None:
        from .disk import DiskCache
        from .memory import MemoryCache
        from .model import ModelCache
        from .system import SystemCache
        from .tiered import TieredCache
        from .training import TrainingCache

        cfg = self.config
        mem, disk = cfg.cache.memory, cfg.cache.disk
        self.memory = self._own(MemoryCache(size=mem.size, policy=mem.type, compression=mem.compression))
        # The YAML has one compression switch, under cache.memory; the disk tier follows it.
        self.disk = self._own(DiskCache(disk.path, size=disk.size, policy="lru", compression=mem.compression))
        self.network = None
        tiers: list[Store] = [self.memory, self.disk]
        if cfg.cache.network is not None:
            from .redis import RedisCache

            self.network = self._own(RedisCache.from_config(cfg.cache.network))
            tiers.append(self.network)
        self.tiered = TieredCache(*tiers)

        root = Path(disk.path)
        mc, tc, sc = cfg.model_cache, cfg.training_cache, cfg.system_cache
        self.model_cache = self._own(
            ModelCache(root / "models", size=mc.size, compression=mc.compression, cleanup_policy=mc.cleanup_policy)
        )
        self.training_cache = self._own(
            TrainingCache(
                root / "training",
                size=tc.size,
                batch_buffer=tc.batch_buffer,
                prefetch=tc.prefetch,
                cleanup_policy=tc.cleanup_policy,
            )
        )
        self.system_cache = self._own(
            SystemCache(sc.temp_dir, size=sc.size, max_age=sc.max_age, cleanup_policy=sc.cleanup_policy)
        )
        from .kv import KVCache

        kc = cfg.kv_cache
        self.kv_cache = self._own(
            KVCache(
                root / "kv",
                size=kc.size,
                block_tokens=kc.block_tokens,
                compression=kc.compression,
                cleanup_policy=kc.cleanup_policy,
                remote=self.network,
            )
        )

    def _own(self, store: Any) -> Any:
        self._built.append(store)
        return store

    def __setattr__(self, name: str, value: Any) -> None:
        # The seed's MonitoredCacheManager does `self.metrics = CacheMetricsCollector()`: bind it to us.
        # One already observing another manager raises (bind() says so) rather than report the wrong numbers.
        if isinstance(value, ManagerObserver):
            value.bind(self)
        object.__setattr__(self, name, value)

    def store_labels(self) -> list[tuple[str, str, MaintainedCache]]:
        """``(cache, tier, store)`` for every store the manager owns: ``cache`` is the YAML block name."""
        rows: list[tuple[str, str, MaintainedCache]] = [("cache", "memory", self.memory), ("cache", "disk", self.disk)]
        if self.network is not None:
            rows.append(("cache", "network", self.network))
        rows += [
            ("model_cache", "disk", self.model_cache),
            ("training_cache", "disk", self.training_cache),
            ("system_cache", "disk", self.system_cache),
            ("kv_cache", "disk", self.kv_cache),
        ]
        return rows

    @property
    def caches(self) -> dict[str, MaintainedCache]:
        """Every store by ``<cache>/<tier>`` label (``cache/memory``, ``model_cache/disk``, ...)."""
        return {f"{cache}/{tier}": store for cache, tier, store in self.store_labels()}

    @property
    def started(self) -> bool:
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start cache management tasks: scheduled cleanup, the system cache's max-age sweep, snapshots.

        Idempotent; after ``stop()`` it starts them again (on the running loop). Raises CacheClosedError
        after ``close()``.
        """
        self._check_open()
        if self._started:
            return
        self._started = True
        self.jobs["cleanup"] = await self.cleanup_scheduler.schedule(
            self.cleanup, interval=self.config.cleanup_interval
        )
        system_interval = self.system_cleanup_interval
        if system_interval is not None:
            self.jobs["system_cache"] = await self.cleanup_scheduler.schedule(
                self._cleanup_system, interval=system_interval, name="system_cache.cleanup"
            )
        monitor = self.monitor
        if isinstance(monitor, SnapshotRecorder) and monitor.snapshot_interval:
            self.jobs["snapshot"] = await self.cleanup_scheduler.schedule(
                monitor.record_snapshot, interval=monitor.snapshot_interval, name="monitor.record_snapshot"
            )

    @property
    def system_cleanup_interval(self) -> float | None:
        """Period of the system cache's own cleanup job, or None when the main cleanup is frequent enough."""
        quarter = max(MIN_SYSTEM_INTERVAL, float(self.config.system_cache.max_age) / 4)
        return quarter if quarter < float(self.config.cleanup_interval) else None

    async def stop(self) -> None:
        """Pause: stop the scheduled jobs (a run in progress finishes first). Stores stay open. Idempotent.

        ``start()`` resumes the jobs; ``close()``/``aclose()`` closes the stores. Works on any event loop,
        including one other than ``start()``'s (jobs of a loop that has since closed are already over).
        """
        await self.cleanup_scheduler.stop()
        self._started = False
        self.jobs.clear()

    async def aclose(self) -> None:
        """Stop the jobs, then close every store for good (in a worker thread). Idempotent."""
        await self.stop()
        if not self._closed:
            await asyncio.to_thread(self.close)

    async def __aenter__(self) -> CacheManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close every store (files, connections, threads) for good. For code without a loop. Idempotent.

        Scheduled jobs are cancelled (without waiting: ``await stop()`` first to join a run in progress).
        A ``get_or_set`` computing meanwhile still returns its value, uncached.
        """
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        for job in list(self.jobs.values()):
            job.cancel()
        with self._cleanup_lock:  # let a cleanup pass in progress finish before its stores close
            self._close_stores()

    def _close_stores(self) -> None:
        for store in reversed(self._built):
            try:
                store.close()
            except Exception:  # closing the rest matters more than one store's complaint
                logger.exception("Closing %r failed; the other caches were still closed.", store)

    def __enter__(self) -> CacheManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(_CLOSED)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the tiers; a store closed because the manager closed meanwhile says so in the
        manager's words (not "open a new DiskCache", which the caller never opened)."""
        try:
            return fn(*args)
        except CacheClosedError as exc:
            if self._closed:
                raise CacheClosedError(_CLOSED) from exc
            raise

    # --- async facade -------------------------------------------------------------------------------
    async def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key`` from the first tier that has it (promoted to the tiers above), or ``default``."""
        value = await self._lookup(key)
        if value is MISSING:
            self.stats.add("misses")
            return default
        self.stats.add("hits")
        return value

    async def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` in every tier (``ttl`` seconds, None: no expiry)."""
        self._check_open()
        validate_key(key)
        await asyncio.to_thread(self._call, self.tiered.set, key, value, ttl)
        self.stats.add("sets")

    async def delete(self, key: Key) -> bool:
        """Remove ``key`` from every tier; True if any tier had it."""
        self._check_open()
        validate_key(key)
        found = bool(await asyncio.to_thread(self._call, self.tiered.delete, key))
        if found:
            self.stats.add("deletes")
        return found

    async def contains(self, key: Key) -> bool:
        """True if any tier holds ``key`` (does not count as a lookup)."""
        self._check_open()
        if key in self.memory:
            return True
        return bool(await asyncio.to_thread(self._call, self.tiered.__contains__, key))

    async def get_or_set(self, key: Key, factory: Factory, ttl: float | None = None) -> Any:
        """The cached value, or ``factory()``'s result stored under ``key``.

        The factory runs once per key however many coroutines, event loops and threads ask at once: the
        first caller computes, the others wait for its result (or its exception). Coroutine functions are
        awaited on the loop; plain callables run in a worker thread so a slow factory never blocks the loop.
        Counts as one lookup in ``stats`` (a hit when the value was already cached).
        """
        if not callable(factory):
            raise CacheError(
                f"get_or_set needs a factory to call on a miss (a function or coroutine function), not "
                f"{type(factory).__name__}; to store a value you already have, use set()."
            )
        value = await self._lookup(key)
        if value is not MISSING:
            self.stats.add("hits")
            return value
        self.stats.add("misses")
        while True:
            flight, leader = self._join_or_lead(key)
            if not leader:
                try:
                    # shield: a waiter being cancelled must not cancel the shared flight.
                    return await asyncio.shield(_watch(flight.future))
                except _LeaderGone:
                    continue
            try:
                value = await self._lookup(key)  # a flight may have landed between our miss and our lead
                if value is MISSING:
                    value = await _call_factory(factory)
                    await asyncio.to_thread(self._store_computed, key, value, ttl)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                self._land(key, flight, error=_LeaderGone())
                raise
            except BaseException as exc:
                self._land(key, flight, error=exc)
                raise
            self._land(key, flight, value=value)
            return value

    async def cleanup(self) -> CleanupReport:
        """One cleanup pass over every cache, in a worker thread; the report has one part per cache."""
        self._check_open()
        return await asyncio.to_thread(self.cleanup_sync)

    # --- sync facade (threads, scripts, memoize over sync functions) --------------------------------
    def get_sync(self, key: Key, default: Any = None) -> Any:
        """Blocking :meth:`get`, for threads without an event loop."""
        self._check_open()
        value = self._call(self.tiered.get, key, MISSING)
        if value is MISSING:
            self.stats.add("misses")
            return default
        self.stats.add("hits")
        return value

    def set_sync(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Blocking :meth:`set`."""
        self._check_open()
        self._call(self.tiered.set, key, value, ttl)
        self.stats.add("sets")

    def delete_sync(self, key: Key) -> bool:
        """Blocking :meth:`delete`."""
        self._check_open()
        found = bool(self._call(self.tiered.delete, key))
        if found:
            self.stats.add("deletes")
        return found

    def get_or_set_sync(self, key: Key, factory: Callable[[], Any], ttl: float | None = None) -> Any:
        """Blocking :meth:`get_or_set`; shares its once-per-key guarantee with async callers."""
        self._check_open()
        validate_key(key)
        if not callable(factory):
            raise CacheError(
                f"get_or_set_sync needs a factory to call on a miss (a function), not {type(factory).__name__}; "
                "to store a value you already have, use set_sync()."
            )
        value = self._call(self.tiered.get, key, MISSING)
        if value is not MISSING:
            self.stats.add("hits")
            return value
        self.stats.add("misses")
        while True:
            flight, leader = self._join_or_lead(key)
            if not leader:
                try:
                    return flight.future.result()
                except _LeaderGone:
                    continue
            try:
                value = self._call(self.tiered.get, key, MISSING)
                if value is MISSING:
                    value = factory()
                    if inspect.isawaitable(value):
                        _discard(value)
                        raise CacheError(
                            "get_or_set_sync got an async factory; await CacheManager.get_or_set instead."
                        )
                    self._store_computed(key, value, ttl)
            except (KeyboardInterrupt, SystemExit):
                self._land(key, flight, error=_LeaderGone())
                raise
            except BaseException as exc:
                self._land(key, flight, error=exc)
                raise
            self._land(key, flight, value=value)
            return value

    def cleanup_sync(self) -> CleanupReport:
        """Blocking :meth:`cleanup`. One cache failing is logged and reported; the others are still cleaned."""
        self._check_open()
        with self._cleanup_lock:
            self._check_open()  # closed while we waited for the lock
            parts = [self._cleanup_one(f"{cache}/{tier}", store) for cache, tier, store in self.store_labels()]
        return CleanupReport.combine("manager", parts)

    def _cleanup_system(self) -> CleanupReport:
        with self._cleanup_lock:
            self._check_open()
            return self._cleanup_one("system_cache/disk", self.system_cache)

    def _cleanup_one(self, label: str, store: MaintainedCache) -> CleanupReport:
        try:
            report = store.cleanup()
        except Exception as exc:
            logger.exception("Cleanup of %s failed; the other caches were still cleaned.", label)
            self.stats.add("errors")
            return CleanupReport(cache=label, details={"error": f"{type(exc).__name__}: {exc}"})
        report.cache = label  # the store's own name ("memory") is ambiguous across caches
        return report

    # --- internals ----------------------------------------------------------------------------------
    async def _lookup(self, key: Key) -> Any:
        """Memory synchronously (a hit never leaves the loop), then the lower tiers in a worker thread."""
        self._check_open()
        validate_key(key)
        try:
            value = self.memory.get(key, MISSING)
        except CacheClosedError as exc:
            if self._closed:
                raise CacheClosedError(_CLOSED) from exc
            raise
        if value is not MISSING:
            return value
        return await asyncio.to_thread(self._call, self._lookup_below_memory, key)

    def _lookup_below_memory(self, key: Key) -> Any:
        # Memory already missed: ask only the tiers below it (a hit is promoted with its remaining ttl).
        return self.tiered.get_below(key, 0, MISSING)

    def _store_computed(self, key: Key, value: Any, ttl: float | None) -> None:
        if self._closed:
            return  # closed while the factory ran: the caller still gets its value, uncached
        try:
            self.tiered.set(key, value, ttl)
        except CacheClosedError:
            if not self._closed:
                raise  # a store closed behind the manager's back: say so
            return
        except ValueTooLargeError:
            # The caller still gets its value; it just is not cached. Say so once per occurrence.
            logger.warning("get_or_set computed a value for %r too large for every tier; it was not cached.", key)
            self.stats.add("errors")
            return
        self.stats.add("sets")

    def _join_or_lead(self, key: Key) -> tuple[_Flight, bool]:
        with self._flights_lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = _Flight()
            return flight, True

    def _land(self, key: Key, flight: _Flight, value: Any = MISSING, error: BaseException | None = None) -> None:
        # The value is already stored, so callers arriving after the flight is gone hit the cache.
        with self._flights_lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        if error is not None:
            flight.future.set_exception(error)
        else:
            flight.future.set_result(value)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("started" if self._started else "idle")
        return f"<CacheManager {state} memory={self.config.cache.memory.size:g}MB disk={os.fspath(self.config.cache.disk.path)!r}>"


async def _call_factory(factory: Factory) -> Any:
    if is_async_callable(factory):
        result = factory()
    else:
        result = await asyncio.to_thread(factory)
    if inspect.isawaitable(result):
        result = await result
    return result


def _watch(future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
    """``future`` as an awaitable on this loop, whose outcome counts as seen even when nobody awaits it.

    A waiter cancelled while the flight is in the air leaves its shielded copy behind; if the flight then
    fails, asyncio would log "Future exception was never retrieved" once per such waiter.
    """
    waiter = asyncio.wrap_future(future)
    waiter.add_done_callback(_mark_retrieved)
    return waiter


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _discard(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)  # an un-awaited coroutine would warn (and warnings are errors)
    if close is not None:
        close()

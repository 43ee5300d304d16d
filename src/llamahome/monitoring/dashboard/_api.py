"""The dashboard's data: ``/api/stats`` and ``/api/history`` as plain, JSON-ready dicts.

Only statistics and names leave this module, never a cached value: store counters, model names and sizes,
dataset ids and batch counts, scratch totals, recommendations. Training fingerprints and model metadata are
left out too, since they are whatever the application chose to put there.

History is kept by a :class:`HistorySampler`, a daemon thread that reads the counters every ``interval``
seconds into a :class:`~llamahome.monitoring.SnapshotRing` of compact rows, so a page opened now can draw the
last half hour even if nobody was watching. The manager's own minute snapshots (``manager.monitor.history``,
six hours, kept when the manager was given a ``CacheMonitor``) are served from the same endpoint in the same
shape.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from llamahome.monitoring.monitor import CacheMonitor
from llamahome.monitoring.snapshots import Snapshot, SnapshotRing

if TYPE_CHECKING:
    from llamahome.cache.manager import CacheManager

__all__ = ["FIELDS", "HistorySampler", "after", "compact", "history_payload", "monitor_history", "monitor_of", "stats_payload"]

logger = logging.getLogger(__name__)

#: Per-series fields of a history row, in this order (counters only grow; bytes/entries are holdings).
FIELDS = ("hits", "misses", "sets", "evictions", "bytes", "max_bytes", "entries")
#: The series holding the manager's own lookups (``get``/``get_or_set``), next to ``<cache>/<tier>`` ones.
MANAGER = "manager/all"


def compact(snapshot: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """One history row from a collector snapshot: ``{series: (hits, misses, ...)}`` in :data:`FIELDS` order."""
    row = {MANAGER: tuple(int(snapshot["manager"].get(f, 0)) for f in FIELDS)}
    for label, stats in snapshot["caches"].items():
        row[label] = tuple(int(stats.get(f, 0)) for f in FIELDS)
    return row


def history_payload(points: Iterable[Snapshot], interval: float | None, source: str) -> dict[str, Any]:
    """Columns for charts and scripts: ``time`` and, per series, one list per field (None where absent)."""
    items = list(points)
    labels: list[str] = []
    for point in items:
        for label in point.data:
            if label not in labels:
                labels.append(label)
    series: dict[str, dict[str, list[int | None]]] = {}
    for label in labels:
        columns: dict[str, list[int | None]] = {f: [] for f in FIELDS}
        for point in items:
            row = point.data.get(label)
            for i, f in enumerate(FIELDS):
                columns[f].append(None if row is None else row[i])
        series[label] = columns
    return {
        "source": source,
        "interval": interval,
        "fields": list(FIELDS),
        # Full precision: a poller passes the last time back as ?since=, which must match it exactly.
        "time": [point.time for point in items],
        "series": series,
    }


class HistorySampler:
    """Reads the manager's counters every ``interval`` seconds into ``ring`` (``size`` rows), in a thread."""

    def __init__(self, manager: CacheManager, interval: float = 2.0, size: int = 900) -> None:
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
            raise ValueError(f"The sampling interval must be a positive number of seconds, not {interval!r}.")
        self.manager = manager
        self.interval = float(interval)
        self.ring = SnapshotRing(size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llamahome-dashboard-sampler", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def sample(self) -> None:
        """Record one row now (skipped, with a debug log, once the manager is closed)."""
        if self.manager.closed:
            return
        try:
            self.ring.append(compact(monitor_of(self.manager).collector.snapshot()))
        except Exception:  # a store closing under us must not kill the sampler; the next tick tries again
            logger.debug("Dashboard sample failed", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _models(manager: CacheManager) -> list[dict[str, Any]]:
    return [
        {
            "name": info.name,
            "size": info.size,
            "raw_size": info.raw_size,
            "ratio": info.ratio,
            "compressed": info.compressed,
            "tensors": info.tensors,
            "sharded": info.sharded,
            "created": info.created,
            "last_used": info.last_used,
            "hits": info.hits,
            "pinned": info.pinned,
        }
        for info in manager.model_cache.list_info()
    ]


def _datasets(manager: CacheManager) -> list[dict[str, Any]]:
    keep = ("dataset_id", "id", "batches", "total", "complete", "bytes", "created", "used", "uses", "in_use")
    return [{k: ns.get(k) for k in keep} for ns in manager.training_cache.namespaces()]


def _scratch(manager: CacheManager) -> dict[str, Any]:
    system = manager.system_cache
    items = system.items()
    return {
        "items": len(items),
        "files": sum(1 for item in items if item["kind"] == "file"),
        "dirs": sum(1 for item in items if item["kind"] == "dir"),
        "bytes": sum(int(item["bytes"] or 0) for item in items),
        "max_bytes": int(system.stats.max_bytes),
        "in_use": sum(1 for item in items if item["in_use"]),
        "oldest_age": max((float(item["age"]) for item in items), default=None),
        "max_age": float(manager.config.system_cache.max_age),
    }


def stats_payload(manager: CacheManager, *, started: float, actions: bool, refresh: float) -> dict[str, Any]:
    """Everything the page shows, read now: counters per store, models, datasets, scratch, advice."""
    from llamahome import __version__

    monitor = monitor_of(manager)
    metrics = monitor.metrics()
    caches = {}
    for label, stats in metrics["caches"].items():
        cache, tier = label.split("/", 1)
        caches[label] = {"cache": cache, "tier": tier, **{k: v for k, v in stats.items() if k != "name"}}
    return {
        "time": time.time(),
        "version": __version__,
        "uptime": time.time() - started,
        "refresh": refresh,
        "actions": actions,
        "hit_rate": metrics["hit_rate"],
        "memory_usage": metrics["memory_usage"],
        "eviction_count": metrics["eviction_count"],
        "manager": {k: v for k, v in metrics["manager"].items() if k != "name"},
        "caches": caches,
        "models": _models(manager),
        "datasets": _datasets(manager),
        "scratch": _scratch(manager),
        "filesystems": metrics["filesystems"],
        "recommendations": [
            {
                "severity": r.severity,
                "cache": r.cache,
                "message": r.message,
                "setting": r.setting,
                "current": r.current,
                "suggested": r.suggested,
            }
            for r in monitor.recommendations()
        ],
    }


def after(ring: SnapshotRing, since: float | None) -> list[Snapshot]:
    """Snapshots taken strictly after ``since`` (all when None): a poller passes the last time it has."""
    points = ring.to_list()
    return points if since is None else [p for p in points if p.time > since]


def monitor_history(manager: CacheManager, since: float | None) -> dict[str, Any]:
    """The manager monitor's own snapshots (taken while the manager is started) in the history shape."""
    monitor = manager.monitor
    if not isinstance(monitor, CacheMonitor):  # a manager without a monitor keeps no history of its own
        return history_payload([], None, "monitor")
    rows = [Snapshot(p.time, compact(p.data)) for p in after(monitor.history, since)]
    return history_payload(rows, monitor.snapshot_interval, "monitor")


_MONITORS: weakref.WeakKeyDictionary[CacheManager, CacheMonitor] = weakref.WeakKeyDictionary()
_MONITORS_LOCK = threading.Lock()


def monitor_of(manager: CacheManager) -> CacheMonitor:
    """The manager's own CacheMonitor, or one the dashboard keeps for a manager made without a monitor."""
    monitor = manager.monitor
    if isinstance(monitor, CacheMonitor):
        return monitor
    with _MONITORS_LOCK:
        found = _MONITORS.get(manager)
        if found is None:
            found = _MONITORS[manager] = CacheMonitor(manager, snapshot_interval=None)
        return found

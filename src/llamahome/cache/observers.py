"""What a CacheManager knows of the objects that watch it: two small protocols, so the cache never imports
the monitoring package that is built on top of it.

``llamahome.monitoring`` (``CacheMetricsCollector``, ``CacheMonitor``) implements them; any other object with
the same methods works too.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ManagerObserver", "SnapshotRecorder"]


@runtime_checkable
class ManagerObserver(Protocol):
    """Watches one manager. The manager calls ``bind(self)`` when the observer is passed to it or assigned as
    one of its attributes (the seed's ``self.metrics = CacheMetricsCollector()``); ``bind`` raises when the
    observer already watches another manager."""

    def bind(self, manager: Any) -> None: ...

    @property
    def bound(self) -> bool: ...


@runtime_checkable
class SnapshotRecorder(ManagerObserver, Protocol):
    """An observer that keeps a history: a started manager calls ``record_snapshot()`` every
    ``snapshot_interval`` seconds (None or 0: never)."""

    snapshot_interval: float | None

    def record_snapshot(self) -> None: ...

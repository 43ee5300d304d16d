"""CacheMetricsCollector: the seed's hit rate, memory usage and eviction count, read from a manager's stats.

How a collector finds its manager. The seed writes::

    class MonitoredCacheManager(CacheManager):
        def __init__(self, config):
            super().__init__(config)
            self.metrics = CacheMetricsCollector()      # no arguments

A collector made without a manager is *unbound*. Assigning an unbound collector as an attribute of a
``CacheManager`` binds it to that manager (``CacheManager.__setattr__`` does it), so the line above observes
its own manager, explicitly and without globals. ``CacheMetricsCollector(manager)`` binds at once; using an
unbound collector raises :class:`~llamahome.errors.CacheError` saying how to bind it. A collector stays bound
to its first manager: assigning it to a second one raises rather than silently switching.

Every number is read from the stores' :class:`~llamahome.cache.stats.CacheStats` when asked: collecting costs
nothing on the cache's hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamahome.errors import CacheError

if TYPE_CHECKING:
    from llamahome.cache.manager import CacheManager

__all__ = ["CacheMetricsCollector", "Bindable"]


class Bindable:
    """Mixin for monitoring objects that a ``CacheManager`` binds to itself when assigned as its attribute."""

    _manager: CacheManager | None = None

    @property
    def manager(self) -> CacheManager:
        """The manager observed; raises CacheError while unbound."""
        if self._manager is None:
            raise CacheError(
                f"This {type(self).__name__} is not bound to a cache manager. Pass one "
                f"({type(self).__name__}(manager)) or assign it as an attribute of a CacheManager "
                f"(self.metrics = {type(self).__name__}() inside the manager's __init__)."
            )
        return self._manager

    @property
    def bound(self) -> bool:
        return self._manager is not None

    def bind(self, manager: CacheManager) -> None:
        """Observe ``manager``. Binding again to the same manager is a no-op; to another one, an error."""
        if self._manager is manager:
            return
        if self._manager is not None:
            raise CacheError(
                f"This {type(self).__name__} already observes another cache manager; create one per manager."
            )
        self._manager = manager


class CacheMetricsCollector(Bindable):
    """Reads a manager's numbers: hit rate, memory use, evictions, and a per-cache snapshot.

    - ``get_hit_rate()``: the share of the manager's ``get``/``get_or_set`` lookups that found a value, 0..1.
    - ``get_memory_usage()``: bytes held by the memory tier now.
    - ``get_eviction_count()``: entries evicted so far across all of the manager's caches.
    """

    def __init__(self, manager: CacheManager | None = None) -> None:
        if manager is not None:
            self.bind(manager)

    async def get_hit_rate(self) -> float:
        return self.hit_rate()

    async def get_memory_usage(self) -> int:
        return self.memory_usage()

    async def get_eviction_count(self) -> int:
        return self.eviction_count()

    async def get_snapshot(self) -> dict[str, Any]:
        return self.snapshot()

    # Synchronous twins, for code without a loop (CLI, Prometheus scrape thread).
    def hit_rate(self) -> float:
        return self.manager.stats.hit_rate

    def memory_usage(self) -> int:
        return int(self.manager.memory.stats.bytes)

    def eviction_count(self) -> int:
        return sum(int(store.stats.evictions) for _, _, store in self.manager.store_labels())

    def snapshot(self) -> dict[str, Any]:
        """``{"manager": {...}, "caches": {"cache/memory": {...}, ...}, "hit_rate", "memory_usage",
        "eviction_count"}``: every store's stats as plain dicts, keyed ``<cache>/<tier>``."""
        manager = self.manager
        caches = {f"{cache}/{tier}": store.stats.snapshot() for cache, tier, store in manager.store_labels()}
        return {
            "hit_rate": self.hit_rate(),
            "memory_usage": self.memory_usage(),
            "eviction_count": self.eviction_count(),
            "manager": manager.stats.snapshot(),
            "caches": caches,
        }

    def __repr__(self) -> str:
        state = "bound" if self.bound else "unbound"
        return f"<CacheMetricsCollector {state}>"

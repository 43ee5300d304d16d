"""Counters every store owns: the one source that monitoring, Prometheus and the CLI read."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["CacheStats", "CleanupReport"]


@dataclass
class CacheStats:
    """What a store did and what it holds now.

    Counters only grow; ``bytes``/``entries`` are the current holdings and ``max_bytes`` the bound.
    Stores update these under their own lock (``record_*`` helpers are for code without one).
    ``raw_bytes``/``stored_bytes`` add up value sizes before/after compression on writes, so the
    compression ratio can be judged.
    """

    name: str = ""
    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    evictions: int = 0
    expirations: int = 0
    corrupt: int = 0
    errors: int = 0
    bytes: int = 0
    entries: int = 0
    max_bytes: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    #: Keys whose local copies were dropped because another machine changed them (tiers with a network tier).
    invalidations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    _COUNTERS = ("hits", "misses", "sets", "deletes", "evictions", "expirations", "corrupt", "errors", "invalidations")

    @property
    def gets(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """Share of gets that found a value, 0..1 (0.0 before the first get)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def compression_ratio(self) -> float:
        """Stored / raw bytes over all writes (1.0 when nothing was written or nothing compressed)."""
        return self.stored_bytes / self.raw_bytes if self.raw_bytes else 1.0

    def add(self, counter: str, amount: int = 1) -> None:
        """Thread-safe increment for code paths that do not hold the store's lock."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + amount)

    def reset_counters(self) -> None:
        """Zero the counters (not the holdings)."""
        with self._lock:
            for name in self._COUNTERS:
                setattr(self, name, 0)
            self.raw_bytes = self.stored_bytes = 0

    def snapshot(self) -> dict[str, Any]:
        """A plain dict copy, safe to hand to other threads, JSON or Prometheus."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        data["hit_rate"] = self.hit_rate
        data["compression_ratio"] = self.compression_ratio
        return data

    @classmethod
    def combine(cls, name: str, parts: list[CacheStats]) -> CacheStats:
        """Sum several stores' stats (used by TieredCache and the manager)."""
        total = cls(name=name)
        for part in parts:
            for f in fields(cls):
                if f.name in ("name", "_lock"):
                    continue
                setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
        return total


@dataclass
class CleanupReport:
    """What one ``cleanup()`` pass removed or repaired.

    The counters are always totals: a report over several caches (``TieredCache``, ``CacheManager``) is
    built with :meth:`combine`, which sums its parts into its own counters and keeps the parts for detail.
    """

    cache: str = ""
    expired: int = 0
    evicted: int = 0
    orphans: int = 0
    missing: int = 0
    corrupt: int = 0
    bytes_freed: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    parts: list[CleanupReport] = field(default_factory=list)

    _TOTALS = ("expired", "evicted", "orphans", "missing", "corrupt", "bytes_freed")

    @classmethod
    def combine(cls, cache: str, parts: list[CleanupReport]) -> CleanupReport:
        """A report whose counters are the sums of ``parts`` (kept in ``.parts``)."""
        report = cls(cache=cache, parts=list(parts))
        for name in cls._TOTALS:
            setattr(report, name, sum(getattr(p, name) for p in parts))
        return report

    @property
    def removed(self) -> int:
        """Entries and files removed or repaired."""
        return self.expired + self.evicted + self.orphans + self.missing + self.corrupt

    @property
    def total_bytes_freed(self) -> int:
        return self.bytes_freed

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "cache": self.cache,
            "expired": self.expired,
            "evicted": self.evicted,
            "orphans": self.orphans,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "bytes_freed": self.bytes_freed,
            "removed": self.removed,
        }
        if self.details:
            data["details"] = dict(self.details)
        if self.parts:
            data["parts"] = [p.as_dict() for p in self.parts]
        return data

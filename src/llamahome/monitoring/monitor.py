"""CacheMonitor: metrics plus concrete advice ("raise cache.memory.size to about 1,536 MB") derived from stats.

A monitor observes one manager (bound like :class:`CacheMetricsCollector`: pass it, assign it as a manager
attribute, or hand it to ``CacheManager(config, monitor=...)``), keeps a ring of periodic snapshots for a
dashboard, and turns the numbers into recommendations that name the YAML setting to change and a value.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamahome.resources.probes import DiskInfo, MemoryInfo, disk_probe, memory_probe

from .collector import Bindable, CacheMetricsCollector
from .snapshots import SnapshotRing

if TYPE_CHECKING:
    from llamahome.cache.base import MaintainedCache
    from llamahome.cache.manager import CacheManager

__all__ = ["CacheMonitor", "Recommendation", "Thresholds"]

MB = 1024 * 1024


@dataclass(frozen=True)
class Recommendation:
    """One piece of advice: what is wrong, which setting to change (YAML path) and to what."""

    severity: str  # "info" | "warning" | "critical"
    cache: str  # "cache/memory", "cache/disk", "model_cache/disk", ...
    message: str
    setting: str | None = None
    current: Any = None
    suggested: Any = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Thresholds:
    """When advice is given. The defaults suit caches that have seen at least a few hundred requests."""

    min_gets: int = 100  # no hit-rate advice from fewer lookups than this
    low_hit_rate: float = 0.5
    many_evictions: float = 0.1  # evictions per set
    poor_compression: float = 0.9  # stored/raw above this: compression does not pay
    min_compressed_bytes: int = 1 * MB  # no compression advice before this much was written
    tier_full: float = 0.9  # bytes/max_bytes
    fs_nearly_full: float = 0.9  # filesystem used fraction
    corrupt_share: float = 0.01  # corrupt entries per get
    min_corrupt: int = 3
    headroom: float = 1.25  # suggested memory = estimated working set x headroom
    max_share_of_available: float = 0.5  # never suggest more than this share of available memory


def _mb(value_mb: float) -> str:
    """Megabytes for a message: whole numbers from 10 MB up, two significant digits below (a 256 KB tier is
    "0.25 MB", not "0 MB")."""
    return f"{value_mb:,.0f}" if value_mb >= 10 or value_mb == 0 else f"{value_mb:.2g}"


def _round_up_mb(value_mb: float, step: int = 64) -> int:
    return int(max(step, math.ceil(value_mb / step) * step))


class CacheMonitor(Bindable):
    """Metrics, recommendations and a snapshot history for one manager.

    ``snapshot_interval`` (seconds, None to disable) is how often a started manager records a snapshot into
    ``history`` (a :class:`SnapshotRing` of ``history_size`` entries; the default keeps six hours at one a
    minute, about 4 KB each, 1.3 MB in all). Probes are injectable for tests.
    """

    def __init__(
        self,
        manager: CacheManager | None = None,
        *,
        snapshot_interval: float | None = 60.0,
        history_size: int = 360,
        thresholds: Thresholds | None = None,
        disk_probe: Callable[[str], DiskInfo] = disk_probe,
        memory_probe: Callable[[], MemoryInfo] = memory_probe,
    ) -> None:
        self.collector = CacheMetricsCollector()
        self.snapshot_interval = snapshot_interval
        self.history = SnapshotRing(history_size)
        self.thresholds = thresholds or Thresholds()
        self._disk_probe = disk_probe
        self._memory_probe = memory_probe
        if manager is not None:
            self.bind(manager)

    def bind(self, manager: CacheManager) -> None:
        super().bind(manager)
        self.collector.bind(manager)

    # --- metrics ------------------------------------------------------------------------------------
    async def get_metrics(self) -> dict[str, Any]:
        """The collector's snapshot plus the filesystems under the disk caches (probed in a thread)."""
        return await asyncio.to_thread(self.metrics)

    def metrics(self) -> dict[str, Any]:
        """Synchronous :meth:`get_metrics`."""
        data = self.collector.snapshot()
        data["filesystems"] = {label: _disk_dict(info) for label, info in self._filesystems().items()}
        return data

    def record_snapshot(self) -> None:
        """Append the collector's snapshot to ``history`` (the manager schedules this when started)."""
        self.history.append(self.collector.snapshot())

    # --- recommendations ----------------------------------------------------------------------------
    async def get_cache_recommendations(self) -> list[Recommendation]:
        """Advice derived from the stats, most severe first; empty when nothing needs changing."""
        return await asyncio.to_thread(self.recommendations)

    def recommendations(self) -> list[Recommendation]:
        """Synchronous :meth:`get_cache_recommendations`."""
        manager = self.manager
        found: list[Recommendation] = []
        found += self._memory_size_advice(manager)
        for cache, tier, store in manager.store_labels():
            label = f"{cache}/{tier}"
            found += self._compression_advice(manager, cache, tier, label, store)
            found += self._bound_advice(cache, tier, label, store)
            found += self._corruption_advice(label, store)
        found += self._filesystem_advice(manager)
        order = {"critical": 0, "warning": 1, "info": 2}
        return sorted(found, key=lambda r: order.get(r.severity, 3))

    def _memory_size_advice(self, manager: CacheManager) -> list[Recommendation]:
        t = self.thresholds
        stats = manager.memory.stats
        gets = stats.hits + stats.misses
        if gets < t.min_gets or stats.hit_rate >= t.low_hit_rate:
            return []
        current_mb = stats.max_bytes / MB
        if stats.evictions < max(1, t.many_evictions * max(stats.sets, 1)):
            return [
                Recommendation(
                    "info",
                    "cache/memory",
                    f"The memory tier finds only {stats.hit_rate:.0%} of lookups but evicts little: keys rarely "
                    "repeat, so a larger cache would not help. Check that keys are stable (memoize builds them "
                    "from arguments) before changing cache.memory.size.",
                )
            ]
        # Two estimates of the working set, in entries; take the smaller. (1) Every evicted entry was once
        # resident, so at most entries + evictions distinct keys were seen (a key evicted twice counts twice,
        # so cyclic scans overestimate). (2) Under uniform access an LRU of C entries hits about C/W of the
        # time, so W ~ C / hit_rate (meaningless at a zero hit rate).
        avg_entry = stats.bytes / stats.entries if stats.entries else (stats.stored_bytes / max(stats.sets, 1))
        seen = stats.entries + stats.evictions
        if stats.hit_rate > 0 and stats.entries:
            seen = min(seen, math.ceil(stats.entries / stats.hit_rate))
        working_set_mb = avg_entry * seen / MB
        suggested = _round_up_mb(max(working_set_mb * t.headroom, current_mb * 2 if working_set_mb <= current_mb else 0))
        message = (
            f"The memory tier finds only {stats.hit_rate:.0%} of lookups and has evicted {stats.evictions:,} "
            f"entries: the working set (about {seen:,} entries of "
            f"{avg_entry / 1024:,.1f} KB, ~{_mb(working_set_mb)} MB) does not fit in {_mb(current_mb)} MB. "
            f"Raise cache.memory.size to about {suggested:,} MB."
        )
        try:
            available_mb = self._memory_probe().available / MB
        except OSError:
            available_mb = math.inf
        cap = available_mb * t.max_share_of_available
        if suggested > cap and math.isfinite(cap):
            message += (
                f" That is more than {t.max_share_of_available:.0%} of the {available_mb:,.0f} MB available; "
                "lean on the disk tier (raise cache.disk.size) or add memory instead."
            )
        return [Recommendation("warning", "cache/memory", message, "cache.memory.size", round(current_mb, 1), suggested)]

    def _compression_advice(
        self, manager: CacheManager, cache: str, tier: str, label: str, store: MaintainedCache
    ) -> list[Recommendation]:
        t = self.thresholds
        enabled, setting = _compression_setting(manager, cache, tier, store)
        stats = store.stats
        if not enabled or stats.raw_bytes < t.min_compressed_bytes or stats.compression_ratio <= t.poor_compression:
            return []
        message = (
            f"Compression in {label} saves only {max(0.0, 1 - stats.compression_ratio):.0%} "
            f"({stats.raw_bytes / MB:,.1f} MB written as {stats.stored_bytes / MB:,.1f} MB) and costs CPU on every "
            f"read; turn it off ({setting}: false)."
        )
        return [Recommendation("info", label, message, setting, True, False)]

    def _bound_advice(self, cache: str, tier: str, label: str, store: MaintainedCache) -> list[Recommendation]:
        t = self.thresholds
        stats = store.stats
        if tier == "memory" or not stats.max_bytes or stats.bytes < t.tier_full * stats.max_bytes:
            return []
        if stats.evictions == 0:
            return []
        current_mb = stats.max_bytes / MB
        suggested = _round_up_mb(current_mb * 1.5, 256)
        setting = "cache.disk.size" if cache == "cache" else f"{cache}.size"
        message = (
            f"{label} is {stats.bytes / stats.max_bytes:.0%} full ({_mb(stats.bytes / MB)} of {_mb(current_mb)} MB) "
            f"and has evicted {stats.evictions:,} entries; raise {setting} to about {suggested:,} MB if the "
            "filesystem has room."
        )
        return [Recommendation("warning", label, message, setting, round(current_mb, 1), suggested)]

    def _corruption_advice(self, label: str, store: MaintainedCache) -> list[Recommendation]:
        t = self.thresholds
        stats = store.stats
        gets = stats.hits + stats.misses
        if stats.corrupt < t.min_corrupt or stats.corrupt < t.corrupt_share * max(gets, 1):
            return []
        message = (
            f"{stats.corrupt:,} entries in {label} failed their checksum (served as misses). Check the disk "
            "and filesystem for errors (dmesg, fsck, SMART); run a cleanup pass to drop damaged entries, or clear "
            "the cache if the count keeps growing."
        )
        return [Recommendation("critical", label, message)]

    def _filesystem_advice(self, manager: CacheManager) -> list[Recommendation]:
        t = self.thresholds
        found: list[Recommendation] = []
        labels = {f"{cache}/{tier}": store for cache, tier, store in manager.store_labels()}
        for label, info in self._filesystems().items():
            store = labels.get(label)
            growth = max(0, store.stats.max_bytes - store.stats.bytes) if store is not None else 0
            if info.used_fraction < t.fs_nearly_full and info.free >= growth:
                continue
            cache = label.split("/", 1)[0]
            setting = "cache.disk.size" if cache == "cache" else f"{cache}.size"
            suggested = None
            if store is not None and info.free < growth:
                suggested = max(0, int((store.stats.bytes + info.free * 0.8) / MB))
            message = (
                f"The filesystem under {info.path} ({label}) is {info.used_fraction:.0%} full with "
                f"{info.free / MB:,.0f} MB free"
            )
            if growth > info.free:
                message += (
                    f", less than the {growth / MB:,.0f} MB the cache may still grow; free space or lower "
                    f"{setting} to about {suggested:,} MB."
                )
            else:
                message += "; free space before the cache's writes start failing."
            found.append(Recommendation("critical" if info.free < growth else "warning", label, message, setting, None, suggested))
        return found

    def _filesystems(self) -> dict[str, DiskInfo]:
        if self._manager is None:
            return {}
        result: dict[str, DiskInfo] = {}
        for cache, tier, store in self._manager.store_labels():
            path = getattr(store, "path", None) or getattr(store, "root", None)
            if path is None:
                continue
            try:
                result[f"{cache}/{tier}"] = self._disk_probe(os.fspath(path))
            except OSError:
                continue
        return result

    def __repr__(self) -> str:
        return f"<CacheMonitor {'bound' if self.bound else 'unbound'} history={len(self.history)}>"


def _compression_setting(manager: CacheManager, cache: str, tier: str, store: MaintainedCache) -> tuple[bool, str]:
    """Whether ``store`` compresses, and the YAML setting that controls it."""
    if cache == "cache":
        setting = "cache.memory.compression"
    else:
        setting = f"{cache}.compression"
    enabled = getattr(store, "compression", None)
    if enabled is None:
        config = getattr(manager, "config", None)
        try:
            block = config.cache.memory if cache == "cache" else getattr(config, cache)  # type: ignore[union-attr]
            enabled = getattr(block, "compression", False)
        except AttributeError:
            enabled = False
    return bool(enabled), setting


def _disk_dict(info: DiskInfo) -> dict[str, Any]:
    return {"path": info.path, "total": info.total, "used": info.used, "free": info.free}


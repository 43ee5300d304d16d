"""Prometheus exposition for a CacheManager: a custom collector that reads the stats at scrape time.

    from llamahome.monitoring import serve_metrics
    server = serve_metrics(manager, port=9464)        # http://127.0.0.1:9464/metrics
    ...
    server.close()

Nothing is counted twice and nothing runs on the cache's hot path: the stores keep their
:class:`~llamahome.cache.stats.CacheStats` anyway, and each scrape turns them into metric families.
Every series carries ``cache`` (the YAML block: ``cache``, ``model_cache``, ``training_cache``,
``system_cache``, or ``manager`` for the manager's own lookups) and ``tier`` (``memory``, ``disk``,
``network``, or ``all``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from llamahome.cache.manager import CacheManager
    from llamahome.cache.stats import CacheStats

__all__ = ["CacheCollector", "MetricsServer", "make_registry", "serve_metrics", "render_metrics"]

LABELS = ["cache", "tier"]

# (stats field, metric name without prefix, help) — counters get "_total" appended by prometheus_client.
_COUNTERS = [
    ("hits", "hits", "Lookups that found a value."),
    ("misses", "misses", "Lookups that found nothing (expired and damaged entries included)."),
    ("sets", "sets", "Values written."),
    ("deletes", "deletes", "Entries deleted on request."),
    ("evictions", "evictions", "Entries evicted to keep the size bound."),
    ("expirations", "expirations", "Entries dropped because their ttl or max age passed."),
    ("corrupt", "corrupt_entries", "Entries that failed their checksum (served as misses)."),
    ("errors", "errors", "Operations that failed in the store (I/O, network)."),
    ("raw_bytes", "written_raw_bytes", "Bytes of values written, before compression."),
    ("stored_bytes", "written_stored_bytes", "Bytes of values written, after compression."),
]
_GAUGES = [
    ("bytes", "bytes", "Bytes the cache holds now."),
    ("entries", "entries", "Entries the cache holds now."),
    ("max_bytes", "max_bytes", "The cache's size bound in bytes."),
]


class CacheCollector(Collector):
    """A ``prometheus_client`` collector over one manager's stats (``llamahome_cache_*`` metrics)."""

    def __init__(self, manager: CacheManager, prefix: str = "llamahome_cache") -> None:
        self.manager = manager
        self.prefix = prefix

    def _rows(self) -> list[tuple[str, str, CacheStats]]:
        rows = [(cache, tier, store.stats) for cache, tier, store in self.manager.store_labels()]
        rows.append(("manager", "all", self.manager.stats))
        return rows

    def collect(self) -> Iterator[Metric]:
        rows = [(cache, tier, stats.snapshot()) for cache, tier, stats in self._rows()]
        for field, name, doc in _COUNTERS:
            family = CounterMetricFamily(f"{self.prefix}_{name}", doc, labels=LABELS)
            for cache, tier, snap in rows:
                family.add_metric([cache, tier], float(snap[field]))
            yield family
        for field, name, doc in _GAUGES:
            gauge = GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=LABELS)
            for cache, tier, snap in rows:
                gauge.add_metric([cache, tier], float(snap[field]))
            yield gauge
        ratio = GaugeMetricFamily(f"{self.prefix}_hit_ratio", "Hits / (hits + misses), 0..1.", labels=LABELS)
        comp = GaugeMetricFamily(
            f"{self.prefix}_compression_ratio", "Stored / raw bytes over all writes (1 = no saving).", labels=LABELS
        )
        for cache, tier, snap in rows:
            ratio.add_metric([cache, tier], float(snap["hit_rate"]))
            comp.add_metric([cache, tier], float(snap["compression_ratio"]))
        yield ratio
        yield comp

    def describe(self) -> Iterator[Metric]:
        # Declared so registering twice with one registry fails loudly instead of exporting duplicates.
        for _, name, doc in _COUNTERS:
            yield CounterMetricFamily(f"{self.prefix}_{name}", doc, labels=LABELS)
        for _, name, doc in _GAUGES:
            yield GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=LABELS)
        yield GaugeMetricFamily(f"{self.prefix}_hit_ratio", "", labels=LABELS)
        yield GaugeMetricFamily(f"{self.prefix}_compression_ratio", "", labels=LABELS)


def make_registry(manager: CacheManager) -> CollectorRegistry:
    """A fresh registry holding only this manager's collector (not the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CacheCollector(manager))
    return registry


def render_metrics(manager: CacheManager) -> bytes:
    """The text exposition of this manager's metrics, as a scrape would return it."""
    return generate_latest(make_registry(manager))


@dataclass
class MetricsServer:
    """A running metrics endpoint; ``close()`` stops it and joins its thread."""

    server: Any
    thread: threading.Thread
    registry: CollectorRegistry

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(manager: CacheManager, port: int = 9464, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the manager's metrics at ``http://addr:port/metrics`` from a daemon thread.

    Listens on localhost by default; pass ``addr="0.0.0.0"`` to let a remote Prometheus scrape. ``port=0``
    picks a free port (read it back from ``.port``).
    """
    registry = make_registry(manager)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, registry)

"""Monitoring for LlamaHome Cache: the seed's metrics collector, advice, Prometheus export and history.

    from llamahome.monitoring import CacheMetricsCollector, CacheMonitor, serve_metrics

    collector = CacheMetricsCollector(manager)        # or `self.metrics = CacheMetricsCollector()` in a manager
    await collector.get_hit_rate(), await collector.get_memory_usage(), await collector.get_eviction_count()
    for advice in await CacheMonitor(manager).get_cache_recommendations():
        print(advice)
    server = serve_metrics(manager, port=9464)        # Prometheus scrape endpoint; server.close() to stop
    dashboard = serve_dashboard(manager, port=8765)   # live page + JSON API on one port; dashboard.close()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .collector import CacheMetricsCollector
from .monitor import CacheMonitor, Recommendation, Thresholds
from .snapshots import Snapshot, SnapshotRing

if TYPE_CHECKING:  # pragma: no cover
    from .dashboard import DashboardServer, serve_dashboard
    from .prometheus import CacheCollector, MetricsServer, make_registry, render_metrics, serve_metrics

# prometheus_client is imported on first use, so a manager that never exports metrics never loads it.
_PROMETHEUS = {"CacheCollector", "MetricsServer", "make_registry", "render_metrics", "serve_metrics"}
# The dashboard (an HTTP server and its assets) is imported on first use too.
_DASHBOARD = {"DashboardServer", "serve_dashboard"}

__all__ = [
    "CacheCollector",
    "CacheMetricsCollector",
    "CacheMonitor",
    "DashboardServer",
    "MetricsServer",
    "Recommendation",
    "Snapshot",
    "SnapshotRing",
    "Thresholds",
    "make_registry",
    "render_metrics",
    "serve_dashboard",
    "serve_metrics",
]


def __getattr__(name: str) -> Any:
    if name in _PROMETHEUS:
        value = getattr(importlib.import_module(".prometheus", __name__), name)
        globals()[name] = value
        return value
    if name in _DASHBOARD:
        value = getattr(importlib.import_module(".dashboard", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llamahome.monitoring' has no attribute {name!r}")

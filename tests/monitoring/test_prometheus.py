"""Prometheus: the exposition parses with prometheus_client's own parser and carries the stats' values."""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llamahome.cache import CacheManager
from llamahome.monitoring import CacheCollector, make_registry, render_metrics, serve_metrics


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, sample.labels["cache"], sample.labels["tier"])] = sample.value
    return found


def test_exposition_parses_and_matches_the_stats(manager: CacheManager) -> None:
    manager.set_sync("a", b"x" * 100)
    manager.get_sync("a")
    manager.get_sync("missing")
    text = generate_latest(make_registry(manager)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"llamahome_cache_hits", "llamahome_cache_misses", "llamahome_cache_evictions", "llamahome_cache_bytes",
            "llamahome_cache_hit_ratio", "llamahome_cache_max_bytes"} <= set(families)
    assert families["llamahome_cache_hits"].type == "counter"
    assert families["llamahome_cache_bytes"].type == "gauge"
    samples = _samples(text)
    assert samples[("llamahome_cache_hits_total", "cache", "memory")] == manager.memory.stats.hits
    assert samples[("llamahome_cache_bytes", "cache", "memory")] == manager.memory.stats.bytes
    assert samples[("llamahome_cache_max_bytes", "cache", "disk")] == manager.disk.stats.max_bytes
    assert samples[("llamahome_cache_hit_ratio", "manager", "all")] == 0.5
    assert samples[("llamahome_cache_entries", "model_cache", "disk")] == manager.model_cache.stats.entries
    assert {tier for (_, _, tier) in samples} == {"memory", "disk", "all"}
    assert render_metrics(manager).decode() .count("llamahome_cache_hits_total{") == len(manager.caches) + 1


def test_collector_reads_at_scrape_time(manager: CacheManager) -> None:
    collector = CacheCollector(manager)
    before = {m.name: m for m in collector.collect()}["llamahome_cache_sets"]
    manager.set_sync("k", "v")
    after = {m.name: m for m in collector.collect()}["llamahome_cache_sets"]
    value = lambda fam: next(s.value for s in fam.samples if s.labels == {"cache": "cache", "tier": "memory"})  # noqa: E731
    assert value(after) == value(before) + 1


def test_serve_metrics_on_a_free_port(manager: CacheManager) -> None:
    before = threading.active_count()
    server = serve_metrics(manager, port=0)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=5) as response:
            text = response.read().decode()
        assert ("llamahome_cache_hits_total", "cache", "memory") in _samples(text)
    finally:
        server.close()
    assert threading.active_count() == before

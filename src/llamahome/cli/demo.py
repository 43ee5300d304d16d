"""``llamahome cache demo``: a short LLM-serving workload on the default tiers, and what the cache did.

The demo puts a memory tier in front of a disk tier (``TieredCache(MemoryCache, DiskCache)``), replays a
Zipf-distributed stream of requests for responses, embeddings and tokenizations (get; on a miss, compute
and set), checks every hit against a fresh computation, and prints the hit rate per tier, bytes held,
evictions and latencies. The memory tier is deliberately small (512 KB) so eviction and disk hits show up.

The disk tier lives in a temporary directory removed afterwards, or under ``--dir`` (kept, so that
``llamahome cache stats --dir DIR`` can inspect it and a second run starts warm).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from llamahome.cache.base import MISSING, Store
from llamahome.cache.config import CacheConfig
from llamahome.cache.disk import DiskCache
from llamahome.cache.memory import MemoryCache
from llamahome.cache.tiered import TieredCache
from llamahome.cache.units import MIB, format_bytes

from .params import SIZE
from .workload import Workload, values_equal

__all__ = ["DEMO_DISK_MB", "DEMO_MEMORY_MB", "Tiers", "demo", "open_tiers", "run_workload"]

#: Demo tier sizes when no --config is given: the working set (~5 MB) overflows memory, fits on disk.
DEMO_MEMORY_MB = 0.5
DEMO_DISK_MB = 64.0


def _disk(cfg: CacheConfig, directory: Path, disk_mb: float) -> DiskCache:
    # The YAML has one compression switch, under cache.memory; the disk tier follows it, as in CacheManager.
    return DiskCache(directory, size=disk_mb, policy="lru", compression=cfg.cache.memory.compression)


@dataclass
class Tiers:
    """What the demo talks to: ``front`` (memory -> disk) answers get/set; ``memory``/``disk`` are its tiers."""

    front: TieredCache
    memory: MemoryCache
    disk: DiskCache
    description: str

    def named(self) -> list[tuple[str, Store]]:
        return [("memory", self.memory), ("disk", self.disk)]

    def close(self) -> None:
        self.front.close()  # the tiered cache owns and closes its tiers


def open_tiers(cfg: CacheConfig, directory: Path, memory_mb: float, disk_mb: float) -> Tiers:
    """A memory tier in front of a disk tier, built from ``cfg`` as CacheManager builds them."""
    policy, compression = cfg.cache.memory.type, cfg.cache.memory.compression
    memory = MemoryCache(size=memory_mb, policy=policy, compression=compression)
    try:
        disk = _disk(cfg, directory, disk_mb)
    except BaseException:
        memory.close()
        raise
    packed = ", compressed" if compression else ""
    memory_text = f"memory {format_bytes(memory_mb * MIB)} ({policy}{packed})"
    description = f"{memory_text} -> disk {format_bytes(disk_mb * MIB)} in {directory}"
    return Tiers(TieredCache(memory, disk), memory, disk, description)


def run_workload(tiers: Tiers, workload: Workload) -> dict[str, Any]:
    """Replay ``workload`` through ``tiers.front`` (get; on a miss compute and set); return the figures."""
    # Items already on disk (a kept --dir from an earlier run) can hit on their first request: the ceiling
    # on the hit rate counts only the items the cache starts without.
    absent = sum(1 for request in workload.first_requests() if request.key not in tiers.disk)
    memory = tiers.memory
    latencies: dict[str, list[int]] = {"memory_hit": [], "disk_hit": [], "miss": [], "set": []}
    hits = misses = mismatches = verified = 0
    cache_ns = 0
    clock = time.perf_counter_ns
    started = clock()
    for request in workload:
        # Read stats afresh each time: a MemoryCache folds its lock-free hits into stats only when read.
        memory_hits = memory.stats.hits
        t0 = clock()
        value = tiers.front.get(request.key, MISSING)
        elapsed = clock() - t0
        cache_ns += elapsed
        if value is MISSING:
            misses += 1
            latencies["miss"].append(elapsed)
            fresh = workload.compute(request)
            t0 = clock()
            tiers.front.set(request.key, fresh)
            elapsed = clock() - t0
            cache_ns += elapsed
            latencies["set"].append(elapsed)
            continue
        hits += 1
        latencies["memory_hit" if memory.stats.hits > memory_hits else "disk_hit"].append(elapsed)
        verified += 1
        if not values_equal(value, workload.compute(request)):
            mismatches += 1
    wall = (clock() - started) / 1e9
    requests = hits + misses
    tier_figures = []
    for name, store in tiers.named():
        stats = store.stats
        tier_figures.append(
            {
                "name": name,
                "hits": stats.hits,
                "bytes": stats.bytes,
                "max_bytes": stats.max_bytes,
                "entries": stats.entries,
                "evictions": stats.evictions,
                "sets": stats.sets,
            }
        )
    memory_served = len(latencies["memory_hit"])
    return {
        "setup": tiers.description,
        "requests": requests,
        "items": workload.items,
        "distinct_items": workload.distinct(),
        "skew": workload.skew,
        "seed": workload.seed,
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / requests if requests else 0.0,
        "warm_items": workload.distinct() - absent,
        "best_hit_rate": 1 - absent / requests if requests else 0.0,
        "memory_hit_rate": memory_served / requests if requests else 0.0,
        "disk_hit_rate": len(latencies["disk_hit"]) / requests if requests else 0.0,
        "verified": verified,
        "mismatches": mismatches,
        "tiers": tier_figures,
        "wall_seconds": wall,
        "cache_seconds": cache_ns / 1e9,
        "ops_per_second": (requests + len(latencies["set"])) / (cache_ns / 1e9) if cache_ns else 0.0,
        "median_us": {k: statistics.median(v) / 1000 if v else None for k, v in latencies.items()},
        "counts": {k: len(v) for k, v in latencies.items()},
    }


def check_restart(cfg: CacheConfig, directory: Path, disk_mb: float, workload: Workload) -> dict[str, Any]:
    """Reopen the disk tier as a new process would and read back every item the workload touched."""
    disk = _disk(cfg, directory, disk_mb)
    found = checked = wrong = 0
    started = time.perf_counter()
    try:
        for request in workload.first_requests():
            checked += 1
            value = disk.get(request.key, MISSING)
            if value is MISSING:
                continue
            found += 1
            if not values_equal(value, workload.compute(request)):
                wrong += 1
    finally:
        disk.close()
    return {"checked": checked, "found": found, "mismatches": wrong, "seconds": time.perf_counter() - started}


def render(report: dict[str, Any]) -> str:
    """The human-readable summary printed by ``llamahome cache demo``."""
    pct = "{:.1%}".format
    med = report["median_us"]
    lines = [
        f"LlamaHome cache demo: {report['requests']:,} requests for {report['distinct_items']:,} of "
        f"{report['items']:,} items (Zipf s={report['skew']:g}: responses, embeddings, tokenizations)",
        f"  tiers      {report['setup']}",
        f"  hit rate   {pct(report['hit_rate'])} (memory {pct(report['memory_hit_rate'])}, disk "
        f"{pct(report['disk_hit_rate'])}) of a possible {pct(report['best_hit_rate'])}: "
        + (
            f"{report['warm_items']:,} of the {report['distinct_items']:,} items were on disk from an earlier run"
            if report.get("warm_items")
            else "an empty cache misses each item's first request"
        ),
    ]
    for tier in report["tiers"]:
        lines.append(
            f"  {tier['name']:<10} holds {format_bytes(tier['bytes'])} of {format_bytes(tier['max_bytes'])} in "
            f"{tier['entries']:,} entries; {tier['evictions']:,} evictions, {tier['hits']:,} hits"
        )
    timing = [f"{report['ops_per_second']:,.0f} cache ops/s"]
    for label, key in (("memory hit", "memory_hit"), ("disk hit", "disk_hit"), ("miss", "miss"), ("set", "set")):
        if med.get(key) is not None:
            timing.append(f"{label} {_us(med[key])}")
    # The README's sub-microsecond memory hit is measured with compression off; say where the time goes.
    note = "; compression on: each memory hit decodes a stored copy" if "compressed" in report["setup"] else ""
    lines.append("  timings    " + " · ".join(timing) + f" (medians{note})")
    verdict = "all matched" if not report["mismatches"] else f"{report['mismatches']:,} DIFFERED"
    lines.append(f"  checked    {report['verified']:,} hits against a fresh computation: {verdict}")
    restart = report.get("after_restart")
    if restart is not None:
        lines.append(
            f"  restart    a reopened disk tier still holds {restart['found']:,} of {restart['checked']:,} items"
            + (f" ({restart['mismatches']:,} DIFFERED)" if restart["mismatches"] else ", all intact")
        )
    lines.append(f"  took       {report['wall_seconds']:.2f} s ({report['cache_seconds']:.2f} s in the cache)")
    return "\n".join(lines)


def _us(microseconds: float) -> str:
    if microseconds >= 1000:
        return f"{microseconds / 1000:.2f} ms"
    return f"{microseconds:.1f} µs" if microseconds >= 10 else f"{microseconds:.2f} µs"


@contextmanager
def _directory(path: str | None) -> Iterator[Path]:
    if path is not None:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="llamahome-demo-") as tmp:
        yield Path(tmp) / "disk"


@click.command(short_help="Replay an LLM-like workload on memory -> disk; show results.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=str),
    help="Keep the disk tier in this directory (default: a temporary directory, removed afterwards).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Take policies and sizes from this YAML file.",
)
@click.option("--memory-size", type=SIZE, help='Memory tier size, e.g. "1MB" (default 512KB, or the --config value).')
@click.option("--disk-size", type=SIZE, help='Disk tier size, e.g. "64MB" (default 64MB, or the --config value).')
@click.option(
    "--requests", default=6000, show_default=True, type=click.IntRange(1, 10_000_000), help="Requests to replay."
)
@click.option("--items", default=3000, show_default=True, type=click.IntRange(1, 10_000_000), help="Distinct prompts.")
@click.option(
    "--skew", default=1.0, show_default=True, type=click.FloatRange(0.0, 5.0), help="Zipf exponent (0 = uniform)."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (the run is reproducible).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def demo(
    directory: str | None,
    config_file: str | None,
    memory_size: float | None,
    disk_size: float | None,
    requests: int,
    items: int,
    skew: float,
    seed: int,
    as_json: bool,
) -> None:
    """Run a short LLM-serving workload on a memory tier in front of a disk tier and show what happened."""
    cfg = CacheConfig.from_yaml(config_file) if config_file else CacheConfig()
    memory_mb = memory_size or (cfg.cache.memory.size if config_file else DEMO_MEMORY_MB)
    disk_mb = disk_size or (cfg.cache.disk.size if config_file else DEMO_DISK_MB)
    workload = Workload(requests=requests, items=items, skew=skew, seed=seed)
    with _directory(directory) as where:
        tiers = open_tiers(cfg, where, memory_mb, disk_mb)
        try:
            report = run_workload(tiers, workload)
        finally:
            tiers.close()
        report["after_restart"] = check_restart(cfg, where, disk_mb, workload)
    report["directory"] = str(where) if directory is not None else None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render(report))
        if directory is not None:
            click.echo(f"  kept       the disk tier in {where}; inspect it with: llamahome cache stats --dir {where}")
    wrong = report["mismatches"] + report.get("after_restart", {}).get("mismatches", 0)
    if wrong:
        raise click.ClickException(
            f"{wrong} cached values differed from a fresh computation. This is a bug in "
            "LlamaHome Cache; please report it with the command you ran."
        )

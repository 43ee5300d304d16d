"""``llamahome cache serve``: run a CacheManager from a configuration and serve its live dashboard.

    llamahome cache serve --config cache.yaml             # http://127.0.0.1:8765/
    llamahome cache serve --dir ./cache --port 9000
    llamahome cache serve --demo                          # a demo workload in a temporary directory
    LLAMAHOME_DASHBOARD_TOKEN=... llamahome cache serve --host 0.0.0.0 --config cache.yaml

The manager here is this process's own: holdings (bytes, entries, models, datasets, scratch files) are read
from the shared directories and so include every process's work, but hit and miss counters count only this
process's lookups. To watch an application's hit rate live, call ``serve_dashboard(manager)`` inside it; or
pass ``--demo`` to drive a workload here and watch it.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from llamahome.cache import CacheConfig
from llamahome.errors import CacheError

__all__ = ["demo_load", "serve"]

#: Tier sizes of ``--demo`` when no configuration is given: the working set overflows memory, fits on disk.
DEMO_MEMORY_MB = 0.5
DEMO_DISK_MB = 64.0


def _config(config_file: str | None, directory: str | None, demo_dir: str | None) -> CacheConfig:
    if directory is not None and not Path(directory).is_dir():
        raise CacheError(f"{directory}: no such cache directory; pass the directory given to cache.disk.path.")
    cfg = CacheConfig.from_yaml(config_file) if config_file else CacheConfig()
    root = directory or demo_dir
    if root is None:
        return cfg
    data = cfg.model_dump(mode="json")
    data["cache"]["disk"]["path"] = root
    if not config_file:
        # Scratch files next to the cache rather than in ./.cache/temp of wherever this was started.
        data["system_cache"]["temp_dir"] = str(Path(root) / "temp")
        if demo_dir is not None:
            data["cache"]["memory"]["size"] = DEMO_MEMORY_MB
            data["cache"]["disk"]["size"] = DEMO_DISK_MB
    return CacheConfig.from_dict(data)


def demo_load(manager: Any, stop: threading.Event, rate: float = 400.0) -> None:
    """Seed every panel (two small models, a training dataset, a scratch file), then replay Zipf-distributed
    requests (get; on a miss compute and set) at about ``rate`` per second until ``stop`` is set."""
    import numpy as np

    from .workload import Workload

    rng = np.random.default_rng(0)
    for name, layers in (("tiny-llama-2l", 2), ("tiny-llama-4l", 4)):
        if name not in manager.model_cache:
            tensors = {f"layers.{i}.mlp.weight": rng.standard_normal((256, 256)).astype(np.float16) for i in range(layers)}
            manager.model_cache.put(name, tensors, {"format": "pt"})
    batches = [rng.integers(0, 32_000, size=(8, 128), dtype=np.int32) for _ in range(24)]
    for _ in manager.training_cache.wrap(batches, "demo-corpus/train", fingerprint={"seq_len": 128}):
        pass
    scratch = manager.system_cache.temp_file(suffix=".jsonl", ttl=600)
    Path(scratch).write_bytes(b"{}\n" * 2048)

    seed = 0
    pause = 1.0 / rate if rate > 0 else 0.0
    while not stop.is_set():
        workload = Workload(requests=3000, items=3000, skew=1.0, seed=seed % 3)
        for request in workload:
            if stop.is_set():
                return
            if manager.get_sync(request.key) is None:
                manager.set_sync(request.key, workload.compute(request))
            if pause:
                time.sleep(pause)
        manager.model_cache.load(("tiny-llama-2l", "tiny-llama-4l")[seed % 2])  # a model load now and then
        seed += 1


async def _serve(cfg: CacheConfig, options: dict[str, Any], demo: bool) -> None:
    from llamahome.cache import CacheManager
    from llamahome.monitoring import CacheMonitor, serve_dashboard

    # The monitor keeps the manager's minute snapshots (six hours) for /api/history?source=monitor.
    async with CacheManager(cfg, monitor=CacheMonitor()) as manager:
        dashboard = serve_dashboard(manager, **options)
        stop = threading.Event()
        worker = None
        try:
            click.echo(f"Serving the cache dashboard at {dashboard.url}", err=False)
            click.echo(
                f"  JSON: {dashboard.base_url}/api/stats  metrics: {dashboard.base_url}/metrics"
                f"  actions: {'on (cleanup, prune)' if dashboard.dashboard.allow_actions else 'off'}"
            )
            click.echo("Press Ctrl-C to stop.")
            if demo:
                worker = asyncio.ensure_future(asyncio.to_thread(demo_load, manager, stop))
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, done.set)
                except (NotImplementedError, RuntimeError):  # Windows, or not the main thread: Ctrl-C still ends it
                    pass
            waiters = [asyncio.ensure_future(done.wait())] + ([worker] if worker is not None else [])
            finished, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if worker is not None and worker in finished:
                worker.result()  # the demo failed: raise its error
        finally:
            stop.set()
            if worker is not None:
                await asyncio.wait([worker])
            dashboard.close()
    click.echo("Stopped.")


@click.command(short_help="Serve a live dashboard of the caches on one port.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=str),
              help="The YAML configuration of the caches to serve.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=str),
              help="The disk cache directory (overrides cache.disk.path).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs a token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one).")
@click.option("--token", envvar="LLAMAHOME_DASHBOARD_TOKEN", show_envvar=True, default=None,
              help="Secret every request must carry (Authorization: Bearer TOKEN or ?token=TOKEN); "
                   "at least 16 URL-safe characters.")
@click.option("--allow-actions", is_flag=True,
              help="Allow POST /api/actions/cleanup and /api/actions/prune (off: the dashboard only reads).")
@click.option("--refresh", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between the page's updates and history samples.")
@click.option("--demo", is_flag=True,
              help="Drive a demo workload in a temporary directory and watch it (not with --config/--dir).")
def serve(config_file: str | None, directory: str | None, host: str, port: int, token: str | None,
          allow_actions: bool, refresh: float, demo: bool) -> None:  # fmt: skip
    """Serve a live dashboard of the caches (page, JSON API, Prometheus metrics) on one port."""
    options = {"host": host, "port": port, "token": token or None, "allow_actions": allow_actions, "refresh": refresh}
    if demo and (config_file or directory):
        raise click.UsageError("--demo writes demo models and data, so it runs in a temporary directory of its own; "
                               "drop --config/--dir, or drop --demo to serve your caches.")  # fmt: skip
    if demo:
        with tempfile.TemporaryDirectory(prefix="llamahome-serve-demo-") as tmp:
            asyncio.run(_serve(_config(None, None, tmp), options, demo))
        return
    asyncio.run(_serve(_config(config_file, directory, None), options, demo))

"""``llamahome cache stats|clear|cleanup --dir PATH``: look after a disk cache directory.

Each command opens the directory as a :class:`~llamahome.cache.disk.DiskCache` (safe while other processes
use it) and refuses a directory that holds no cache, so a typo never creates an empty cache somewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from llamahome.cache.config import CacheConfig
from llamahome.cache.units import format_bytes
from llamahome.errors import CacheError

from .params import SIZE

__all__ = ["COMMANDS", "INDEX_FILE", "cleanup", "clear", "open_disk_cache", "stats"]

#: The file that marks a directory as a disk cache.
INDEX_FILE = "index.sqlite3"


def open_disk_cache(directory: str, size: float) -> Any:
    """Open an existing disk cache directory, or raise CacheError saying what is wrong."""
    from llamahome.cache.disk import DiskCache

    path = Path(directory)
    if not path.is_dir():
        raise CacheError(
            f"{directory}: no such cache directory; pass the directory given to DiskCache or cache.disk.path."
        )
    if not (path / INDEX_FILE).is_file():
        raise CacheError(
            f"{directory}: not a LlamaHome disk cache (no {INDEX_FILE} inside); pass the directory given to "
            "DiskCache or cache.disk.path."
        )
    return DiskCache(path, size=size)


def _disk_usage(directory: str) -> tuple[int, int]:
    """Bytes and files under ``directory`` as the file system sees them (index and WAL included)."""
    total = files = 0
    for root, _dirs, names in os.walk(directory):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
                files += 1
            except FileNotFoundError:  # removed by another process while we walked
                continue
    return total, files


def _size_mb(size: float | None, config_file: str | None) -> float:
    if size is not None:
        return size
    return (CacheConfig.from_yaml(config_file) if config_file else CacheConfig()).cache.disk.size


_dir_option = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="The disk cache directory.",
)
_size_option = click.option(
    "--size",
    type=SIZE,
    help='The cache\'s size bound, e.g. "10GB" (default: cache.disk.size from --config, else 10000 MB).',
)
_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Read cache.disk.size from this YAML file.",
)


@click.command(short_help="Show what a disk cache directory holds.")
@_dir_option
@_size_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--watch", is_flag=True, help="Refresh the view every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600), help="Seconds between refreshes.")
@click.option("--count", type=click.IntRange(1), hidden=True, help="Stop --watch after this many frames.")
def stats(directory: str, size: float | None, config_file: str | None, as_json: bool, watch: bool = False,
          interval: float = 2.0, count: int | None = None) -> None:  # fmt: skip
    """Show what a disk cache directory holds (--watch: a live view, e.g. over SSH)."""
    cache = open_disk_cache(directory, _size_mb(size, config_file))
    if watch:
        from .watch import watch_disk_cache

        return watch_disk_cache(cache, directory, interval=interval, count=count, as_json=as_json)
    try:
        figures = cache.stats.snapshot()
    finally:
        cache.close()
    on_disk, files = _disk_usage(directory)
    data = {
        "directory": os.path.abspath(directory),
        "entries": figures["entries"],
        "bytes": figures["bytes"],
        "max_bytes": figures["max_bytes"],
        "disk_bytes": on_disk,
        "files": files,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    used = data["bytes"] / data["max_bytes"] if data["max_bytes"] else 0.0
    click.echo(f"Disk cache {data['directory']}")
    click.echo(f"  entries    {data['entries']:,}")
    click.echo(f"  holds      {format_bytes(data['bytes'])} of {format_bytes(data['max_bytes'])} ({used:.1%})")
    click.echo(f"  on disk    {format_bytes(on_disk)} in {files:,} files (index and logs included)")


@click.command(short_help="Remove every entry from a disk cache directory.")
@_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear(directory: str, yes: bool) -> None:
    """Remove every entry from a disk cache directory."""
    cache = open_disk_cache(directory, CacheConfig().cache.disk.size)
    try:
        entries, held = cache.stats.entries, cache.stats.bytes
        if not yes:
            click.confirm(f"Remove all {entries:,} entries ({format_bytes(held)}) from {directory}?", abort=True)
        cache.clear()
    finally:
        cache.close()
    click.echo(f"Removed {entries:,} entries ({format_bytes(held)}) from {directory}.")


@click.command(short_help="Expire, repair and shrink a disk cache to its bound.")
@_dir_option
@_size_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def cleanup(directory: str, size: float | None, config_file: str | None, as_json: bool) -> None:
    """One cleanup pass: drop expired and damaged entries and orphan files, and enforce the size bound."""
    cache = open_disk_cache(directory, _size_mb(size, config_file))
    try:
        report = cache.cleanup()
    finally:
        cache.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
        return
    click.echo(
        f"Cleaned {directory}: {report.expired:,} expired, {report.evicted:,} evicted, {report.orphans:,} orphan "
        f"files, {report.missing:,} missing and {report.corrupt:,} damaged entries removed; "
        f"{format_bytes(report.total_bytes_freed)} freed."
    )


COMMANDS = [stats, clear, cleanup]

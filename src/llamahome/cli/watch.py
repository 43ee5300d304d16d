"""``llamahome cache stats --dir PATH --watch``: a terminal view of a disk cache that refreshes in place.

For people on a server over SSH without a browser. Entries and bytes come from the shared index, so the view
follows what every process writes; the rates are the change since the previous frame. On a terminal each
frame replaces the last; piped, frames follow one another (or, with ``--json``, one JSON object per line).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from llamahome.cache.units import format_bytes

__all__ = ["render_frame", "watch_disk_cache"]

_CLEAR = "\x1b[H\x1b[2J"
_BAR = 24


def _bar(share: float) -> str:
    filled = max(0, min(_BAR, round(share * _BAR)))
    return "[" + "#" * filled + "." * (_BAR - filled) + "]"


def _signed(value: float, unit: Callable[[float], str]) -> str:
    return ("+" if value >= 0 else "-") + unit(abs(value))


def render_frame(directory: str, now: dict[str, Any], before: dict[str, Any] | None, interval: float) -> list[str]:
    """The lines of one frame: holdings now, and the change per second since ``before``."""
    used = now["bytes"] / now["max_bytes"] if now["max_bytes"] else 0.0
    stamp = time.strftime("%H:%M:%S", time.localtime(now["time"]))
    lines = [
        f"Disk cache {directory}   {stamp}   (every {interval:g} s; Ctrl-C to stop)",
        f"  entries    {now['entries']:,}",
        f"  holds      {format_bytes(now['bytes'])} of {format_bytes(now['max_bytes'])} ({used:.1%}) {_bar(used)}",
    ]
    if before is not None and now["time"] > before["time"]:
        dt = now["time"] - before["time"]
        entries = (now["entries"] - before["entries"]) / dt
        held = (now["bytes"] - before["bytes"]) / dt
        lines.append(f"  change     {_signed(entries, lambda v: f'{v:,.1f}')} entries/s, "
                     f"{_signed(held, format_bytes)}/s")  # fmt: skip
    else:
        lines.append("  change     (measuring...)")
    return lines


def watch_disk_cache(
    cache: Any,
    directory: str,
    *,
    interval: float = 2.0,
    count: int | None = None,
    as_json: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print a frame of ``cache`` (an open DiskCache on ``directory``, closed here) every ``interval`` seconds,
    ``count`` frames or until Ctrl-C; ``sleep`` is for tests."""
    tty = sys.stdout.isatty() and not as_json
    before: dict[str, Any] | None = None
    shown = 0
    try:
        while count is None or shown < count:
            figures = cache.stats.snapshot()
            now = {
                "time": time.time(),
                "directory": os.path.abspath(directory),
                "entries": figures["entries"],
                "bytes": figures["bytes"],
                "max_bytes": figures["max_bytes"],
            }
            if as_json:
                click.echo(json.dumps(now))
            else:
                frame = "\n".join(render_frame(now["directory"], now, before, interval))
                click.echo((_CLEAR + frame) if tty else (frame + "\n"))
            before = now
            shown += 1
            if count is None or shown < count:
                sleep(interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends; not an error
    finally:
        cache.close()

"""``llamahome cache stats --watch``: frames follow the shared index as other handles write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamahome.cache.disk import DiskCache
from llamahome.cli.main import cli
from llamahome.cli.watch import render_frame, watch_disk_cache
from llamahome.errors import CacheClosedError


def _make_cache(path: Path, entries: int) -> None:
    with DiskCache(path, size=10) as cache:
        for i in range(entries):
            cache.set(f"k{i}", b"x" * 1000)


def test_watch_follows_another_writer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _make_cache(tmp_path / "c", 10)
    writer = DiskCache(tmp_path / "c", size=10)
    written = iter(range(10, 1000))

    def sleep_while_writing(seconds: float) -> None:  # the time between frames: another handle writes 5 entries
        assert seconds == 0.5
        for _ in range(5):
            writer.set(f"k{next(written)}", b"y" * 2000)

    try:
        watched = DiskCache(tmp_path / "c", size=10)
        watch_disk_cache(watched, str(tmp_path / "c"), interval=0.5, count=3, as_json=True, sleep=sleep_while_writing)
        with pytest.raises(CacheClosedError):  # the watch closed it
            watched.get("k0")
    finally:
        writer.close()
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["entries"] for f in frames] == [10, 15, 20]
    assert frames[1]["bytes"] > frames[0]["bytes"] and frames[0]["max_bytes"] == 10 * 1024 * 1024


def test_render_frame_shows_rates() -> None:
    before = {"time": 100.0, "entries": 10, "bytes": 1000, "max_bytes": 4096}
    now = {"time": 102.0, "entries": 30, "bytes": 3048, "max_bytes": 4096}
    lines = render_frame("/c", now, before, 2.0)
    assert "entries    30" in lines[1]
    assert "3.0 KiB of 4.0 KiB (74.4%)" in lines[2] and "[##################......]" in lines[2]
    assert lines[3] == "  change     +10.0 entries/s, +1.0 KiB/s"
    assert render_frame("/c", now, None, 2.0)[3] == "  change     (measuring...)"


def test_stats_watch_on_the_command_line(tmp_path: Path) -> None:
    _make_cache(tmp_path / "c", 3)
    result = CliRunner().invoke(cli, ["cache", "stats", "--dir", str(tmp_path / "c"), "--watch", "--interval", "0.1",
                                      "--count", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("Disk cache ") == 2 and "\x1b[" not in result.output  # not a terminal: no clearing
    assert "entries    3" in result.output and "Ctrl-C to stop" in result.output
    missing = CliRunner().invoke(cli, ["cache", "stats", "--dir", str(tmp_path / "nope"), "--watch"])
    assert missing.exit_code == 1 and "no such cache directory" in missing.output

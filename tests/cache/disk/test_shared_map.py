"""A DiskCache reads a large index through a memory map only while no other process commits to it (issue 19):
each commit of another process makes SQLite drop a reader's map, and faulting every page in again doubled a
reader's CPU per get at 1M entries. A lowered PAGE_CACHE_KIB makes a small index count as large here."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamahome.cache.disk import DiskCache
from llamahome.cache.disk import _index as disk_index
from llamahome.cache.disk import _sqlite as disk_sqlite


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_sqlite, "PAGE_CACHE_KIB", 16)  # map from 16 KiB of index on
    monkeypatch.setattr(disk_index, "OTHERS_CHECK_EVERY", 1)  # look at every read and commit


def _map_size(cache: DiskCache) -> int:
    return int(cache._index.conn().execute("PRAGMA mmap_size").fetchone()[0])


def test_a_reader_drops_the_map_while_another_process_commits_and_maps_again_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "c"
    with DiskCache(root, size=8) as writer:
        writer.set_many({f"k{i}": b"v" * 500 for i in range(200)})
        with DiskCache(root, size=8) as reader:  # its own connection, as another process has
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES  # large and alone: mapped
            assert reader.get("k1") == b"v" * 500
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES
            writer.set("k2", b"w" * 500)
            assert reader.get("k2") == b"w" * 500  # the look after this read sees the other commit
            assert _map_size(reader) == 0
            assert reader.get("k3") == b"v" * 500  # quiet, but not for OTHERS_QUIET_S yet
            assert _map_size(reader) == 0
            monkeypatch.setattr(disk_index, "OTHERS_QUIET_S", 0.0)
            assert reader.get("k4") == b"v" * 500
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES  # mapped again
            # Its own commits are not another process's.
            reader.set("k5", b"r" * 500)
            assert reader.get("k5") == b"r" * 500
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES


def test_a_writer_sees_other_writers_too(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with DiskCache(root, size=8) as a, DiskCache(root, size=8) as b:
        a.set_many({f"k{i}": b"v" * 500 for i in range(200)})
        b.set("x", b"1")  # b's look after its commit: a committed before
        a.set("y", b"2")
        b.set("z", b"3")
        assert _map_size(a) == 0 and _map_size(b) == 0
        assert a.get("z") == b"3" and b.get("y") == b"2"

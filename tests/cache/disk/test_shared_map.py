"""A DiskCache reads a large index through a memory map except while other processes commit to it often (issue
19): each commit of another process makes SQLite unmap the index from a reader, and faulting every page in
again doubled a reader's CPU per get at 1M entries. A lowered PAGE_CACHE_KIB makes a small index count as
large here, and a look at every read and commit (OTHERS_CHECK_EVERY = 1) makes the moving average quick."""

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


def test_a_reader_drops_the_map_while_other_processes_commit_often_and_maps_again_after(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with DiskCache(root, size=8) as writer:
        writer.set_many({f"k{i}": b"v" * 500 for i in range(200)})
        with DiskCache(root, size=8) as reader:  # its own connection, as another process has
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES  # large and alone: mapped
            writer.set("k0", b"w" * 500)
            assert reader.get("k0") == b"w" * 500
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES  # one commit now and then: kept
            for i in range(40):  # another commit before every look
                writer.set(f"k{i}", b"w" * 500)
                assert reader.get(f"k{i}") == b"w" * 500
            assert _map_size(reader) == 0
            assert reader._index.others_share > disk_index.OTHERS_UNMAP_SHARE
            for i in range(40):  # fewer: stays unmapped (no flapping)
                assert reader.get(f"k{i}") == b"w" * 500
            assert _map_size(reader) == 0
            for i in range(40, 200):  # quiet for long: mapped again
                assert reader.get(f"k{i}") == b"v" * 500
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES
            for i in range(100):  # its own commits are not another process's
                reader.set(f"r{i}", b"r" * 500)
                assert reader.get(f"r{i}") == b"r" * 500
            assert _map_size(reader) == disk_sqlite.MMAP_BYTES


def test_writers_that_commit_between_each_other_s_looks_drop_the_map(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with DiskCache(root, size=8) as a, DiskCache(root, size=8) as b:
        a.set_many({f"k{i}": b"v" * 500 for i in range(200)})
        for i in range(40):
            a.set(f"a{i}", b"1")
            b.set(f"b{i}", b"2")
        assert _map_size(a) == 0 and _map_size(b) == 0
        assert a.get("b39") == b"2" and b.get("a39") == b"1"

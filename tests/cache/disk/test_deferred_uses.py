"""A large lru DiskCache writes the uses that can matter soon within the second and defers the rest (issue 19):
uses of entries in the front of the order (the oldest 1/8, where evictions take victims) are urgent; others wait
for a batch of up to 64k or 10 s, and are always written before this process evicts, on cleanup and on close.
The tests lower DEFER_MIN_ENTRIES (200k in use) so that a few hundred entries count as large."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from llamahome.cache.disk import DiskCache
from llamahome.cache.disk import _index as disk_index

N = 400  # entries; the front is the oldest N // 8 = 50 by recorded use


@pytest.fixture
def large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_index, "DEFER_MIN_ENTRIES", 100)


def _filled(path: Path, clock: Any, size_mb: float = 4, value: bytes = b"v" * 100) -> DiskCache:
    """N entries k000..k399, one a second (so their recorded uses are their creation times), then the front
    measured by a flush."""
    c = DiskCache(path, size=size_mb, clock=clock)
    for i in range(N):
        c.set(f"k{i:03d}", value)
        clock.advance(1)
    clock.advance(1000)
    assert c.get(f"k{N - 1}") is not None  # a use to flush: the flush measures the order
    c._index.write(c._index.flush_access)
    return c


def _recorded(path: Path, key: str) -> float:
    spy = sqlite3.connect(path / "index.sqlite3")
    try:
        row = spy.execute("SELECT u.accessed FROM uses AS u JOIN entries AS e ON e.id = u.id WHERE e.key = ?",
                          (b"s" + key.encode(),)).fetchone()
        return float(row[0])
    finally:
        spy.close()


def test_a_small_cache_writes_every_use_within_the_second(tmp_path: Path, clock: Any) -> None:
    c = _filled(tmp_path / "c", clock)
    try:
        assert c._index.front == math.inf
        assert c.get("k200") is not None
        assert c._index._later == {} and len(c._index._access) == 1
    finally:
        c.close()


def test_front_uses_are_urgent_the_others_deferred(tmp_path: Path, clock: Any, large: None) -> None:
    root = tmp_path / "c"
    c = _filled(root, clock)
    try:
        index = c._index
        created_k050 = _recorded(root, "k050")
        assert index.front == created_k050  # the 51st oldest: the oldest 1/8 are before it
        read_at = clock()
        assert c.get("k010") is not None and c.get("k300") is not None
        assert set(index._access) and set(index._later) and not set(index._access) & set(index._later)
        index.write(lambda conn: index.flush_access(conn, everything=False))  # what the one-second flush does
        assert _recorded(root, "k010") == read_at  # urgent: written
        assert _recorded(root, "k300") < read_at  # deferred: not yet
        c.close()
        assert _recorded(root, "k300") == read_at  # written on close
    finally:
        c.close()


@pytest.mark.parametrize("limit", ["DEFER_MAX_S", "DEFER_BATCH_MAX"])
def test_deferred_uses_wait_for_a_batch_or_ten_seconds_at_most(
    tmp_path: Path, clock: Any, large: None, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    root = tmp_path / "c"
    c = _filled(root, clock)
    try:
        if limit == "DEFER_MAX_S":
            monkeypatch.setattr(disk_index, "DEFER_MAX_S", 0.0)
        else:
            c._index._later_max = 3
        read_at = clock()
        for key in ("k300", "k301", "k302"):
            assert c.get(key) is not None
        assert c._index._later == {}  # due, written by the read that made it due
        assert [_recorded(root, k) for k in ("k300", "k301", "k302")] == [read_at] * 3
    finally:
        c.close()


def test_deferred_uses_are_written_before_this_process_evicts(tmp_path: Path, clock: Any, large: None) -> None:
    root = tmp_path / "c"
    c = _filled(root, clock, size_mb=2, value=b"v" * 2000)
    try:
        read = [f"k{i}" for i in range(100, 110)]  # behind the front: deferred
        for key in read:
            assert c.get(key) is not None
        assert len(c._index._later) == len(read)
        i = 0
        while "k120" in c:  # new entries until eviction passes the read ones
            c.set(f"new{i}", b"n" * 2000)
            i += 1
        assert c.stats.evictions >= 120
        assert all(key in c for key in read)  # their uses counted: lru spared them
        assert not any(f"k{i}" in c for i in range(100))
    finally:
        c.close()


def test_another_process_s_eviction_sees_urgent_uses_within_the_second(
    tmp_path: Path, clock: Any, large: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "c"
    a = _filled(root, clock, size_mb=2, value=b"v" * 2000)
    b = DiskCache(root, size=2, clock=clock)  # a second connection, as another process has
    try:
        assert a.get("k005") is not None  # in the front: urgent
        monkeypatch.setattr(disk_index, "ACCESS_FLUSH_INTERVAL", 0.0)  # as if a second had passed
        assert a.get("k006") is not None  # the flush that was due writes both
        assert a._index._access == {}
        i = 0
        while "k020" in b:
            b.set(f"new{i}", b"n" * 2000)
            i += 1
        assert "k005" in b and "k006" in b
        assert not any(f"k{i:03d}" in b for i in range(5))
    finally:
        b.close()
        a.close()


def test_entries_tied_with_the_front_are_urgent(tmp_path: Path, clock: Any, large: None) -> None:
    """Entries stored together share their first use: when the front falls on such a tie, all of them are in
    it (an eviction would take them in id order), so none of their uses may wait."""
    with DiskCache(tmp_path / "c", size=4, clock=clock) as c:
        c.set_many({f"k{i:03d}": b"v" * 100 for i in range(N)})
        clock.advance(1000)
        assert c.get("k399") is not None
        c._index.write(c._index.flush_access)
        assert c._index.front < math.inf
        assert c.get("k300") is not None and c.get("k100") is not None
        assert c._index._later == {} and len(c._index._access) == 2

"""DiskCache: the shared store contract, plus what only a persistent, file-backed tier must do."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache.disk import DiskCache
from llamahome.errors import CacheClosedError, CacheValueError, ConfigError

from ..store_contract import MIB, StoreContract


class TestDiskContract(StoreContract):
    def make_store(self, tmp_path: Path, clock: Any, size_mb: float = 1.0, policy: str = "lru") -> DiskCache:
        return DiskCache(tmp_path, size=size_mb, policy=policy, clock=clock)


class TestDiskContractCompressed(StoreContract):
    """The same contract with compression on (the values are incompressible, so sizes are unchanged)."""

    def make_store(self, tmp_path: Path, clock: Any, size_mb: float = 1.0, policy: str = "lru") -> DiskCache:
        return DiskCache(tmp_path, size=size_mb, policy=policy, clock=clock, compression=True)


@pytest.fixture
def cache(tmp_path: Path, clock: Any) -> Any:
    c = DiskCache(tmp_path / "c", size=4, clock=clock)
    yield c
    c.close()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "data").rglob("*") if p.is_file())


def test_values_persist_across_reopen(tmp_path: Path, clock: Any) -> None:
    arr = np.arange(100_000, dtype=np.int64)
    with DiskCache(tmp_path / "c", size=4, clock=clock) as c:
        c.set("small", {"a": [1, 2]})
        c.set("big", arr)
        c.set("ttl", b"t", ttl=10)
    clock.advance(11)
    with DiskCache(tmp_path / "c", size=4, clock=clock) as c:
        assert c.get("small") == {"a": [1, 2]}
        np.testing.assert_array_equal(c.get("big"), arr)
        assert c.get("ttl") is None
        assert c.stats.entries == 2


def test_small_values_inline_large_values_in_files(cache: DiskCache) -> None:
    cache.set("small", b"x" * 1000)
    assert _files(Path(cache.path)) == []
    cache.set("large", b"x" * 100_000)
    files = _files(Path(cache.path))
    assert len(files) == 1
    # The file name is random hex, never derived from the key, in a two-character fan-out folder.
    assert len(files[0].name) == 32 and files[0].parent.name == files[0].name[:2]
    cache.set("large", b"y" * 100_000)  # the replaced file is removed
    assert len(_files(Path(cache.path))) == 1
    cache.delete("large")
    assert _files(Path(cache.path)) == []


def test_stats_bytes_equal_real_sizes(cache: DiskCache) -> None:
    cache.set("small", b"s" * 100)
    cache.set("large", b"l" * 200_000)
    (f,) = _files(Path(cache.path))
    frame_small = 64 + 100  # frame header + payload
    key_bytes = len(b"ssmall") + len(b"slarge")
    assert cache.stats.bytes == key_bytes + frame_small + f.stat().st_size


def test_private_permissions(cache: DiskCache) -> None:
    cache.set("large", b"l" * 100_000)
    root = Path(cache.path)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for d in (root / "data", root / "tmp", _files(root)[0].parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in [root / "index.sqlite3", *_files(root)]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for suffix in ("-wal", "-shm"):
        wal = root / f"index.sqlite3{suffix}"
        if wal.exists():
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "key",
    ["../../etc/passwd", "a/../../b", "/abs/path", "nul\x00inside", "x" * 10_000, b"\xff\xfe\x00\x80", b"../" * 100,
     "\ud800 lone surrogate", ""],
    ids=["dotdot", "nested-dotdot", "absolute", "nul", "10k", "non-utf8", "bytes-dotdot", "surrogate", "empty"],
)
def test_hostile_keys_stay_inside_the_directory(tmp_path: Path, clock: Any, key: Any) -> None:
    root = tmp_path / "c"
    with DiskCache(root, size=4, clock=clock) as c:
        c.set(key, b"v" * 50_000)  # large: goes to a file
        assert c.get(key) == b"v" * 50_000
        c.set(key + (b"s" if isinstance(key, bytes) else "s"), b"small")
        assert c.get(key + (b"s" if isinstance(key, bytes) else "s")) == b"small"
        assert key in c
    every = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert all(str(p).startswith("c") for p in every)
    names = [p.name for p in _files(root)]
    assert len(names) == 1 and all(n.isalnum() for n in names)


def test_mmap_returns_read_only_zero_copy_views(cache: DiskCache) -> None:
    arr = np.arange(1 << 16, dtype=np.float32)
    cache.set("arr", {"w": arr, "b": np.ones(3)})
    plain = cache.get("arr")
    assert plain["w"].flags.writeable  # normal reads give writable arrays
    mapped = cache.get("arr", mmap=True)
    w = mapped["w"]
    assert not w.flags.writeable
    np.testing.assert_array_equal(w, arr)
    assert w.ctypes.data % 64 == 0  # frames are aligned in the file, so mapped arrays are too
    # The view survives the entry being replaced and the file removed (POSIX keeps the mapping).
    cache.set("arr", b"other" * 20_000)
    np.testing.assert_array_equal(w, arr)


def test_large_bytes_round_trip(cache: DiskCache) -> None:
    value = os.urandom(3 * MIB)
    cache.set("b", value)
    assert cache.get("b") == value
    assert cache.get("b", mmap=True) == value


def test_compression_pays_on_repetitive_values(tmp_path: Path, clock: Any) -> None:
    with DiskCache(tmp_path / "c", size=4, clock=clock, compression=True) as c:
        c.set("z", b"abc" * 100_000)
        assert c.get("z") == b"abc" * 100_000
        assert c.stats.bytes < 20_000
        assert c.stats.stored_bytes < c.stats.raw_bytes


def test_pickle_needs_opt_in(tmp_path: Path, clock: Any) -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    with pytest.raises(CacheValueError):
        with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
            c.set("p", Point(1))
    with DiskCache(tmp_path / "c", size=1, clock=clock, allow_pickle=True) as c:
        c.set("p", {1, 2, 3})
        assert c.get("p") == {1, 2, 3}
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        with pytest.raises(CacheValueError, match="pickle"):
            c.get("p")  # intact but stored with pickle: refused loudly, not hidden as a miss
        assert c.stats.corrupt == 0


def test_get_with_ttl_reports_remaining_time(cache: DiskCache, clock: Any) -> None:
    cache.set("t", b"v", ttl=30)
    cache.set("f", b"v")
    clock.advance(10)
    assert cache.get_with_ttl("t") == (b"v", pytest.approx(20))
    assert cache.get_with_ttl("f") == (b"v", None)
    assert cache.get_with_ttl("none", "d") == ("d", None)


def test_set_many_is_one_transaction_and_get_many_dedupes(cache: DiskCache) -> None:
    cache.set_many({f"k{i}": (b"x" * (i * 20_000)) for i in range(5)})
    assert cache.stats.entries == 5
    got = cache.get_many(["k1", "k1", "k4", "nope"])
    assert got == {"k1": b"x" * 20_000, "k4": b"x" * 80_000}
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)


def test_set_many_larger_than_bound_keeps_bound(tmp_path: Path, clock: Any) -> None:
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        c.set_many({f"k{i}": os.urandom(200_000) for i in range(10)})
        assert c.stats.bytes <= c.stats.max_bytes
        assert 1 <= c.stats.entries <= 5


def test_lru_reads_are_batched_not_written(cache: DiskCache, clock: Any) -> None:
    import sqlite3

    cache.set("a", b"1")
    set_at = clock()
    spy = sqlite3.connect(Path(cache.path) / "index.sqlite3")
    try:
        wal = Path(cache.path) / "index.sqlite3-wal"
        size_before = wal.stat().st_size
        clock.advance(5)
        for _ in range(200):
            assert cache.get("a") == b"1"
        assert wal.stat().st_size == size_before  # no write per read
        # The insert's use is its creation; reads wait for the next batch.
        assert spy.execute("SELECT accessed, hits FROM uses").fetchone() == (set_at, 1)
        cache.close()  # the batch is written on close (and at most a second after reads, and before evicting)
        assert spy.execute("SELECT accessed, hits FROM uses").fetchone() == (set_at + 5, 201)
    finally:
        spy.close()


def test_lru_rewrite_of_a_cold_key_is_batched_and_lands_before_eviction(tmp_path: Path, clock: Any) -> None:
    import sqlite3

    size = MIB // 10 - 4096
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        spy = sqlite3.connect(Path(c.path) / "index.sqlite3")
        try:
            for i in range(8):
                c.set(f"k{i}", os.urandom(size))
                clock.advance(1)
            first_used = spy.execute("SELECT u.accessed FROM uses AS u JOIN entries AS e ON e.id = u.id WHERE e.key = ?", (b"sk0",)).fetchone()[0]
            c.set("k0", b"new")  # k0's last use is 8 s old: the set leaves its lru place to the batch
            assert spy.execute("SELECT u.accessed FROM uses AS u JOIN entries AS e ON e.id = u.id WHERE e.key = ?", (b"sk0",)).fetchone()[0] == first_used
            clock.advance(1)
            for i in range(4):  # these sets evict: the pending use of k0 is written first, so k1 goes
                c.set(f"n{i}", os.urandom(size))
                clock.advance(1)
            assert c.get("k0") == b"new"
            assert "k1" not in c and "k7" in c
            assert c.stats.evictions >= 1 and c.stats.bytes <= c.max_bytes
        finally:
            spy.close()


def test_lru_access_flushed_on_close_is_seen_by_the_next_process(tmp_path: Path, clock: Any) -> None:
    root = tmp_path / "c"
    size = MIB // 10 - 4096
    with DiskCache(root, size=1, clock=clock) as c:
        for i in range(8):
            c.set(f"k{i}", os.urandom(size))
            clock.advance(1)
        c.get("k0")  # k0 becomes the most recent; only this process knows until the flush
    with DiskCache(root, size=1, clock=clock) as c:
        clock.advance(1)
        for i in range(3):
            c.set(f"n{i}", os.urandom(size))
            clock.advance(1)
        assert "k0" in c and "k1" not in c


def test_closed_cache_raises(tmp_path: Path, clock: Any) -> None:
    c = DiskCache(tmp_path / "c", size=1, clock=clock)
    c.close()
    with pytest.raises(CacheClosedError):
        c.get("a")
    with pytest.raises(CacheClosedError):
        c.set("a", b"1")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy"):
        DiskCache(tmp_path / "c", policy="random")
    with pytest.raises(ConfigError, match="size"):
        DiskCache(tmp_path / "c", size=0)


def test_ttl_zero_removes(cache: DiskCache) -> None:
    cache.set("k", b"1")
    cache.set("k", b"2", ttl=0)
    assert "k" not in cache and cache.get("k") is None


def test_cleanup_reports_and_reconciles(cache: DiskCache, clock: Any) -> None:
    cache.set("a", b"a" * 100_000, ttl=5)
    cache.set("b", b"b" * 100)
    clock.advance(6)
    report = cache.cleanup()
    assert report.expired == 1 and report.bytes_freed >= 100_000
    assert report.details["entries"] == 1
    assert _files(Path(cache.path)) == []


def test_sync_mode_and_size_strings(tmp_path: Path, clock: Any) -> None:
    with DiskCache(tmp_path / "c", size="2MB", clock=clock, sync=True) as c:
        assert c.stats.max_bytes == 2 * MIB
        c.set("big", b"x" * 100_000)
        c.set("small", b"y")
        assert c.get("big") == b"x" * 100_000 and c.get("small") == b"y"


def test_lru_records_uses_to_a_64th_of_the_entries_age_span(tmp_path: Path, clock: Any) -> None:
    size = MIB // 3 - 4096  # three entries fit
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        c.set("a", os.urandom(size))
        clock.advance(0.5)
        c.set("b", os.urandom(size))
        clock.advance(0.2)
        c.set("a", os.urandom(size))  # a rewrite is a use, however soon (no absolute floor)
        c.get("a")
        clock.advance(5)
        c.set("c", os.urandom(size))
        c.set("d", os.urandom(size))
        assert "a" in c and "b" not in c
        # The entries' uses now span 5 s: a read within 5/64 s of the last recorded use is not recorded.
        c.get("c")
        clock.advance(0.05)
        c.get("c")  # within the resolution: keeps its place
        clock.advance(0.05)
        c.get("d")  # not recorded either (same use time as c's, so c and d keep their order)
        clock.advance(2)
        c.get("a")  # 2 s after: recorded, a becomes the most recent
        c.set("e", os.urandom(size))
        assert "a" in c and "c" not in c and "d" in c


def _wal_frames(path: str) -> int:
    """Frames in the WAL now (a passive checkpoint from a second connection reports them)."""
    import sqlite3

    spy = sqlite3.connect(Path(path) / "index.sqlite3")
    try:
        return int(spy.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        spy.close()


def test_the_cache_checkpoints_itself_and_the_wal_starts_over(cache: DiskCache) -> None:
    # SQLite's automatic checkpoint is off (with several writing processes it fsyncs on every commit).
    assert cache._index.conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    limit = cache._index.wal_limit
    assert limit == 128  # a 4 MB cache: 1/8 of the bound (512 KiB of WAL)
    for i in range(4000):  # every commit changes a page: without checkpoints the WAL would hold >= 4,000 frames
        cache.set(f"k{i % 50}", b"%06d" % i * 16)
    assert 0 < _wal_frames(cache.path) < limit  # restarted each time this process's estimate crossed the limit
    assert cache._index.wal_frames < limit
    wal = Path(cache.path) / "index.sqlite3-wal"
    assert wal.stat().st_size <= limit * 4120 + 64 * 1024
    assert cache.get("k7") == b"%06d" % 3957 * 16


def test_a_checkpoint_kept_from_restarting_by_a_reader_is_retried(cache: DiskCache) -> None:
    import sqlite3

    cache.set("a", b"1")
    reader = sqlite3.connect(Path(cache.path) / "index.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 1  # a snapshot in the WAL
        for i in range(400):
            cache.set(f"k{i % 50}", b"v%05d" % i * 16)
        assert cache._index.wal_frames >= cache._index.wal_limit * 3 // 4  # RESTART had to give up: retried later
        assert cache.get("k3") == b"v%05d" % 353 * 16  # and nothing failed meanwhile
        assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 1  # the snapshot stands
        reader.execute("COMMIT")
        for i in range(cache._index.wal_limit // 8):  # a quarter of the limit (~4 pages a set), then as much again
            cache.set(f"k{i % 50}", b"w%05d" % i * 16)
        assert cache._index.wal_frames < cache._index.wal_limit // 2  # the retry went through once the reader left
        assert _wal_frames(cache.path) < cache._index.wal_limit // 2
    finally:
        reader.close()
    assert cache.get("k3") == b"w%05d" % 3 * 16


def test_large_inline_values_count_their_overflow_pages_toward_a_checkpoint(cache: DiskCache) -> None:
    limit = cache._index.wal_limit
    for i in range(600):  # 20 KiB values stay inline (each ~6 pages of the WAL): ~3,600 pages in all
        cache.set(f"k{i % 20}", b"%06d" % i * 3400)
    # The WAL (its file never shrinks below what it reached) stayed within the limit plus one commit.
    wal = Path(cache.path) / "index.sqlite3-wal"
    assert wal.stat().st_size <= (limit + 16) * (4096 + 24) + 32
    assert cache.get("k3") == b"%06d" % 583 * 3400


def test_short_lived_writers_checkpoint_on_close(cache: DiskCache, clock: Any) -> None:
    # `cache` stays open and idle (SQLite itself checkpoints only when the last connection closes); writers
    # that each commit less than a checkpoint's worth still leave the WAL copied back when they close.
    for round_ in range(10):
        with DiskCache(cache.path, size=4, clock=clock) as writer:
            for i in range(300):
                writer.set(f"k{i % 50}", b"%06d" % (round_ * 1000 + i) * 16)
            assert writer._index.wal_frames < writer._index.wal_limit  # no checkpoint of its own before close
    assert _wal_frames(cache.path) < 1000  # one writer's pages, not ten
    assert cache.get("k7") == b"%06d" % 9257 * 16

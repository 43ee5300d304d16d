"""DiskCache lru inserts are "unsettled" (out of the partial lru index) until a batch records their use:
the eviction order, the pending count and upgrades of version 1 indexes stay exact."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from llamahome.cache.disk import _files as disk_files
from llamahome.cache.disk import DiskCache

MIB = 1024 * 1024
# Ten entries fill a 1 MB cache (the room left is what the directory's folders and index pages take beyond
# the bound's allowance: the bound covers them, see Index.measure).
TENTH = MIB // 11


def _spy(cache: DiskCache) -> sqlite3.Connection:
    return sqlite3.connect(Path(cache.path) / "index.sqlite3")


def _pending(spy: sqlite3.Connection) -> int:
    return int(spy.execute("SELECT pending FROM meta").fetchone()[0])


def test_insert_is_unsettled_until_the_batch_then_records_its_creation(tmp_path: Path, clock: Any) -> None:
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        spy = _spy(c)
        try:
            c.set("a", b"1")
            set_at = clock()
            c.set_many({"b": b"2", "c": b"3"})
            assert spy.execute("SELECT accessed FROM entries ORDER BY id").fetchall() == [(-1.0,)] * 3
            assert _pending(spy) == 3
            assert c.delete("c") and _pending(spy) == 2  # the count follows deletes of unsettled rows
            clock.advance(3)
            c.close()  # the batch is written on close (and at most a second after the insert)
            assert spy.execute("SELECT accessed FROM entries ORDER BY id").fetchall() == [(set_at,), (set_at,)]
            assert _pending(spy) == 0
        finally:
            spy.close()


def test_read_of_an_unsettled_entry_within_a_second_keeps_its_place(tmp_path: Path, clock: Any) -> None:
    size = MIB // 3 - 4096  # three entries fit
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        c.set("a", os.urandom(size))
        clock.advance(0.5)
        c.set("b", os.urandom(size))
        c.get("a")  # 0.5 s after its insert: not a new use (relatime), a stays older than b
        clock.advance(5)
        c.get("b")
        c.set("c", os.urandom(size))
        c.set("d", os.urandom(size))
        assert "a" not in c and "b" in c and "c" in c


def test_eviction_settles_another_process_s_inserts_first(tmp_path: Path, clock: Any) -> None:
    # Two handles are two connections, as two processes would have: a's inserts are unsettled, and only a
    # knows it; b must still evict a's oldest entries first (not its own newer ones).
    a = DiskCache(tmp_path / "c", size=1, clock=clock)
    b = DiskCache(tmp_path / "c", size=1, clock=clock)
    try:
        for i in range(5):
            a.set(f"a{i}", os.urandom(TENTH))
            clock.advance(1)
        for i in range(8):  # 13 entries of ten that fit: three go
            b.set(f"b{i}", os.urandom(TENTH))
            clock.advance(1)
        assert [k for k in ("a0", "a1", "a2", "a3", "a4") if k in b] == ["a3", "a4"]
        assert all(f"b{i}" in b for i in range(8))
        assert b.stats.evictions == 3 and b.stats.bytes <= b.max_bytes
    finally:
        a.close()
        b.close()


def test_inserts_left_unsettled_by_a_killed_process_are_settled(tmp_path: Path, clock: Any) -> None:
    root = tmp_path / "c"
    DiskCache(root, size=1, clock=clock).close()
    pid = os.fork()
    if pid == 0:  # the child writes and dies without flushing anything (as under kill -9)
        try:
            child = DiskCache(root, size=1, clock=clock)
            for i in range(3):
                child.set(f"k{i}", bytes([i]) * 100)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    with DiskCache(root, size=1, clock=clock) as c:
        spy = _spy(c)
        try:
            assert _pending(spy) == 3
            report = c.cleanup()
            assert report.removed == 0
            assert _pending(spy) == 0
            assert spy.execute("SELECT count(*) FROM entries WHERE accessed = created").fetchone()[0] == 3
            assert c.get("k2") == b"\x02" * 100
        finally:
            spy.close()


def test_pending_count_is_repaired_by_cleanup(tmp_path: Path, clock: Any) -> None:
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        c.set("a", b"1")
        spy = _spy(c)
        try:
            spy.execute("UPDATE meta SET pending = 7")  # drifted (a bug or a hand edit)
            spy.commit()
            c.cleanup(full=True)
            assert _pending(spy) == 0
            assert spy.execute("SELECT accessed FROM entries").fetchone()[0] == clock()
        finally:
            spy.close()


def _unbind_checksums(db: sqlite3.Connection) -> None:
    """Inline checksums as versions 1 and 2 wrote them: of the value alone, not bound to the key."""
    rows = db.execute("SELECT id, value FROM entries WHERE value IS NOT NULL").fetchall()
    db.executemany("UPDATE entries SET checksum = ? WHERE id = ?", [(disk_files.checksum(v), i) for i, v in rows])


def _downgrade_to_version_1(path: Path) -> None:
    """Give a closed cache directory the index layout of version 1 (full lru index, no pending count)."""
    db = sqlite3.connect(path / "index.sqlite3", isolation_level=None)
    try:
        db.execute("BEGIN")
        _unbind_checksums(db)
        db.execute("UPDATE entries SET accessed = created WHERE accessed < 0")
        for name in ("entries_ins", "entries_del", "entries_upd", "entries_acc"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP INDEX entries_lru")
        db.execute("CREATE INDEX entries_lru ON entries(accessed)")
        db.execute("ALTER TABLE meta DROP COLUMN pending")
        db.execute("ALTER TABLE meta DROP COLUMN file_bytes")  # version 3's value-file totals
        db.execute("ALTER TABLE meta DROP COLUMN file_slack")
        db.execute("UPDATE meta SET version = 1")
        db.execute("""CREATE TRIGGER entries_ins AFTER INSERT ON entries BEGIN
            UPDATE meta SET bytes = bytes + NEW.size, entries = entries + 1 WHERE id = 0; END""")
        db.execute("""CREATE TRIGGER entries_del AFTER DELETE ON entries BEGIN
            UPDATE meta SET bytes = bytes - OLD.size, entries = entries - 1 WHERE id = 0; END""")
        db.execute("""CREATE TRIGGER entries_upd AFTER UPDATE OF size ON entries WHEN NEW.size != OLD.size BEGIN
            UPDATE meta SET bytes = bytes + NEW.size - OLD.size WHERE id = 0; END""")
        db.execute("COMMIT")
    finally:
        db.close()


def test_version_1_index_is_upgraded_in_place(tmp_path: Path, clock: Any) -> None:
    root = tmp_path / "c"
    with DiskCache(root, size=1, clock=clock) as c:
        for i in range(6):
            c.set(f"k{i}", os.urandom(TENTH))
            clock.advance(1)
        c.set("big", b"b" * 100_000)
        bytes_before = c.stats.bytes
    _downgrade_to_version_1(root)
    with DiskCache(root, size=1, clock=clock) as c:
        spy = _spy(c)
        try:
            assert spy.execute("SELECT version, pending FROM meta").fetchone() == (3, 0)
            sql = spy.execute("SELECT sql FROM sqlite_master WHERE name = 'entries_lru'").fetchone()[0]
            assert "WHERE accessed >= 0" in sql
            assert c.stats.bytes == bytes_before and c.stats.entries == 7
            assert c.get("big") == b"b" * 100_000
            for i in range(6):  # the upgraded index keeps the order: k0, k1, k2 go first
                c.set(f"n{i}", os.urandom(TENTH))
                clock.advance(1)
            assert [f"k{i}" in c for i in range(6)] == [False, False, False, True, True, True]
            assert _pending(spy) == spy.execute("SELECT count(*) FROM entries WHERE accessed < 0").fetchone()[0]
        finally:
            spy.close()
    # a fifo process upgrading a version 1 index keeps lru's index partial too
    _downgrade_to_version_1(root)
    DiskCache(root, size=1, policy="fifo", clock=clock).close()
    with sqlite3.connect(root / "index.sqlite3") as db:
        assert "WHERE" in db.execute("SELECT sql FROM sqlite_master WHERE name = 'entries_lru'").fetchone()[0]
    db.close()

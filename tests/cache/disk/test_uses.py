"""DiskCache keeps uses (last use, count) in the narrow ``uses`` table, one row per entry, made and deleted
with it by triggers: the eviction order across processes, repairs by cleanup, and upgrades of version 1 and 3
indexes (uses in the entries' rows) stay exact."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from llamahome.cache.disk import _files as disk_files
from llamahome.cache.disk import _sqlite as disk_sqlite
from llamahome.cache.disk import DiskCache

MIB = 1024 * 1024
# Ten entries fill a 1 MB cache (the room left is what the directory's folders and index pages take beyond
# the bound's allowance: the bound covers them, see Index.measure).
TENTH = MIB // 11


def _spy(cache: DiskCache) -> sqlite3.Connection:
    return sqlite3.connect(Path(cache.path) / "index.sqlite3")


def _uses(spy: sqlite3.Connection) -> list[tuple[bytes, float, int]]:
    return spy.execute(
        "SELECT e.key, u.accessed, u.hits FROM uses AS u JOIN entries AS e ON e.id = u.id ORDER BY e.id"
    ).fetchall()


def test_every_entry_has_one_uses_row_created_and_deleted_with_it(tmp_path: Path, clock: Any) -> None:
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        spy = _spy(c)
        try:
            c.set("a", b"1")
            set_at = clock()
            c.set_many({"b": b"2", "c": b"3"})
            assert _uses(spy) == [(b"sa", set_at, 1), (b"sb", set_at, 1), (b"sc", set_at, 1)]
            assert c.delete("c")
            assert spy.execute("SELECT count(*) FROM uses").fetchone()[0] == 2  # deleted with its entry
            clock.advance(3)
            assert c.get("a") == b"1"
            c.close()  # the batch of uses is written on close (and at most a second after the read)
            assert _uses(spy) == [(b"sa", set_at + 3, 2), (b"sb", set_at, 1)]
            # The entry's own row is not touched by uses (that is the point of the narrow table).
            assert spy.execute("SELECT DISTINCT accessed, hits FROM entries").fetchall() == [(0, 0)]
        finally:
            spy.close()


def test_read_within_the_resolution_keeps_the_entry_s_place(tmp_path: Path, clock: Any) -> None:
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


def test_eviction_orders_another_process_s_inserts(tmp_path: Path, clock: Any) -> None:
    # Two handles are two connections, as two processes would have: b must evict a's oldest entries first
    # (not its own newer ones).
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


def test_inserts_of_a_killed_process_have_their_uses(tmp_path: Path, clock: Any) -> None:
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
            assert [(k, n) for k, _, n in _uses(spy)] == [(b"sk0", 1), (b"sk1", 1), (b"sk2", 1)]
            assert c.cleanup().removed == 0
            assert c.get("k2") == b"\x02" * 100
        finally:
            spy.close()


def test_uses_table_is_repaired_by_a_full_cleanup(tmp_path: Path, clock: Any) -> None:
    with DiskCache(tmp_path / "c", size=1, clock=clock) as c:
        c.set("a", b"1")
        c.set("b", b"2")
        spy = _spy(c)
        try:
            # Drifted (a bug or a hand edit): a's row gone, a row for no entry.
            spy.execute("DELETE FROM uses WHERE id = (SELECT id FROM entries WHERE key = ?)", (b"sa",))
            spy.execute("INSERT INTO uses (id, accessed, hits) VALUES (999, 1, 1)")
            spy.commit()
            c.cleanup(full=True)
            assert [k for k, _, _ in _uses(spy)] == [b"sa", b"sb"]
            assert spy.execute("SELECT count(*) FROM uses").fetchone()[0] == 2
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
        db.execute("UPDATE entries SET (accessed, hits) = (SELECT accessed, hits FROM uses WHERE uses.id = entries.id)")
        for name in ("entries_ins", "entries_del", "entries_upd"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE uses")
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
            assert spy.execute("SELECT version, pending FROM meta").fetchone() == (4, 0)
            assert _index_names(spy) >= {"uses_lru"} and "entries_lru" not in _index_names(spy)
            assert c.stats.bytes == bytes_before and c.stats.entries == 7
            assert c.get("big") == b"b" * 100_000
            for i in range(6):  # the upgraded index keeps the order: k0, k1, k2 go first
                c.set(f"n{i}", os.urandom(TENTH))
                clock.advance(1)
            assert [f"k{i}" in c for i in range(6)] == [False, False, False, True, True, True]
        finally:
            spy.close()


def _index_names(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def _downgrade_to_version_3(path: Path, unsettled: set[bytes]) -> None:
    """Give a closed cache directory the index layout of version 3: uses in the entries' rows (those of the
    keys in ``unsettled`` not yet recorded: ``accessed = -1``), a pending count, a partial lru index."""
    db = sqlite3.connect(path / "index.sqlite3", isolation_level=None)
    try:
        db.execute("BEGIN")
        db.execute("UPDATE entries SET (accessed, hits) = (SELECT accessed, hits FROM uses WHERE uses.id = entries.id)")
        db.executemany("UPDATE entries SET accessed = -1 WHERE key = ?", [(k,) for k in unsettled])
        for name in ("entries_ins", "entries_del", "entries_upd"):
            db.execute(f"DROP TRIGGER {name}")
        for trigger in disk_sqlite._TRIGGERS_V3:
            db.execute(trigger)
        db.execute("DROP TABLE uses")
        db.execute("CREATE INDEX entries_lru ON entries(accessed) WHERE accessed >= 0")
        db.execute("UPDATE meta SET version = 3, pending = ?", (len(unsettled),))
        db.execute("COMMIT")
    finally:
        db.close()


def test_version_3_index_is_upgraded_in_place(tmp_path: Path, clock: Any) -> None:
    root = tmp_path / "c"
    with DiskCache(root, size=1, clock=clock) as c:
        for i in range(6):
            c.set(f"k{i}", os.urandom(TENTH))
            clock.advance(1)
        clock.advance(1)
        c.get("k0")  # k0 becomes the newest use: k1, k2, k3 go first
        created_k5 = clock() - 2
    _downgrade_to_version_3(root, unsettled={b"sk5"})
    with DiskCache(root, size=1, clock=clock) as c:
        spy = _spy(c)
        try:
            assert spy.execute("SELECT version, pending FROM meta").fetchone() == (4, 0)
            assert "entries_lru" not in _index_names(spy) and "uses_lru" in _index_names(spy)
            uses = {k: (t, n) for k, t, n in _uses(spy)}
            assert uses[b"sk5"] == (created_k5, 1)  # an unsettled row's use is its creation
            assert uses[b"sk0"][1] == 2
            for i in range(6):  # some of the twelve go: the least recently used first
                c.set(f"n{i}", os.urandom(TENTH))
                clock.advance(1)
            gone = [f"k{i}" for i in range(6) if f"k{i}" not in c]
            assert len(gone) >= 2 and gone == [f"k{i}" for i in range(1, len(gone) + 1)]
            assert "k5" in c and all(f"n{i}" in c for i in range(6))
        finally:
            spy.close()

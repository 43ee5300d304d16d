"""The SQLite index of the disk tier: schema, connection setup, lock retries, damage detection and rebuild.

One row per entry. Small values live in the row (``value``); large ones in a value file (``file``). The
``meta`` row holds the totals of every process sharing the directory (bytes, entries); triggers keep it exact in
the same transaction as the change, so the size bound is global, not per process.

The uses of an entry (last use, count) live in a narrow table of their own, ``uses`` (schema version 4), with
the lru/lfu index over it. Why not in the entry's row, as before: a row holds its inline value (a 1 KiB entry
fills a third of a page), so recording the uses of randomly read entries rewrote one random page of the whole
table per use (measured 14-17 us a use at 100k entries, most of a 90% read workload's time); ``uses`` rows are
24 bytes, the whole table stays in the page cache and a batch of uses dirties a few hundred pages
(3.2-3.5 us a use). Triggers insert an entry's ``uses`` row with the entry (its creation is its first use) and
delete it with the entry.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from llamahome.errors import DiskFullError, NotACacheError, StorageError

from ..policies import ORDER_SQL
from . import _files as df
from ._log import log

__all__ = [
    "POLICY_ORDER", "USES_RECONCILE", "checkpoint", "map_if_large", "evict", "open_index", "retry_busy", "is_busy", "is_damaged",
    "storage_error",
]

T = TypeVar("T")

SCHEMA_VERSION = 4
INDEX_NAME = "index.sqlite3"
# The triggers of schema version 4: they keep meta exact (the totals, the bytes held in value files and what
# their last 4 KiB blocks leave unused, so the directory's own overhead can be measured, see Index.measure) and
# give every entry its row in ``uses`` (created with it, as its first use; deleted with it).
_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE meta SET bytes = bytes + NEW.size, entries = entries + 1,
    file_bytes = file_bytes + NEW.size * (NEW.file IS NOT NULL),
    file_slack = file_slack + (NEW.file IS NOT NULL) * ((4096 - (NEW.size - length(NEW.key)) % 4096) % 4096)
    WHERE id = 0;
    INSERT OR REPLACE INTO uses (id, accessed, hits) VALUES (NEW.id, max(NEW.created, 0), 1);
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE meta SET bytes = bytes - OLD.size, entries = entries - 1,
    file_bytes = file_bytes - OLD.size * (OLD.file IS NOT NULL),
    file_slack = file_slack - (OLD.file IS NOT NULL) * ((4096 - (OLD.size - length(OLD.key)) % 4096) % 4096)
    WHERE id = 0;
    DELETE FROM uses WHERE id = OLD.id;
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size, file ON entries
WHEN NEW.size != OLD.size OR (NEW.file IS NULL) != (OLD.file IS NULL) BEGIN
    UPDATE meta SET bytes = bytes + NEW.size - OLD.size,
    file_bytes = file_bytes + NEW.size * (NEW.file IS NOT NULL) - OLD.size * (OLD.file IS NOT NULL),
    file_slack = file_slack + (NEW.file IS NOT NULL) * ((4096 - (NEW.size - length(NEW.key)) % 4096) % 4096)
    - (OLD.file IS NOT NULL) * ((4096 - (OLD.size - length(OLD.key)) % 4096) % 4096) WHERE id = 0;
END""",
)
# Version 3's triggers (pending: the count of rows whose use was not yet in the lru index), installed by the
# migration from version 2 (the one to 4 replaces them).
_TRIGGERS_V3 = (
    """CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE meta SET bytes = bytes + NEW.size, entries = entries + 1, pending = pending + (NEW.accessed < 0),
    file_bytes = file_bytes + NEW.size * (NEW.file IS NOT NULL),
    file_slack = file_slack + (NEW.file IS NOT NULL) * ((4096 - (NEW.size - length(NEW.key)) % 4096) % 4096)
    WHERE id = 0;
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE meta SET bytes = bytes - OLD.size, entries = entries - 1, pending = pending - (OLD.accessed < 0),
    file_bytes = file_bytes - OLD.size * (OLD.file IS NOT NULL),
    file_slack = file_slack - (OLD.file IS NOT NULL) * ((4096 - (OLD.size - length(OLD.key)) % 4096) % 4096)
    WHERE id = 0;
END""",
    _TRIGGERS[2],  # entries_upd: unchanged in version 4
    """CREATE TRIGGER IF NOT EXISTS entries_acc AFTER UPDATE OF accessed ON entries
WHEN (NEW.accessed < 0) != (OLD.accessed < 0) BEGIN
    UPDATE meta SET pending = pending + (NEW.accessed < 0) - (OLD.accessed < 0) WHERE id = 0;
END""",
)
# Version 2's triggers, installed by the migration from version 1 (the one to 3 replaces them).
_TRIGGERS_V2 = (
    """CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE meta SET bytes = bytes + NEW.size, entries = entries + 1, pending = pending + (NEW.accessed < 0)
    WHERE id = 0;
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE meta SET bytes = bytes - OLD.size, entries = entries - 1, pending = pending - (OLD.accessed < 0)
    WHERE id = 0;
END""",
    """CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries WHEN NEW.size != OLD.size BEGIN
    UPDATE meta SET bytes = bytes + NEW.size - OLD.size WHERE id = 0;
END""",
    _TRIGGERS_V3[3],  # entries_acc: the same in version 3
)

# ``entries.accessed`` and ``entries.hits`` are unused since version 4 (uses live in ``uses``); new rows get 0,
# which SQLite stores in no bytes. They stay because dropping columns rewrites the whole table.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    value BLOB,
    file TEXT,
    size INTEGER NOT NULL,
    frame_size INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    accessed REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS uses (
    id INTEGER PRIMARY KEY,
    accessed REAL NOT NULL,
    hits INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    bytes INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    version INTEGER NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    file_bytes INTEGER NOT NULL DEFAULT 0,
    file_slack INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO meta (id, bytes, entries, version, pending) VALUES (0, 0, 0, {SCHEMA_VERSION}, 0);
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires) WHERE expires IS NOT NULL;
{";".join(_TRIGGERS)};
"""

#: Eviction order per policy (after expired entries, which always go first): the one table in ``policies``.
POLICY_ORDER = ORDER_SQL
#: The index each policy orders by: (name, table and columns); fifo's is the rowid (ids only grow, and an
#: overwrite keeps its row: first-insertion order).
_POLICY_INDEX = {
    "lru": ("uses_lru", "uses(accessed)"),
    "lfu": ("uses_lfu", "uses(hits, accessed)"),
    "fifo": None,
    "time": ("entries_time", "entries(created)"),
}
#: The policies whose order lives in ``uses``.
_BY_USE = ("lru", "lfu")


def _order_query(policy: str) -> str:
    """Candidate victims (id, key, file, size) in ``policy``'s order."""
    if policy not in _BY_USE:
        return f"SELECT id, key, file, size FROM entries ORDER BY {POLICY_ORDER[policy]}"
    # CROSS JOIN: walk ``uses`` by the policy's index, then look each entry up by id.
    order = ", ".join(f"u.{column.strip()}" for column in POLICY_ORDER[policy].split(","))
    return f"SELECT e.id, e.key, e.file, e.size FROM uses AS u CROSS JOIN entries AS e ON e.id = u.id ORDER BY {order}"


_ORDER_QUERY = {policy: _order_query(policy) for policy in POLICY_ORDER}
#: Recount meta's value-file totals from the rows (a migration; cleanup(full=True)).
FILE_TOTALS = _FILE_TOTALS = (
    "UPDATE meta SET (file_bytes, file_slack) = (SELECT coalesce(sum(size), 0),"
    " coalesce(sum((4096 - (size - length(key)) % 4096) % 4096), 0) FROM entries WHERE file IS NOT NULL) WHERE id = 0"
)
_FILE_INDEX = "CREATE INDEX IF NOT EXISTS entries_file ON entries(file) WHERE file IS NOT NULL"
#: Make ``uses`` hold exactly one row per entry (cleanup(full=True); the triggers keep it so otherwise).
USES_RECONCILE = (
    "DELETE FROM uses WHERE id NOT IN (SELECT id FROM entries)",
    "INSERT INTO uses (id, accessed, hits) SELECT id, max(created, 0), 1 FROM entries"
    " WHERE id NOT IN (SELECT id FROM uses)",
)

WAL_CHECKPOINT_PAGES = 65_536
PAGE_CACHE_KIB = 32 * 1024
#: How much of a large index is read through a memory map (see map_if_large).
MMAP_BYTES = 1 << 30

#: How long a writer waits for another process's write lock before the cache reports a StorageError.
BUSY_TIMEOUT_S = 60.0


def evict(
    conn: sqlite3.Connection, policy: str, excess: int, now: float, keep: set[bytes],
    limit: int | None = None, slack: int = 0,
) -> tuple[list[str], int, int]:
    """Inside a write transaction: delete rows worth at least ``excess`` bytes, expired ones first, then by
    ``policy``, sparing the keys in ``keep`` unless they alone exceed the bound.

    ``limit``: delete at most that many rows (small transactions, for a full disk). ``slack``: then go on
    down to that many bytes under the bound, with victims that fit in it (see :func:`_take`).

    Returns the value files to unlink after the commit, and how many entries expired and were evicted.
    """
    files: list[str] = []
    expired = conn.execute("SELECT id, key, file, size FROM entries WHERE expires <= ? ORDER BY expires", (now,))
    excess, n_expired = _take(conn, expired, excess, set(), files, limit, slack)
    if limit is not None:
        limit -= n_expired
    n_evicted = 0
    order = _ORDER_QUERY[policy]
    for skip in (keep, set()):
        if excess <= 0 or (limit is not None and limit <= 0):
            break
        excess, n = _take(conn, conn.execute(order), excess, skip, files, limit, slack)
        n_evicted += n
        if limit is not None:
            limit -= n
    return files, n_expired, n_evicted


def _take(conn: sqlite3.Connection, cursor: sqlite3.Cursor, excess: int, skip: set[bytes],
          files: list[str], limit: int | None = None, slack: int = 0) -> tuple[int, int]:
    """Delete rows from ``cursor`` (in eviction order) until ``excess`` bytes are freed, then, while the next
    victim fits in what is left of ``slack``, some more (a batch that spares the next sets an eviction;
    never a large entry just for the slack). Returns the excess left (negative: freed beyond it)."""
    # Collect first, delete after: SQLite leaves changing a table under a running SELECT undefined.
    victims: list[tuple[int]] = []
    for entry_id, key, name, size in cursor:
        if key in skip:
            continue
        if (limit is not None and len(victims) >= limit) or (excess <= 0 and size > slack + excess):
            break
        victims.append((entry_id,))
        if name:
            files.append(name)
        excess -= size
        if excess <= 0 and slack + excess <= 0:
            break
    cursor.close()
    conn.executemany("DELETE FROM entries WHERE id = ?", victims)
    return excess, len(victims)


def is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


_DAMAGE_IOERRS = frozenset({"SQLITE_IOERR", "SQLITE_IOERR_READ", "SQLITE_IOERR_SHORT_READ"})


def is_damaged(exc: BaseException) -> bool:
    """An error that means the index file itself is damaged (not a lock, full disk or permission problem)."""
    if isinstance(exc, sqlite3.OperationalError):
        msg = str(exc).lower()
        if "disk i/o error" in msg:
            # Only a failed read means a damaged file; a failed write, fsync or shared-memory resize means a
            # full (or failing) disk, and "repairing" the index then would throw entries away.
            name = getattr(exc, "sqlite_errorname", "SQLITE_IOERR_READ")
            return name in _DAMAGE_IOERRS
        return "malformed" in msg
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
    )


def storage_error(exc: BaseException, where: str) -> StorageError:
    """Translate an OSError or SQLite error into the library's StorageError / DiskFullError."""
    msg = str(exc).lower()
    if df.is_no_space(exc) or "database or disk is full" in msg or (
        "disk i/o error" in msg and _no_space_left(where)
    ):
        return DiskFullError(
            f"The disk holding the cache at {where} is full; free disk space or lower the cache's size. "
            "The cache is unchanged."
        )
    if "readonly" in msg or "read-only" in msg or (
        isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    ):
        return StorageError(
            f"The cache directory {where} is not writable ({exc}); fix its permissions or point the cache "
            "at a writable directory. The cache is unchanged."
        )
    return StorageError(f"The cache at {where} could not complete a disk operation ({exc}). The cache is unchanged.")


def _no_space_left(where: str) -> bool:
    try:
        st = os.statvfs(where if os.path.isdir(where) else os.path.dirname(where))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def retry_busy(fn: Callable[[], T], where: str, timeout: float = BUSY_TIMEOUT_S) -> T:
    """Run ``fn`` again while SQLite says another process holds a lock, so "database is locked" never escapes."""
    deadline = 0.0
    delay = 0.00005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            elif now > deadline:
                raise StorageError(
                    f"The cache index at {where} stayed locked by another process for {timeout:.0f} s; "
                    "check for a hung process using the same cache directory."
                ) from exc
            # Jitter keeps two waiting processes from retrying in lockstep.
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.005)


@contextlib.contextmanager
def dir_lock(path: str) -> Iterator[None]:
    """An exclusive lock on the directory, held while opening (so only one process repairs at a time)."""
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def wal_pages(max_bytes: int) -> int:
    """Pages between checkpoints: 1/8 of the bound (never under 16 pages), at most 65,536 (256 MiB of WAL,
    reached at a 2 GiB bound), which keeps a small cache's directory within ``max(1.5 x size, size + 1 MiB)``.
    The price: a small cache checkpoints (two fsyncs) more often than a large one. Why a large cache gets a
    large WAL: at a million entries a batch of uses rewrites thousands of random pages, and every checkpoint
    writes each of them back to the index; the 90/10 mix at 1M entries ran 10-20% faster with 65,536 pages
    between checkpoints than with 10,000 (7 checkpoints in 15 s instead of 31-33), because pages rewritten
    by several batches are written back once."""
    return max(16, min(WAL_CHECKPOINT_PAGES, max_bytes // (8 * 4096)))


def checkpoint(conn: sqlite3.Connection, wait_s: float) -> bool:
    """Copy the WAL into the index and make the next writer start the WAL over (``RESTART``), waiting up to
    ``wait_s`` for other processes' readers and writers; True if it got that far.

    Why not SQLite's automatic checkpoint: it runs after any commit that leaves the WAL over its threshold,
    but the WAL only starts over when the next writer's snapshot is the fully copied one. With two processes
    writing, the other's commit nearly always comes in between, the WAL stays over the threshold, and every
    commit runs a checkpoint with two fsyncs (measured: 10,492 fdatasyncs in 6 s instead of 63, and two
    processes slower together than one alone). RESTART waits until readers have left the WAL, so it starts
    over; the cache calls this once its own commits have written about ``wal_pages()`` pages.
    """
    conn.execute(f"PRAGMA busy_timeout={max(0, int(wait_s * 1000))}")
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
    finally:
        conn.execute("PRAGMA busy_timeout=0")
    return not busy


def connect(db_path: str, sync: bool, max_bytes: int = 1 << 40) -> sqlite3.Connection:
    if not os.path.exists(db_path):
        # Create it ourselves so it is private; SQLite gives -wal and -shm the same mode.
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600))
    # timeout=0: SQLite's own busy handler sleeps 1 ms at its first retry, 30 times as long as a write holds
    # the lock here; retry_busy() waits 50 us first, which keeps two processes sharing a directory at full
    # speed. Every statement that can meet a lock goes through retry_busy.
    conn = sqlite3.connect(db_path, timeout=0, isolation_level=None, check_same_thread=False, cached_statements=128)
    try:
        # WAL: readers never block the writer; NORMAL: a commit is durable once the WAL is synced at
        # checkpoint, and the index stays consistent after kill -9 or power loss (only the last commits may
        # be lost). sync=True makes every commit durable (FULL) at the cost of an fsync per write.
        retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone(), db_path)
        conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
        # Checkpoints are the cache's own (see checkpoint()): SQLite's automatic one turns into two fsyncs
        # per commit when several processes write. A checkpoint costs two fsyncs; one every wal_pages()
        # pages instead of SQLite's 1,000 makes small sets about a quarter faster. The WAL file (outside the
        # size bound) may reach wal_pages() (1/8 of the bound, at most 256 MiB) per writing process; it is
        # not cut back below that after a checkpoint, because shrinking and regrowing it costs another ~15%
        # per set.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        # After a checkpoint the WAL file is cut back to about its checkpoint threshold (a small cache's bound).
        conn.execute(f"PRAGMA journal_size_limit={wal_pages(max_bytes) * 4120 + 32}")
        # SQLite's default page cache (2 MiB) makes a get-hit over a few thousand 1 KiB entries ~1.5x slower
        # once writes are mixed in; 32 MiB (diskcache's figure too) is used only as the index grows.
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        # No memory map of the index yet: see map_if_large().
    except BaseException:
        conn.close()
        raise
    return conn


def map_if_large(conn: sqlite3.Connection, index_bytes: int) -> bool:
    """Read the index through a memory map once it outgrows the page cache; True if it is mapped now.

    Why only then: while the index fits the page cache, a map made the steady-state get-hit slower (1.41x ->
    1.66x diskcache's in bench_disk.py: mapped pages are fetched again on every use, and writes keep
    changing them). Once it does not fit, most reads miss the page cache, and a page fault on the shared OS
    cache is cheaper than a read() copy into it (the 90/10 mix at 100k entries: +12% with the map)."""
    if index_bytes <= PAGE_CACHE_KIB * 1024:
        return False
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return True


def _remove_index(db_path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db_path + suffix)


def _setup(conn: sqlite3.Connection, policy: str, check: bool) -> bool:
    """Create the schema; return True if the index was empty (new or lost). Raises DatabaseError if damaged."""
    if check:
        result = retry_busy(lambda: conn.execute("PRAGMA quick_check").fetchone()[0], "index")
        if result != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result}")
    fresh: bool = retry_busy(
        lambda: conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'entries'").fetchone()[0] == 0,
        "index",
    )

    if fresh:
        # executescript commits first, so create the schema in its own script (it is idempotent).
        retry_busy(lambda: conn.executescript(_SCHEMA), "index")
    version = retry_busy(lambda: conn.execute("SELECT version FROM meta WHERE id = 0").fetchone(), "index")
    if version is not None and version[0] == 1:
        retry_busy(lambda: _upgrade(conn, 1, _step_from_1), "index")
        version = (2,)
    if version is not None and version[0] == 2:
        retry_busy(lambda: _upgrade(conn, 2, _step_from_2), "index")
        version = (3,)
    if version is not None and version[0] == 3:
        retry_busy(lambda: _upgrade(conn, 3, _step_from_3), "index")
        version = (SCHEMA_VERSION,)
    if version is not None and type(version[0]) is int and version[0] > SCHEMA_VERSION:
        # Never "repair" an index a newer version wrote: that would throw its entries away.
        raise NotACacheError(
            f"The disk cache index {INDEX_NAME} has version {version[0]}, written by a newer LlamaHome Cache "
            f"(this version reads {SCHEMA_VERSION}); upgrade llamahome-cache or use another directory."
        )
    if version is None or version[0] != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"unknown index version {version}")
    spec = _POLICY_INDEX[policy]
    if spec is not None:
        retry_busy(lambda: conn.execute(f"CREATE INDEX IF NOT EXISTS {spec[0]} ON {spec[1]}"), "index")
    # Value files by name (only rows that have one): cleanup checks a slice of data/ at a time against it.
    retry_busy(lambda: conn.execute(_FILE_INDEX), "index")
    return fresh


def _upgrade(conn: sqlite3.Connection, version: int, step: Callable[[sqlite3.Connection], None]) -> None:
    """Run ``step`` (the change from ``version`` to the next) in one write transaction, unless another
    process did it meanwhile."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT version FROM meta WHERE id = 0").fetchone()[0] == version:
            step(conn)
            conn.execute("UPDATE meta SET version = ? WHERE id = 0", (version + 1,))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    log.info("The disk cache index was upgraded from version %d to %d.", version, version + 1)


def _step_from_1(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2 in one transaction: meta.pending, the triggers that keep it, a partial lru index."""
    conn.execute("ALTER TABLE meta ADD COLUMN pending INTEGER NOT NULL DEFAULT 0")
    for name in ("entries_ins", "entries_del", "entries_upd"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for trigger in _TRIGGERS_V2:
        conn.execute(trigger)
    had_lru = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'entries_lru'"
    ).fetchone()[0]
    if had_lru:  # version 1's lru index covers every row; version 2's leaves unsettled rows out
        conn.execute("DROP INDEX entries_lru")
        conn.execute("CREATE INDEX entries_lru ON entries(accessed) WHERE accessed >= 0")


def _step_from_2(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3 in one transaction: inline values' checksums are bound to their keys (xxh3 seeded with
    the key's hash; rows whose value fails its old checksum are dropped: they would read as misses), and
    ``meta.file_bytes`` (bytes held in value files) with the triggers that keep it."""
    updates, damaged = [], []
    for entry_id, key, value, digest in conn.execute(
        "SELECT id, key, value, checksum FROM entries WHERE value IS NOT NULL"
    ):
        if isinstance(value, bytes) and isinstance(key, bytes) and df.checksum(value) == digest:
            updates.append((df.key_checksum(value, key), entry_id))
        else:
            damaged.append((entry_id,))
    conn.executemany("UPDATE entries SET checksum = ? WHERE id = ?", updates)
    conn.execute("ALTER TABLE meta ADD COLUMN file_bytes INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE meta ADD COLUMN file_slack INTEGER NOT NULL DEFAULT 0")
    for name in ("entries_ins", "entries_del", "entries_upd", "entries_acc"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for trigger in _TRIGGERS_V3:
        conn.execute(trigger)
    conn.execute(_FILE_TOTALS)
    conn.executemany("DELETE FROM entries WHERE id = ?", damaged)


def _step_from_3(conn: sqlite3.Connection) -> None:
    """Version 3 -> 4 in one transaction: uses move from the entries' rows into the narrow ``uses`` table (an
    unsettled row's use is its creation), with the triggers that keep it and the policy indexes over it."""
    conn.execute("CREATE TABLE IF NOT EXISTS uses (id INTEGER PRIMARY KEY, accessed REAL NOT NULL,"
                 " hits INTEGER NOT NULL)")
    conn.execute("INSERT OR REPLACE INTO uses (id, accessed, hits) SELECT id,"
                 " CASE WHEN accessed < 0 THEN max(created, 0) ELSE accessed END, hits FROM entries")
    for name in ("entries_ins", "entries_del", "entries_upd", "entries_acc"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for trigger in _TRIGGERS:
        conn.execute(trigger)
    for name in ("entries_lru", "entries_lfu"):
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    conn.execute("UPDATE meta SET pending = 0 WHERE id = 0")


def rebuild_from_files(conn: sqlite3.Connection, data_dir: str) -> tuple[int, int]:
    """Re-create rows for the value files whose header is intact; return (rebuilt, removed)."""
    rebuilt = removed = 0
    rows = []
    for path, name in df.value_files(data_dir):
        header = df.read_header(path)
        if header is None:
            # Only a file that is recognisably one of ours (a value file's magic, or empty) is removed.
            if df.own_file(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                removed += 1
            continue
        rows.append((header, name))
    retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), "index")
    try:
        # Newest first, so where two files hold the same key the newer one wins.
        for header, name in sorted(rows, key=lambda r: r[0].created, reverse=True):
            cur = conn.execute(
                "INSERT OR IGNORE INTO entries (key, value, file, size, frame_size, checksum, created, expires,"
                " accessed, hits) VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, 1)",
                (header.key, name, len(header.key) + header.file_size, header.frame_len, header.checksum,
                 header.created, header.expires, header.created),
            )
            if cur.rowcount:
                rebuilt += 1
            else:  # an older copy of a key we already have
                with contextlib.suppress(OSError):
                    os.unlink(df.file_path(data_dir, name))
                removed += 1
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return rebuilt, removed


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def header_looks_damaged(db_path: str) -> bool:
    """An O(1) look at the index file's 100-byte header: True if it is not SQLite's, or if the file is shorter
    than the page count the header records (a truncated file). Opening runs quick_check only then."""
    try:
        with open(db_path, "rb") as f:
            head = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if not head:
        return False  # a new (or emptied) file: nothing to check, the schema is created
    if len(head) < 100 or head[:16] != b"SQLite format 3\0":
        return True
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change, pages, valid_for = (int.from_bytes(head[i : i + 4], "big") for i in (24, 28, 92))
    # The page count is trusted only when the header says it is current (SQLite's own rule).
    return page_size < 512 or (change == valid_for and size < pages * page_size)


def open_index(
    root: str, data_dir: str, policy: str, sync: bool, check: bool | None = None, max_bytes: int = 1 << 40
) -> sqlite3.Connection:
    """Open (creating, checking and if need be repairing) the index of the cache directory ``root``.

    ``check``: run ``PRAGMA quick_check`` (None: only if :func:`header_looks_damaged`).
    A damaged index (not a database, malformed pages, failed quick_check) is removed with a warning in the
    log and rebuilt from the value files; entries kept inline in the lost index are gone (a cache may
    forget). An empty index next to existing value files (the index file was deleted) is rebuilt likewise.
    """
    db_path = os.path.join(root, INDEX_NAME)
    with dir_lock(root):
        if check is None:
            # Open in O(1): no scan of the whole index. Damage the header shows (truncation, foreign bytes) is
            # checked now; any other damage is found by the first operation that meets it (and repaired then),
            # and every read checks its own entry.
            check = header_looks_damaged(db_path)
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(db_path, sync, max_bytes)
            fresh = _setup(conn, policy, check)
        except NotACacheError:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            if is_busy(exc) or not is_damaged(exc):
                raise
            log.warning(
                "The disk cache index %s is damaged (%s); it was removed and is being rebuilt from the value "
                "files. Small entries stored inline in the index are lost; the cache keeps working.",
                db_path, exc,
            )
            _remove_index(db_path)
            conn = connect(db_path, sync, max_bytes)
            fresh = _setup(conn, policy, check=False)
        if fresh and any(True for _ in df.value_files(data_dir)):
            rebuilt, removed = rebuild_from_files(conn, data_dir)
            log.warning(
                "The disk cache at %s had no index but %d value files; rebuilt %d entries from them and "
                "removed %d unusable files.", root, rebuilt + removed, rebuilt, removed,
            )
        return conn

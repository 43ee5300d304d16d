"""The index object a DiskCache owns: its SQLite connection, write transactions, checkpoints and the batched
use bookkeeping that orders evictions.

``Index`` is the one place that holds the connection and the lock around it. DiskCache's hot paths use
:meth:`Index.conn` under :attr:`Index.lock` directly (a read is one statement); everything else goes through
:meth:`Index.write` / :meth:`Index.read`, which retry lock waits, repair a damaged index once and translate
errors. Upkeep (cleanup) calls the same methods; it never touches the connection's state itself.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from llamahome.errors import CacheClosedError, DiskFullError, StorageError

from ..stats import CacheStats
from . import _marker as dm
from . import _sqlite as dx
from ._log import log

__all__ = [
    "Index", "FULL_DISK_STEP", "ACCESS_FLUSH_INTERVAL", "ACCESS_BUFFER_MAX", "ACCESS_RESOLUTION_SPLIT",
    "DEFER_MIN_ENTRIES", "DEFER_BATCH_MAX", "DEFER_MAX_S", "FRONT_SPLIT", "OTHERS_CHECK_EVERY",
    "OTHERS_UNMAP_SHARE", "OTHERS_REMAP_SHARE",
]

T = TypeVar("T")

#: Access bookkeeping is written at most this often (seconds) ...
ACCESS_FLUSH_INTERVAL = 1.0
#: ... or when this many distinct entries were read since the last write.
ACCESS_BUFFER_MAX = 10_000
#: lru access times are recorded to 1/64 of the age span of the entries (no absolute floor, so a cache that
#: turns over many times a second still orders its evictions by use): reads of an entry used more recently
#: than that cost no bookkeeping at all, and cannot change which entries go first by more than 1/64 of it.
ACCESS_RESOLUTION_SPLIT = 64
#: From this many entries on, an lru cache writes only the uses that can matter soon within the second: those
#: of entries in the oldest 1/FRONT_SPLIT of the order (the front, where evictions take victims). Uses of the
#: other entries wait for a batch of DEFER_BATCH_MAX (at most 1/16 of the entries) or DEFER_MAX_S. Why: with
#: uniform reads over a large cache, each use rewrites a random page of ``uses`` and one of its lru index, and
#: a batch of 10k uses over 1M entries touches each page about once (15 us a use, measured on a raw 1M-row
#: table); a batch of 64k touches each several times (5 us). Below DEFER_MIN_ENTRIES a second's batch already
#: rewrites each page many times, and every use is written within the second as before.
DEFER_MIN_ENTRIES = 200_000
DEFER_BATCH_MAX = 65_536
DEFER_MAX_S = 10.0
FRONT_SPLIT = 8
#: Every this many reads or commits a process looks whether other processes committed to the index since
#: its last look; it reads a large index without the memory map while more than half of its recent looks
#: (a moving average over about 32) saw their commits, and maps it again below 1/8 (see notice_others).
OTHERS_CHECK_EVERY = 1024
OTHERS_UNMAP_SHARE = 0.5
OTHERS_REMAP_SHARE = 0.125
#: How long a checkpoint waits for other processes' transactions to leave the WAL (see _sqlite.checkpoint).
CHECKPOINT_WAIT_S = 0.05

#: Rows deleted per transaction when the disk is full (each writes a few pages to the WAL).
FULL_DISK_STEP = 4

_FLUSH = "UPDATE uses SET accessed = max(accessed, ?), hits = hits + ? WHERE id = ?"


class Index:
    """The SQLite index of one cache directory, as one process sees it.

    Holds the connection (reopened after fork or damage), the write-transaction wrapper, this process's WAL
    accounting and checkpoints, the buffered uses (lru/lfu) and the reserve file used on a full disk.
    """

    def __init__(self, root: str, data_dir: str, policy: str, max_bytes: int, *, sync: bool,
                 check_on_open: bool | None, clock: Callable[[], float], stats: CacheStats) -> None:
        self.root = root
        self.data_dir = data_dir
        self.policy = policy
        self.max_bytes = max_bytes
        self.clock = clock
        self.lock = threading.RLock()
        self._stats = stats
        self._sync = sync
        self._check_on_open = check_on_open
        self.track = policy in ("lru", "lfu")
        self.lfu = policy == "lfu"
        #: lru uses more recent than this (seconds) are not recorded again; 0 until the first flush measures
        #: the entries' age span, so every use is recorded until then.
        self.resolution = 0.0
        #: Uses of entries recorded at or before this time are urgent (written within ACCESS_FLUSH_INTERVAL); later
        #: ones are deferred (see DEFER_MIN_ENTRIES). inf: every use is urgent (small caches, lfu).
        self.front = math.inf
        self._access: dict[int, list[Any]] = {}  # urgent uses: entry id -> [last use, count]
        self._later: dict[int, list[Any]] = {}  # deferred uses, the same shape
        self._later_max = DEFER_BATCH_MAX
        self._last_full = self._front_at = time.monotonic()
        # Rows a batch of uses changed beyond the pages it can have written (see flush_access and wrote).
        self._uses_pages_saved = 0
        self._last_flush = time.monotonic()
        # WAL pages this process's commits wrote since its last checkpoint (an upper estimate, see wrote());
        # at wal_pages() it checkpoints (SQLite's automatic checkpoint is off, see _sqlite.checkpoint).
        self.wal_frames = 0
        self.wal_limit = dx.wal_pages(max_bytes)
        self.reserve = dm.reserve_bytes(max_bytes)
        #: A set that has to evict evicts this much more (1/64 of the bound, at most 1 MiB): one evicting
        #: transaction then serves many sets, instead of every set at the bound deleting one victim.
        self.slack = min(max_bytes // 64, 1024 * 1024)
        #: What the entries (keys, inline values, value files) may take: the bound less what the directory
        #: needs around them (the index's pages beyond the inline values, the files' last blocks) beyond
        #: an allowance of 1/20 of the bound, so that ``du`` of a closed cache stays within 1.05 x the bound
        #: plus the reserve. Set by :meth:`measure`.
        self.limit = max_bytes
        self.closed = False
        # The first of the data/ fan-out folders the next cleanup checks (a slice at a time, see _upkeep);
        # a random start so that processes sharing the directory check different slices.
        self.upkeep_cursor = random.randrange(16) * 16
        self._mapped = False  # whether the connection reads the index through a memory map (see measure)
        #: Reads and commits left before the next look at other processes' commits (see notice_others).
        self.until_check = OTHERS_CHECK_EVERY
        self._data_version: int | None = None
        self.others_share = 0.0  # moving average: the share of recent looks that saw other processes' commits
        self._unmapped = False  # whether notice_others took the map away (and so may give it back)
        self._db: sqlite3.Connection | None = None
        self._stale: list[sqlite3.Connection] = []
        self._ino: int | None = None
        reserve_used = False
        try:
            self._db = self._open_once(None)
        except DiskFullError:
            # Opening may need room for the WAL and its shared-memory file: a full disk gets the reserve.
            if not dm.release_reserve(root):
                raise
            log.warning("The disk holding the cache at %s is full; the cache gave up its reserve to open.", root)
            reserve_used = True
            self._db = self._open_once(None)
        if not reserve_used:  # a reserve just given up to open stays free for what comes next
            dm.ensure_reserve(root, self.reserve)
        self.measure()

    # ------------------------------------------------------------------------------------------ connection

    def _open_once(self, check: bool | None) -> sqlite3.Connection:
        try:
            conn = dx.open_index(self.root, self.data_dir, self.policy, self._sync,
                                 self._check_on_open if check is None else check, self.max_bytes)
            self._ino = os.stat(os.path.join(self.root, dx.INDEX_NAME)).st_ino
            self._mapped = False
            self._data_version = None  # PRAGMA data_version is per connection
            return conn
        except StorageError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise dx.storage_error(exc, self.root) from exc

    def reopen(self, check: bool | None = None) -> None:
        """Close and open the connection again (``check``: run quick_check first)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        self._access.clear()
        self._db = self._open_once(check)

    def conn(self) -> sqlite3.Connection:
        """The connection (opened on first use after a fork); raises CacheClosedError after close()."""
        if self.closed:
            raise CacheClosedError(f"The disk cache at {self.root} was used after close(); open a new DiskCache.")
        if self._db is None:
            self._db = self._open_once(None)
        return self._db

    @property
    def connected(self) -> sqlite3.Connection | None:
        """The open connection, or None (closed, or not yet reopened after a fork)."""
        return self._db

    def forget_after_fork(self) -> None:
        if self._db is not None:
            self._stale.append(self._db)  # never close it in the child: that would disturb the parent
        self._db = None
        self.lock = threading.RLock()
        self._access = {}
        self._later = {}

    def check_identity(self) -> None:
        """Reopen if another process replaced a damaged index file under us (ours would be a ghost)."""
        try:
            on_disk: int | None = os.stat(os.path.join(self.root, dx.INDEX_NAME)).st_ino
        except OSError:
            on_disk = None
        if on_disk != self._ino:
            with self.lock:
                self.reopen()

    def close(self) -> None:
        """Write pending bookkeeping, checkpoint this process's commits and close. Idempotent."""
        with self.lock:
            if self.closed:
                return
            if self._db is not None:
                if self._access or self._later:
                    with contextlib.suppress(Exception):
                        self.write(lambda conn: self.flush_access(conn))
                if self.wal_frames:
                    self.checkpoint(wait_s=0)  # the last connection to close checkpoints anyway; others may not
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                # Put back a reserve given up on a full disk, now that the WAL may have gone with the connection.
                self.restore_reserve()
            self._db = None
            self.closed = True

    # ------------------------------------------------------------------------------------------ transactions

    def guard(self, fn: Callable[[], T]) -> T:
        """Run an index operation: retry lock waits, repair a damaged index once, translate errors."""
        for attempt in (0, 1):
            try:
                return dx.retry_busy(fn, self.root)
            except (StorageError, CacheClosedError):
                raise
            except sqlite3.Error as exc:
                if attempt == 0 and dx.is_damaged(exc):
                    log.warning("The disk cache index at %s failed (%s); reopening it with a check.", self.root, exc)
                    self.reopen(check=True)
                    continue
                self._stats.errors += 1
                raise dx.storage_error(exc, self.root) from exc
            except OSError as exc:
                self._stats.errors += 1
                raise dx.storage_error(exc, self.root) from exc
        raise AssertionError("unreachable")

    def write(self, body: Callable[[sqlite3.Connection], T], on_abort: Callable[[], None] | None = None,
              inline_bytes: int = 0) -> T:
        """Run ``body`` in one write transaction (BEGIN IMMEDIATE ... COMMIT) that writes ``inline_bytes`` of
        values into the index."""

        def attempt() -> tuple[T, int]:
            conn = self.conn()
            changes = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if on_abort is not None:
                    on_abort()
                raise
            return result, conn.total_changes - changes

        with self.lock:
            result, changes = self.guard(attempt)
            self.wrote(changes, inline_bytes)
            return result

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """One row (or None)."""
        with self.lock:
            return self.guard(lambda: self.conn().execute(sql, params).fetchone())

    def read_all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.lock:
            return self.guard(lambda: self.conn().execute(sql, params).fetchall())

    def totals(self) -> tuple[int, int]:
        """``(bytes, entries)`` of every process, from the shared meta row (kept exact by triggers)."""
        row = self.read("SELECT bytes, entries FROM meta WHERE id = 0")
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def wrote(self, changes: int, inline_bytes: int) -> None:
        """After a commit that changed ``changes`` rows and wrote ``inline_bytes`` of values into the index:
        checkpoint once this process's commits have written about ``wal_pages()`` pages to the WAL."""
        pages = 2 + changes - self._uses_pages_saved
        self._uses_pages_saved = 0
        if inline_bytes > 4096:  # values over a page take overflow pages
            pages += (inline_bytes + 4095) // 4096
        if changes > 256 and self._db is not None:
            # A batch (uses, evictions, set_many) writes each page once: at most every page of the index.
            with contextlib.suppress(sqlite3.Error):
                pages = min(pages, 2 + self._db.execute("PRAGMA page_count").fetchone()[0])
        self.wal_frames += pages
        if self.wal_frames >= self.wal_limit:
            self.checkpoint()
        self.until_check -= 1
        if self.until_check <= 0:
            self.notice_others()

    def notice_others(self) -> None:
        """Whether other processes commit to the index often (PRAGMA data_version moves without us): while they
        do, read it without the memory map. Each of their commits makes SQLite unmap the index from this
        connection, so the next reads fault every page in again: at 1M entries a reader's CPU per get went from
        15 to 33-37 us while another process set 2,000 entries a second, against 18-20 us unmapped. A process
        alone, or beside processes that commit now and then (batches of uses), keeps the map (the one-process
        1M 90/10 mix: 47-54k ops/s mapped, 32-44k not). Called every OTHERS_CHECK_EVERY reads and commits
        (never raises)."""
        self.until_check = OTHERS_CHECK_EVERY
        conn = self._db
        if conn is None:
            return
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            others = self._data_version is not None and version != self._data_version
            self._data_version = version
            self.others_share = self.others_share * (31 / 32) + (1 / 32 if others else 0.0)
            if self._mapped and self.others_share > OTHERS_UNMAP_SHARE:
                conn.execute("PRAGMA mmap_size=0")
                self._mapped = False
                self._unmapped = True
                return
        except sqlite3.Error:
            return
        if self._unmapped and self.others_share < OTHERS_REMAP_SHARE:
            self._unmapped = False
            self.measure()  # maps the index again

    def checkpoint(self, wait_s: float = CHECKPOINT_WAIT_S) -> None:
        """Copy the WAL into the index and let it start over (never raises: the next operation reports damage)."""
        conn = self._db
        if conn is None:
            return
        try:
            done = dx.checkpoint(conn, wait_s)
        except sqlite3.Error as exc:
            log.debug("Disk cache checkpoint of %s failed: %s", self.root, exc)
            done = False
        # Not done (other processes held the lock or stayed in the WAL): try again after a quarter as much.
        self.wal_frames = 0 if done else self.wal_limit * 3 // 4
        if done:
            self.measure()

    def measure(self) -> None:
        """Set :attr:`limit` from what the directory holds besides the entries: the index's pages in use less
        the inline bytes in them, the value files' last blocks and the marker, beyond an allowance of 1/20 of
        the bound (the folders are outside: up to 259 blocks of 4 KiB). Outside: the reserve (1/64 of the bound, 128 KiB to 1 MiB), the WAL (at most 1/8 of the bound;
        gone once the last process closes) and the index's free pages (reused by the next writes; the file
        does not shrink). Never below half the bound. Called on open and after each checkpoint (never
        raises)."""
        conn = self._db
        if conn is None:
            return
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute(
                "PRAGMA freelist_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            total, file_bytes, file_slack = conn.execute(
                "SELECT bytes, file_bytes, file_slack FROM meta WHERE id = 0").fetchone()
            if not self._mapped and self.others_share < OTHERS_REMAP_SHARE:
                self._mapped = dx.map_if_large(conn, pages * page_size)
        except sqlite3.Error:
            return
        # + the marker's block; value files take whole 4 KiB blocks (file_slack: what their last ones leave).
        # The folders are left out (up to 259 blocks: data/, tmp/, the root and 256 fan-out folders).
        around = max(0, pages * page_size - (total - file_bytes)) + 4096 + file_slack
        self.limit = max(self.max_bytes // 2, self.max_bytes - max(0, around - self.max_bytes // 20))

    # ------------------------------------------------------------------------------------------ uses

    def note_use(self, entry_id: int, now: float, accessed: float = -math.inf) -> None:
        """Buffer a use of ``entry_id`` whose last recorded use is ``accessed`` (written by a later flush)."""
        buffer = self._access if accessed <= self.front else self._later
        seen = buffer.get(entry_id)
        if seen is None:
            buffer[entry_id] = [now, 1]
        else:
            seen[0] = max(seen[0], now)
            seen[1] += 1

    def hit(self, entry_id: int, now: float, accessed: float) -> None:
        """A read of ``entry_id`` (last use recorded at ``accessed``): lfu counts every use; lru keeps access
        times to a resolution (like the file system's relatime)."""
        if self.track and (self.lfu or not now - accessed < self.resolution):
            self.note_use(entry_id, now, accessed)
            if self.flush_due():
                self._flush_soon()

    def flush_due(self) -> bool:
        """Whether urgent uses have waited a second (or filled a batch), or deferred ones are due."""
        now = time.monotonic()
        return (bool(self._access) and (len(self._access) >= ACCESS_BUFFER_MAX
                                        or now - self._last_flush >= ACCESS_FLUSH_INTERVAL)
                ) or self._later_due(now)

    def _later_due(self, now: float) -> bool:
        return bool(self._later) and (len(self._later) >= self._later_max or now - self._last_full >= DEFER_MAX_S)

    def forget_uses(self) -> None:
        self._access.clear()
        self._later.clear()

    def flush_access(self, conn: sqlite3.Connection, everything: bool = True) -> None:
        """Write the buffered uses into ``uses`` (inside a write transaction): the urgent ones, and the deferred
        ones too when ``everything`` (before an eviction, on cleanup and close) or when they are due."""
        later = bool(self._later) and (everything or self._later_due(time.monotonic()))
        rows = [(t, n, i) for i, (t, n) in self._access.items()]
        if later:
            rows += [(t, n, i) for i, (t, n) in self._later.items()]
            self._later.clear()
            self._last_full = time.monotonic()
        if rows:
            rows.sort(key=lambda row: row[2])  # in id order: neighbouring rows share pages
            conn.executemany(_FLUSH, rows)
            # wrote() counts each changed row as a page; uses rows are narrow (~150 a page, and as many in
            # the policy's index), so a batch rewrites at most about two pages per 150 entries.
            entries = conn.execute("SELECT entries FROM meta WHERE id = 0").fetchone()[0]
            pages = 4 + 2 * (entries // 150)
            self._uses_pages_saved += max(0, len(rows) - pages)
            self._access.clear()
            if self.policy == "lru":
                self._measure_order(conn, entries)
        self._last_flush = time.monotonic()

    def _measure_order(self, conn: sqlite3.Connection, entries: int) -> None:
        """After writing uses (lru): the resolution (finer than 1/64 of the age span of the entries cannot
        change which entries go first) and, every DEFER_MAX_S in a large cache, the front."""
        oldest = conn.execute("SELECT min(accessed) FROM uses").fetchone()[0]
        span = self.clock() - oldest if oldest is not None else 0.0
        self.resolution = max(0.0, span / ACCESS_RESOLUTION_SPLIT)
        if entries < DEFER_MIN_ENTRIES:
            self.front = math.inf
        elif self.front == math.inf or time.monotonic() - self._front_at >= DEFER_MAX_S:
            row = conn.execute("SELECT accessed FROM uses ORDER BY accessed LIMIT 1 OFFSET ?",
                               (entries // FRONT_SPLIT,)).fetchone()
            self.front = math.inf if row is None else row[0]
            self._later_max = min(DEFER_BATCH_MAX, entries // 16)
            self._front_at = time.monotonic()

    def _flush_soon(self) -> None:
        """Flush from the read path without waiting: if another process holds the write lock, try later."""
        self._last_flush = time.monotonic()
        conn = self.conn()
        changes = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")  # fails at once if another process writes (no busy timeout)
        except sqlite3.Error:
            if len(self._access) > 4 * ACCESS_BUFFER_MAX:
                self._access.clear()  # bookkeeping is advisory; never let it grow without bound
            if len(self._later) > 2 * self._later_max:
                self._later.clear()
            return
        try:
            self.flush_access(conn, everything=False)
            conn.execute("COMMIT")
            self.wrote(conn.total_changes - changes, 0)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.debug("Could not write disk cache access times: %s", exc)

    # ------------------------------------------------------------------------------------------ eviction

    def evict(self, conn: sqlite3.Connection, now: float, keep: builtins.set[bytes], total: int | None = None,
              limit: int | None = None, batch: bool = False) -> list[str]:
        """Inside a write transaction: delete entries until the shared total is within the bound (``limit``: at
        most that many rows;
        ``batch``: down to the low-water mark, :attr:`slack` under the bound, so that the next sets need not
        evict). Returns the value files to unlink after the commit."""
        if total is None:
            total = conn.execute("SELECT bytes FROM meta WHERE id = 0").fetchone()[0]
        if total <= self.limit:
            return []
        self.flush_access(conn)  # so this process's own uses count in the order
        files, n_expired, n_evicted = dx.evict(conn, self.policy, total - self.limit, now, keep, limit,
                                               self.slack if batch else 0)
        self._stats.expirations += n_expired
        self._stats.evictions += n_evicted
        return files

    # ------------------------------------------------------------------------------------------ a full disk
    # Deleting entries writes to the index (its WAL), which needs room. On a full disk the cache removes value
    # files first (they hold the space), gives up its reserve file (see _marker) and deletes rows in small
    # transactions with a checkpoint after each, so the WAL is reused instead of grown.

    def release_reserve(self) -> None:
        if dm.release_reserve(self.root):
            log.warning("The disk holding the cache at %s is full; the cache gave up its %d-byte reserve to free "
                        "space.", self.root, self.reserve)

    def restore_reserve(self) -> None:
        dm.ensure_reserve(self.root, self.reserve)

    def in_small_steps(self, step: Callable[[sqlite3.Connection], list[Any]],
                       deleted: Callable[[list[Any]], None]) -> None:
        """Run ``step`` (which deletes a few rows and returns them) until it deletes nothing, checkpointing
        after each transaction so the WAL starts over instead of growing; ``deleted`` gets each step's rows."""
        while True:
            rows = self.write(step)
            with self.lock:
                self.checkpoint(wait_s=0)
            if not rows:
                return
            deleted(rows)

"""DiskCache: a persistent store on a local directory, shared safely by several processes.

Layout of the cache directory (0700; files 0600)::

    .llamahome-cache               the marker: kind, format, bound and policy (see disk_marker)
    index.sqlite3 (+ -wal, -shm)   SQLite in WAL mode: one row per entry, small values inline
    data/ab/<32 hex>               one file per large value (random names: never derived from the key)
    tmp/<pid>-<32 hex>.tmp         values being written
    lock                           held only while opening (one process repairs at a time)
    reserve                        space given up to free entries on a full disk (see disk_marker)

The cache acts only on files it recognises as its own (name and header), never through a symlink; every
entry is bound to its key (an inline value's checksum is seeded with the key's hash, a value file's header
holds the key), so a damaged or swapped key in the index reads as a miss, never as another key's value.

How a write stays atomic (kill -9 at any instant leaves the old value, the new value or a miss):

1. The value is encoded and written to ``tmp/`` outside any lock, in large ``writev`` calls (no joining copy).
2. ``BEGIN IMMEDIATE`` takes the index's write lock; the temp file is renamed into ``data/`` *inside* the
   transaction, so cleanup (which lists ``data/`` and then checks the index under the same lock) can never
   mistake a file about to be committed for an orphan.
3. One transaction replaces the row, evicts to the bound (the totals live in the index, kept by triggers, so
   the bound holds across every process), and commits. Files of replaced or evicted entries are unlinked
   after the commit; a kill in between leaves orphan files that ``cleanup()`` removes.

Durability: WAL with ``synchronous=NORMAL`` keeps the index consistent after kill -9 or a crash; the last
commits before a power loss may be lost. Value files are not fsynced (``sync=True`` fsyncs them and commits
with ``synchronous=FULL``); a value file damaged by a power loss fails its xxh3 checksum and reads as a miss.
Every read verifies the checksum, so a damaged entry is never returned: it is removed, logged and counted in
``stats.corrupt``.

LRU/LFU bookkeeping is batched, never a write per read: reads record access times in memory, written in one
transaction at most once a second, before any eviction decision, on ``cleanup()`` and on ``close()``. For lru
uses are recorded to a resolution: an entry whose recorded use is less than 1/64 of the entries' age span old
keeps its place when read or rewritten, as ``relatime`` does for file access times and memcached for its LRU
(it bumps an item at most once a minute). There is no absolute floor: a cache that turns over many times a
second still evicts by use. A set that rewrites an existing entry never
moves it in the lru/lfu index itself: when its recorded use is older than the resolution, the use joins the
same batch as reads (a write transaction that is due anyway carries the batch along), because moving the
index entry inside every set would cost a third of a small set. Other processes see this process's uses after
its next flush (at most about a second); each process's own evictions always see them, since the batch is
written in the evicting transaction before victims are chosen, and the keys being set are never victims.
An lru insert does not enter the lru index either: the row is written "unsettled" (``accessed = -1``, out of
the partial lru index) and its use, its creation time, is written with the next batch of any process, and
always before an eviction chooses victims (see ``disk_index.settle``); that saves a quarter of a small insert.

Several processes: every write is one ``BEGIN IMMEDIATE`` transaction; a process that finds the write lock
taken retries after short jittered sleeps (from 50 us) for up to 60 s and only then raises StorageError, so
"database is locked" never reaches the caller. Readers never wait (WAL).

Damage: a missing, truncated or corrupt index is found on open (``PRAGMA quick_check`` for indexes up to
64 MiB) or by the first operation that meets it; the index is then removed with a warning in the log and
rebuilt from the value files, whose headers carry key, times and checksum (small inline entries are lost).

Checkpoints: SQLite's automatic checkpoint is off; each process copies the WAL back into the index and lets it
start over (``RESTART``) once its own commits have written about ``wal_pages()`` pages (see
``disk_index.checkpoint`` for why: with two writing processes the automatic one fsynced on every commit).

Space outside the bound: SQLite's page overhead and its WAL (1/16 of the bound between checkpoints, at most
about 40 MiB per writing process), the reserve and the marker.
POSIX only (fcntl locks, fork handling).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from llamahome.errors import (
    CacheClosedError,
    CacheError,
    CacheValueError,
    ConfigError,
    DiskFullError,
    StorageError,
    ValueTooLargeError,
)

from . import codecs
from . import disk_files as df
from . import disk_index as dx
from . import disk_marker as dm
from .base import MISSING, Key, Store, key_to_bytes, validate_key, validate_ttl
from .stats import CacheStats, CleanupReport
from .units import size_to_bytes

__all__ = ["DiskCache", "POLICIES", "INLINE_MAX"]

log = logging.getLogger("llamahome.cache.disk")
T = TypeVar("T")

POLICIES = tuple(dx.POLICY_ORDER)
#: The bound and policy of a new cache opened without them (an existing one keeps its stored ones).
DEFAULT_BYTES = 10000 * 1024 * 1024
DEFAULT_POLICY = "lru"
#: Frames smaller than this live inline in the index row; larger ones get a value file.
INLINE_MAX = 32 * 1024
#: Access bookkeeping is written at most this often (seconds) ...
ACCESS_FLUSH_INTERVAL = 1.0
#: ... or when this many distinct entries were read since the last write.
ACCESS_BUFFER_MAX = 10_000
#: lru access times are recorded to 1/64 of the age span of the entries (no absolute floor, so a cache that
#: turns over many times a second still orders its evictions by use): reads of an entry used more recently
#: than that cost no bookkeeping at all, and cannot change which entries go first by more than 1/64 of it.
ACCESS_RESOLUTION_SPLIT = 64
#: How long a checkpoint waits for other processes' transactions to leave the WAL (see disk_index.checkpoint).
CHECKPOINT_WAIT_S = 0.05
#: Temp files older than this are removed by cleanup() even if their writer's pid looks alive.
TMP_MAX_AGE = 3600.0
_MB = 1024 * 1024
_K_TREE, _K_PICKLE = 7, 8
_SQL_CHUNK = 500
#: Rows deleted per transaction when the disk is full (each writes a few pages to the WAL).
_FULL_DISK_STEP = 4

# The last recorded use; an unsettled row's (see disk_index.settle) is its creation.
_COLS = "id, value, file, checksum, expires, frame_size, CASE WHEN accessed < 0 THEN created ELSE accessed END"
_GET = f"SELECT {_COLS} FROM entries WHERE key = ?"
# Under the write lock the entry being replaced is read first (its file goes after the commit; its id lets
# the row be updated in place, cheaper than an upsert), together with the shared total, in one step.
_BEFORE = (
    "SELECT m.bytes, e.id, e.file, e.size, e.accessed, e.created FROM meta AS m LEFT JOIN entries AS e ON e.key = ?"
    " WHERE m.id = 0"
)
_INSERT = (
    "INSERT INTO entries (key, value, file, size, frame_size, checksum, created, expires, accessed, hits)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
)
_UPDATE = (
    "UPDATE entries SET value = ?, file = ?, size = ?, frame_size = ?, checksum = ?, created = ?, expires = ?,"
    " accessed = ?, hits = hits + 1 WHERE id = ?"
)
# lru, rewriting an entry used within the access resolution: its place in the order stays (as for reads), and
# the lru index is not touched (a third of the cost of a small set).
_UPDATE_IN_PLACE = (
    "UPDATE entries SET value = ?, file = ?, size = ?, frame_size = ?, checksum = ?, created = ?, expires = ?"
    " WHERE id = ?"
)
_FLUSH = "UPDATE entries SET accessed = max(accessed, ?), hits = hits + ? WHERE id = ?"

_live: weakref.WeakSet[DiskCache] = weakref.WeakSet()


class _Retry:
    """Returned by a file read that raced with a rewrite of the entry: look the key up again."""

    def __repr__(self) -> str:
        return "RETRY"


_RETRY: Any = _Retry()


def _after_fork_in_child() -> None:
    # A SQLite connection must not cross fork(); the child opens its own on first use.
    for cache in list(_live):
        cache._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class _Pending:
    """One encoded value ready to commit: inline bytes, or a finished temp file."""

    key: bytes
    value: bytes | None
    name: str | None
    tmp: str | None
    size: int
    frame_size: int
    digest: int
    expires: float | None
    raw_size: int


def _key_repr(key: bytes) -> str:
    text = repr(key[1:] if key[:1] == b"b" else key[1:].decode("utf-8", "replace"))
    return text if len(text) <= 80 else text[:77] + "..."


class DiskCache(Store):
    """A size-bounded, persistent, multi-process key-value store in a directory.

    ``size`` is the bound in MB (1 MB = 1 MiB; strings such as ``"4GB"`` work too; None: the bound stored in
    the directory's marker, else 10000) over what the entries
    occupy: key bytes, inline values and value files (SQLite's page overhead and its WAL are not counted). It
    holds across every process sharing ``path`` (each enforces its own ``size`` when it writes: open the
    directory with the same size everywhere; the last one given is stored). ``policy`` (None: the stored one,
    else ``lru``) picks what to evict: ``lru``, ``lfu`` (reads are
    recorded in memory and written in batches), ``fifo`` (first insertion) or ``time`` (oldest write);
    expired entries always go first. ``compression`` tries zstd where it pays; ``allow_pickle`` lets values
    the safe codecs cannot express be pickled (only for caches every writer of which you trust); ``clock``
    is the time source for ttl and the policies; ``sync=True`` fsyncs every write (survives power loss, much
    slower); ``check_on_open`` runs SQLite's quick_check on open (default: when the index is under 64 MiB).

        cache = DiskCache("./cache", size=512)
        cache.set("emb:42", np.arange(4, dtype=np.float32), ttl=3600)
        cache.get("emb:42", mmap=True)    # a read-only array mapped from the file (zero-copy) if large
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: float | str | None = None,
        policy: str | None = None,
        compression: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        allow_pickle: bool = False,
        name: str = "disk",
        sync: bool = False,
        inline_max: int = INLINE_MAX,
        check_on_open: bool | None = None,
    ) -> None:
        if policy is not None and policy not in POLICIES:
            raise ConfigError(f"DiskCache policy must be one of {', '.join(POLICIES)}, not {policy!r}.")
        max_bytes: int | None = None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, (int, float, str)):
                raise ConfigError(f"DiskCache size must be a number of MB or a string such as '4GB', not {size!r}.")
            try:
                max_bytes = size_to_bytes(size)
            except ValueError as exc:
                raise ConfigError(f"DiskCache size: {exc}") from None
        self.name = name
        self.path = os.path.abspath(os.fspath(path))
        self._data = os.path.join(self.path, "data")
        self._tmp = os.path.join(self.path, "tmp")
        try:
            # Refuses a directory that is not a disk cache before anything is written into it.
            self.max_bytes, policy = dm.claim(self.path, max_bytes, policy, DEFAULT_BYTES, DEFAULT_POLICY)
            for folder in (self._data, self._tmp):
                df.ensure_real_dir(folder)
        except CacheError:
            raise
        except OSError as exc:
            raise dx.storage_error(exc, self.path) from exc
        self._reserve = dm.reserve_bytes(self.max_bytes)
        self.policy = policy if policy in POLICIES else DEFAULT_POLICY  # a hand-edited marker
        self.compression = bool(compression)
        self._clock = clock
        self._allow_pickle = allow_pickle
        self._sync = sync
        self._inline_max = inline_max
        self._check_on_open = check_on_open
        self._stats = CacheStats(name=name, max_bytes=self.max_bytes)
        self._lock = threading.RLock()
        self._track = policy in ("lru", "lfu")
        self._lfu = policy == "lfu"
        # No floor: until the first flush measures the entries' age span, every use is recorded.
        self._resolution = 0.0
        self._access: dict[int, list[Any]] = {}
        # lru inserts leave their use to the next flush (disk_index.settle); set when this process did so.
        self._unsettled = False
        self._new_used: float | None = dx.UNSETTLED if policy == "lru" else None
        self._last_flush = time.monotonic()
        # WAL pages this process's commits wrote since its last checkpoint (an upper estimate, see _wrote());
        # at wal_pages() it checkpoints (SQLite's automatic checkpoint is off, see disk_index.checkpoint).
        self._wal_frames = 0
        self._wal_limit = dx.wal_pages(self.max_bytes)
        self._closed = False
        self._db: sqlite3.Connection | None = None
        self._stale: list[sqlite3.Connection] = []
        self._index_ino: int | None = None
        self._reserve_used = False
        self._db = self._open()
        if not self._reserve_used:  # a reserve just given up to open stays free for what comes next
            dm.ensure_reserve(self.path, self._reserve)
        _live.add(self)

    # ------------------------------------------------------------------------------------------ plumbing

    def _open(self, check: bool | None = None) -> sqlite3.Connection:
        try:
            return self._open_once(check)
        except DiskFullError:
            # Opening may need room for the WAL and its shared-memory file: a full disk gets the reserve.
            if not dm.release_reserve(self.path):
                raise
            log.warning("The disk holding the cache at %s is full; the cache gave up its reserve to open.", self.path)
            self._reserve_used = True
            return self._open_once(check)

    def _open_once(self, check: bool | None) -> sqlite3.Connection:
        try:
            conn = dx.open_index(self.path, self._data, self.policy, self._sync,
                                 self._check_on_open if check is None else check, self.max_bytes)
            self._index_ino = os.stat(os.path.join(self.path, dx.INDEX_NAME)).st_ino
            return conn
        except StorageError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise dx.storage_error(exc, self.path) from exc

    def _reopen(self, check: bool | None = None) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        self._access.clear()
        self._db = self._open(check)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise CacheClosedError(f"The disk cache at {self.path} was used after close(); open a new DiskCache.")
        if self._db is None:
            self._db = self._open()
        return self._db

    def _forget_after_fork(self) -> None:
        if self._db is not None:
            self._stale.append(self._db)  # never close it in the child: that would disturb the parent
        self._db = None
        self._lock = threading.RLock()
        self._access = {}

    def _recover(self, exc: BaseException) -> None:
        log.warning("The disk cache index at %s failed (%s); reopening it with a check.", self.path, exc)
        self._reopen(check=True)

    def _guard(self, fn: Callable[[], T]) -> T:
        """Run an index operation: retry lock waits, repair a damaged index once, translate errors."""
        for attempt in (0, 1):
            try:
                return dx.retry_busy(fn, self.path)
            except (StorageError, CacheClosedError):
                raise
            except sqlite3.Error as exc:
                if attempt == 0 and dx.is_damaged(exc):
                    self._recover(exc)
                    continue
                self._stats.errors += 1
                raise dx.storage_error(exc, self.path) from exc
            except OSError as exc:
                self._stats.errors += 1
                raise dx.storage_error(exc, self.path) from exc
        raise AssertionError("unreachable")

    def _write(self, body: Callable[[sqlite3.Connection], T], on_abort: Callable[[], None] | None = None,
               inline_bytes: int = 0) -> T:
        """Run ``body`` in one write transaction (BEGIN IMMEDIATE ... COMMIT) that writes ``inline_bytes`` of
        values into the index."""

        def attempt() -> tuple[T, int]:
            conn = self._conn()
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

        with self._lock:
            result, changes = self._guard(attempt)
            self._wrote(changes, inline_bytes)
            return result

    def _wrote(self, changes: int, inline_bytes: int) -> None:
        """After a commit that changed ``changes`` rows and wrote ``inline_bytes`` of values into the index:
        checkpoint once this process's commits have written about ``wal_pages()`` pages to the WAL."""
        pages = 2 + changes
        if inline_bytes > 4096:  # values over a page take overflow pages
            pages += (inline_bytes + 4095) // 4096
        if changes > 256 and self._db is not None:
            # A batch (uses, evictions, set_many) writes each page once: at most every page of the index.
            with contextlib.suppress(sqlite3.Error):
                pages = min(pages, 2 + self._db.execute("PRAGMA page_count").fetchone()[0])
        self._wal_frames += pages
        if self._wal_frames >= self._wal_limit:
            self._checkpoint()

    def _checkpoint(self, wait_s: float = CHECKPOINT_WAIT_S) -> None:
        """Copy the WAL into the index and let it start over (never raises: the next operation reports damage)."""
        conn = self._db
        if conn is None:
            return
        try:
            done = dx.checkpoint(conn, wait_s)
        except sqlite3.Error as exc:
            log.debug("Disk cache checkpoint of %s failed: %s", self.path, exc)
            done = False
        # Not done (other processes held the lock or stayed in the WAL): try again after a quarter as much.
        self._wal_frames = 0 if done else self._wal_limit * 3 // 4

    def _read(self, sql: str, params: tuple[Any, ...]) -> Any:
        with self._lock:
            return self._guard(lambda: self._conn().execute(sql, params).fetchone())

    def _path(self, name: str) -> str:
        return df.file_path(self._data, name)

    def _unlink(self, names: Iterable[str | None]) -> None:
        for name in names:
            # Only names the cache makes, in real directories of its own (never through a link).
            if name and df.is_valid_name(name) and df.inside(self._data, name):
                with contextlib.suppress(OSError):
                    os.unlink(self._path(name))

    # ------------------------------------------------------------------------------------------ reads

    def get(self, key: Key, default: Any = None, *, mmap: bool = False) -> Any:
        """The value under ``key`` or ``default``. With ``mmap=True`` large arrays come back as read-only
        zero-copy views of the mapped value file (they stay valid after the entry is replaced or evicted)."""
        value = self._get(key_to_bytes(validate_key(key)), mmap)[0]
        return default if value is MISSING else value

    def get_with_ttl(self, key: Key, default: Any = None, *, mmap: bool = False) -> tuple[Any, float | None]:
        """``(value, seconds left)``: like :meth:`get`, plus the remaining ttl (None: no expiry, or a miss).

        TieredCache uses it to promote an entry into faster tiers without extending its life.
        """
        value, expires, now = self._get(key_to_bytes(validate_key(key)), mmap)
        if value is MISSING:
            return default, None
        return value, None if expires is None else expires - now

    def _get(self, kb: bytes, mmap: bool) -> tuple[Any, float | None, float]:
        """One lookup: ``(value or MISSING, expires, now)``; counts the hit or the miss."""
        now = 0.0
        for _ in range(3):
            with self._lock:
                conn = self._conn()
                try:
                    row = conn.execute(_GET, (kb,)).fetchone()
                except sqlite3.Error:
                    row = self._read(_GET, (kb,))
                if row is None:
                    break
                now = self._clock()
                expires = row[4]
                if expires is not None and expires <= now:
                    self._expire_one(row[0])
                    break
                if row[1] is not None:
                    value = self._decode_inline(kb, row, mmap)
                    if value is MISSING:
                        break
                    self._hit(row[0], now, row[6])
                    return value, expires, now
            value = self._read_file(kb, row, mmap)
            if value is _RETRY:
                continue
            if value is MISSING:
                break
            with self._lock:
                self._hit(row[0], now, row[6])
            return value, expires, now
        with self._lock:
            self._stats.misses += 1
        return MISSING, None, now

    def _hit(self, entry_id: int, now: float, accessed: float) -> None:
        self._stats.hits += 1
        # lfu counts every use; lru keeps access times to a resolution (like the file system's relatime):
        # an entry whose recorded use is more recent than that is not recorded again.
        if self._track and (self._lfu or not now - accessed < self._resolution):
            self._note_use(entry_id, now)
            if self._flush_due():
                self._flush_soon()

    def _note_use(self, entry_id: int, now: float) -> None:
        seen = self._access.get(entry_id)
        if seen is None:
            self._access[entry_id] = [now, 1]
        else:
            seen[0] = max(seen[0], now)
            seen[1] += 1

    def _flush_due(self) -> bool:
        return (self._unsettled or bool(self._access)) and (
            len(self._access) >= ACCESS_BUFFER_MAX or time.monotonic() - self._last_flush >= ACCESS_FLUSH_INTERVAL
        )

    def _decode_inline(self, kb: bytes, row: Any, mmap: bool) -> Any:
        value = row[1]
        # A hand-edited row may hold text; the checksum is bound to the key (a changed or swapped key fails it).
        if type(value) is not bytes or df.key_checksum(value, kb) != row[3]:
            self._damaged(kb, row, "checksum mismatch")
            return MISSING
        # Arrays decode as views of the buffer: give them a writable one unless read-only views were asked.
        buf = bytearray(value) if not mmap and len(value) > 4 and value[4] == _K_TREE else value
        return self._decode(kb, row, buf)

    def _decode(self, kb: bytes, row: Any, buf: Any) -> Any:
        try:
            return codecs.decode(buf, allow_pickle=self._allow_pickle)
        except CacheValueError:
            if len(buf) > 4 and buf[4] == _K_PICKLE and not self._allow_pickle:
                raise  # intact, but stored with pickle: tell the user rather than hide it as a miss
            self._damaged(kb, row, "undecodable frame")
            return MISSING

    def _read_file(self, kb: bytes, row: Any, mmap: bool) -> Any:
        entry_id, _, name, digest, _, frame_size, _ = row
        if not df.is_valid_name(name):
            self._damaged(kb, row, "invalid file name in the index")
            return MISSING
        try:
            if not df.inside(self._data, name):
                raise df.DamagedFile("path outside the cache")
            buf, is_payload = df.read_frame(self._path(name), kb, frame_size, digest, mmap)
        except FileNotFoundError:
            # Either the file was lost, or another process replaced the entry between our two steps.
            current = self._read("SELECT id, file FROM entries WHERE key = ?", (kb,))
            if current is not None and tuple(current) == (entry_id, name):
                self._missing(kb, entry_id, name)
                return MISSING
            return _RETRY
        except df.DamagedFile as exc:
            self._damaged(kb, row, f"value file: {exc}")
            return MISSING
        except (TypeError, ValueError, OverflowError) as exc:  # a row with fields of the wrong type
            self._damaged(kb, row, f"bad index row ({exc})")
            return MISSING
        except OSError as exc:
            with self._lock:
                self._stats.errors += 1
            log.warning("The disk cache could not read %s (%s); reporting a miss.", self._path(name), exc)
            return MISSING
        return buf if is_payload else self._decode(kb, row, buf)

    def _damaged(self, kb: bytes, row: Any, why: str) -> None:
        log.warning("Disk cache entry %s in %s is damaged (%s); it was removed.", _key_repr(kb), self.path, why)
        with self._lock:
            self._stats.corrupt += 1
        # Only if it is still the damaged version: another process may have rewritten the entry meanwhile.
        name = row[2] if df.is_valid_name(row[2]) else None
        self._drop_quietly("DELETE FROM entries WHERE id = ? AND checksum IS ? AND file IS ? RETURNING id",
                           (row[0], row[3], row[2]), name)

    def _missing(self, kb: bytes, entry_id: int, name: str) -> None:
        log.warning("Disk cache entry %s lost its value file %s; it was removed.", _key_repr(kb), name)
        with self._lock:
            self._stats.corrupt += 1
        self._drop_quietly("DELETE FROM entries WHERE id = ? AND file = ? RETURNING id", (entry_id, name), None)

    def _expire_one(self, entry_id: int) -> None:
        now = self._clock()
        rows = self._drop_quietly(
            "DELETE FROM entries WHERE id = ? AND expires <= ? RETURNING file", (entry_id, now), None
        )
        if rows:
            with self._lock:
                self._stats.expirations += 1
            self._unlink(r[0] for r in rows)

    def _drop_quietly(self, sql: str, params: tuple[Any, ...], name: str | None) -> list[Any]:
        """A repair done on the read path: it must never turn a miss into an error."""
        try:
            rows = self._write(lambda conn: conn.execute(sql, params).fetchall())
        except (StorageError, CacheClosedError) as exc:
            log.debug("Could not remove a disk cache entry: %s", exc)
            return []
        if rows:
            self._unlink([name])
        return rows

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, bytes)):
            return False
        row = self._read("SELECT expires FROM entries WHERE key = ?", (key_to_bytes(validate_key(key)),))
        return row is not None and (row[0] is None or row[0] > self._clock())

    def get_many(self, keys: Iterable[Key], *, mmap: bool = False) -> dict[Key, Any]:
        """The hits among ``keys``, looked up in one read transaction (misses are left out)."""
        return {k: v for k, (v, _) in self.get_many_with_ttl(keys, mmap=mmap).items()}

    def get_many_with_ttl(self, keys: Iterable[Key], *, mmap: bool = False) -> dict[Key, tuple[Any, float | None]]:
        """Like :meth:`get_many`, each hit paired with its remaining ttl (None: no expiry)."""
        wanted: dict[bytes, Key] = {}
        for key in keys:
            wanted.setdefault(key_to_bytes(validate_key(key)), key)
        found: dict[Key, tuple[Any, float | None]] = {}
        if not wanted:
            return found
        kbs = list(wanted)

        def fetch() -> list[Any]:
            conn = self._conn()
            rows: list[Any] = []
            conn.execute("BEGIN")
            try:
                for i in range(0, len(kbs), _SQL_CHUNK):
                    chunk = kbs[i : i + _SQL_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows += conn.execute(f"SELECT key, {_COLS} FROM entries WHERE key IN ({marks})", chunk).fetchall()
            finally:
                conn.execute("COMMIT")
            return rows

        with self._lock:
            rows = self._guard(fetch)
        now = self._clock()
        for kb, *row in rows:
            value = self._materialize(kb, row, now, mmap)
            if value is not MISSING:
                found[wanted[kb]] = (value, None if row[4] is None else row[4] - now)
        with self._lock:
            self._stats.misses += len(wanted) - len(found)
        return found

    def _materialize(self, kb: bytes, row: list[Any], now: float, mmap: bool) -> Any:
        """get()'s work on a row already fetched (misses counted by the caller)."""
        if row[4] is not None and row[4] <= now:
            self._expire_one(row[0])
            return MISSING
        if row[1] is not None:
            with self._lock:
                value = self._decode_inline(kb, row, mmap)
        else:
            value = self._read_file(kb, row, mmap)
            if value is _RETRY:  # replaced while we read: look it up again (that lookup counts a hit itself)
                value = self._get(kb, mmap)[0]
                if value is MISSING:
                    with self._lock:
                        self._stats.misses -= 1  # get_many counts its misses itself
                return value
        if value is not MISSING:
            with self._lock:
                self._hit(row[0], now, row[6])
        return value

    # ------------------------------------------------------------------------------------------ writes

    def _prepare(self, kb: bytes, value: Any, ttl: float | None, now: float) -> _Pending:
        return self._pending(kb, self._encode(value), None if ttl is None else now + float(ttl), now)

    def _encode(self, value: Any) -> codecs.EncodedValue:
        return codecs.encode_parts(value, compress=self.compression, allow_pickle=self._allow_pickle)

    def _pending(self, kb: bytes, enc: codecs.EncodedValue, expires: float | None, now: float) -> _Pending:
        """Small frames become inline bytes; large ones are written to a temp file now, outside any lock."""
        if enc.size < self._inline_max:
            frame = enc.parts[0] if len(enc.parts) == 1 else b"".join(enc.parts)
            size = len(kb) + enc.size
            self._check_fits(size)
            return _Pending(kb, bytes(frame), None, None, size, enc.size, df.key_checksum(frame, kb), expires,
                            enc.raw_size)
        size = len(kb) + df.frame_offset(len(kb)) + enc.size
        self._check_fits(size)
        digest = df.checksum_parts(enc.parts)
        name = df.new_name()
        try:
            df.ensure_real_dir(os.path.dirname(self._path(name)))  # never a link out of the cache
            tmp = df.write_value_file(self._tmp, kb, enc.parts, enc.size, digest, now, expires, self._sync)
        except StorageError:
            raise
        except OSError as exc:
            with self._lock:
                self._stats.errors += 1
            raise dx.storage_error(exc, self.path) from exc
        return _Pending(kb, None, name, tmp, size, enc.size, digest, expires, enc.raw_size)

    def _check_fits(self, size: int) -> None:
        if size > self.max_bytes:
            raise ValueTooLargeError(
                f"A value taking {size} bytes does not fit in the disk cache's bound of {self.max_bytes} bytes; "
                "raise DiskCache(size=...) (MB) to store it."
            )

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (``ttl`` seconds, None: no expiry); evicts to keep the bound.

        Raises DiskFullError / StorageError when the disk refuses the write; the cache is then unchanged.
        """
        kb = key_to_bytes(validate_key(key))
        if self._db is None:
            self._conn()  # fail fast when closed, before writing a file
        ttl = validate_ttl(ttl)
        now = self._clock()
        expires = None
        if ttl is not None:
            if not ttl > 0:
                self.delete(key)  # an entry that expires at once: nothing to store, the old value is gone
                return
            expires = now + ttl
        enc = self._encode(value)
        if enc.size < self._inline_max and self._set_inline_fast(kb, enc, expires, now):
            return
        self._commit([self._pending(kb, enc, expires, now)], now)

    def _update(self, value: Any, name: str | None, size: int, frame_size: int, digest: int, now: float,
                expires: float | None, entry_id: int, used: float, created: float) -> tuple[str, tuple[Any, ...]]:
        """The statement that rewrites entry ``entry_id`` (last use recorded at ``used``, written at ``created``)."""
        if used < 0 and not self._lfu and now - created < self._resolution:
            # An unsettled insert rewritten within the resolution keeps its place: its use stays its creation
            # (the rewrite moves ``created``, so the use is settled now, rarely: within a second of the insert).
            return _UPDATE, (value, name, size, frame_size, digest, now, expires, max(created, 0.0), entry_id)
        if self._track:
            # The use goes into the access buffer (written with the next batch, and always before this
            # process evicts) unless the recorded use is within the lru resolution: moving the entry in the
            # lru/lfu index inside every set would cost a third of a small set.
            if self._lfu or not now - used < self._resolution:
                self._note_use(entry_id, now)
            return _UPDATE_IN_PLACE, (value, name, size, frame_size, digest, now, expires, entry_id)
        return _UPDATE, (value, name, size, frame_size, digest, now, expires, now, entry_id)

    def _set_inline_fast(self, kb: bytes, enc: codecs.EncodedValue, expires: float | None, now: float) -> bool:
        """The common small set, without closures or retries; False sends it down the general path."""
        frame = enc.parts[0] if len(enc.parts) == 1 else b"".join(enc.parts)
        size = len(kb) + enc.size
        self._check_fits(size)
        digest = df.key_checksum(frame, kb)
        with self._lock:
            conn = self._db
            if conn is None:
                return False
            changes = conn.total_changes
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return False
            try:
                total, old_id, old_file, old_size, old_used, old_created = conn.execute(_BEFORE, (kb,)).fetchone()
                fresh = 0
                if old_id is None:
                    # A set that evicts pays for settling anyway (before victims are chosen): insert settled.
                    used = self._new_used if total + size <= self.max_bytes else None
                    conn.execute(_INSERT, (kb, frame, None, size, enc.size, digest, now, expires,
                                           now if used is None else used))
                    fresh = used is not None
                else:
                    conn.execute(*self._update(frame, None, size, enc.size, digest, now, expires, old_id, old_used,
                                               old_created))
                    total -= old_size
                total += size
                victims = self._evict(conn, now, {kb}, total, fresh) if total > self.max_bytes else ()
                if self._flush_due():
                    self._flush_access(conn)  # the batched uses ride along in this transaction
                conn.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                return False
            if fresh:
                self._unsettled = True
            self._wrote(conn.total_changes - changes, size)
            st = self._stats
            st.sets += 1
            st.raw_bytes += enc.raw_size
            st.stored_bytes += enc.size
        if old_file:
            self._unlink((old_file,))
        if victims:
            self._unlink(victims)
        return True

    def set_many(self, items: Mapping[Key, Any], ttl: float | None = None) -> None:
        """Store every item in one transaction (all or nothing)."""
        self._conn()
        ttl = validate_ttl(ttl)
        now = self._clock()
        pending: list[_Pending] = []
        try:
            if ttl is not None and not ttl > 0:
                for key in items:
                    self.delete(key)
                return
            for key, value in items.items():
                pending.append(self._prepare(key_to_bytes(validate_key(key)), value, ttl, now))
            if pending:
                self._commit(pending, now)
        except BaseException:
            for p in pending:
                if p.tmp:
                    with contextlib.suppress(OSError):
                        os.unlink(p.tmp)
            raise

    def _commit(self, items: list[_Pending], now: float) -> None:
        moved: list[_Pending] = []

        def undo() -> None:
            while moved:
                p = moved.pop()
                with contextlib.suppress(OSError):
                    os.rename(self._path(p.name or ""), p.tmp or "")

        def body(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            for p in items:
                if p.tmp:
                    os.rename(p.tmp, self._path(p.name or ""))
                    moved.append(p)
            replaced: list[str] = []
            total = fresh = 0
            for p in items:
                total, old_id, old_file, old_size, old_used, old_created = conn.execute(_BEFORE, (p.key,)).fetchone()
                if old_file:
                    replaced.append(old_file)
                if old_id is None:
                    used = self._new_used if total + p.size <= self.max_bytes else None
                    conn.execute(_INSERT, (p.key, p.value, p.name, p.size, p.frame_size, p.digest, now, p.expires,
                                           now if used is None else used))
                    fresh += used is not None
                else:
                    conn.execute(*self._update(p.value, p.name, p.size, p.frame_size, p.digest, now, p.expires,
                                               old_id, old_used, old_created))
                    total -= old_size
                total += p.size
            victims = self._evict(conn, now, {p.key for p in items}, total, fresh) if total > self.max_bytes else []
            if self._flush_due():
                self._flush_access(conn)
            if fresh:
                self._unsettled = True  # a rollback leaves it set: the next flush then merely finds nothing to do
            return replaced, victims

        try:
            replaced, victims = self._write(body, undo, sum(p.size for p in items if p.value is not None))
        except BaseException:
            for p in items:
                if p.tmp:
                    with contextlib.suppress(OSError):
                        os.unlink(p.tmp)
            raise
        self._unlink(replaced)
        self._unlink(victims)
        with self._lock:
            self._stats.sets += len(items)
            self._stats.raw_bytes += sum(p.raw_size for p in items)
            self._stats.stored_bytes += sum(p.frame_size for p in items)

    def _evict(self, conn: sqlite3.Connection, now: float, keep: builtins.set[bytes], total: int | None = None,
               fresh: int = 0, limit: int | None = None) -> list[str]:
        """Inside a write transaction: delete entries until the shared total is within the bound (``fresh``:
        how many unsettled rows this transaction inserted, all in ``keep``)."""
        if total is None:
            total = conn.execute("SELECT bytes FROM meta WHERE id = 0").fetchone()[0]
        if total <= self.max_bytes:
            return []
        # So this process's own uses count in the order; dx.evict settles other unsettled rows itself.
        self._flush_access(conn, settle=False)
        files, n_expired, n_evicted = dx.evict(conn, self.policy, total - self.max_bytes, now, keep, fresh, limit)
        self._stats.expirations += n_expired
        self._stats.evictions += n_evicted
        return files

    def _flush_access(self, conn: sqlite3.Connection, settle: bool = True) -> None:
        """Write the buffered access times/counts and settle unsettled lru inserts (inside a write transaction;
        ``settle=False`` leaves the rows inserted since the last flush unsettled, for eviction's own use)."""
        wrote = bool(self._access)
        if wrote:
            conn.executemany(_FLUSH, [(t, n, i) for i, (t, n) in sorted(self._access.items())])
            self._access.clear()
        if settle:
            # Any process's unsettled rows (also those of one killed before its flush), not only ours.
            wrote = dx.settle(conn) > 0 or wrote
            self._unsettled = False
        if wrote and self.policy == "lru":
            # Finer than 1/64 of the age span of the entries cannot change which entries go first.
            oldest = conn.execute("SELECT min(accessed) FROM entries WHERE accessed >= 0").fetchone()[0]
            span = self._clock() - oldest if oldest is not None else 0.0
            self._resolution = max(0.0, span / ACCESS_RESOLUTION_SPLIT)
        self._last_flush = time.monotonic()

    def _flush_soon(self) -> None:
        """Flush from the read path without waiting: if another process holds the write lock, try later."""
        self._last_flush = time.monotonic()
        conn = self._conn()
        changes = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")  # fails at once if another process writes (no busy timeout)
        except sqlite3.Error:
            if len(self._access) > 4 * ACCESS_BUFFER_MAX:
                self._access.clear()  # bookkeeping is advisory; never let it grow without bound
            return
        try:
            self._flush_access(conn)
            conn.execute("COMMIT")
            self._wrote(conn.total_changes - changes, 0)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.debug("Could not write disk cache access times: %s", exc)

    def delete(self, key: Key) -> bool:
        kb = key_to_bytes(validate_key(key))
        now = self._clock()

        def body(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute("DELETE FROM entries WHERE key = ? RETURNING file, expires", (kb,)).fetchall()

        try:
            rows = self._write(body)
        except DiskFullError:
            rows = self._delete_on_full_disk(kb, body)
        if not rows:
            return False
        self._unlink([rows[0][0]])
        live = rows[0][1] is None or rows[0][1] > now
        with self._lock:
            if live:
                self._stats.deletes += 1
            else:
                self._stats.expirations += 1
        return live

    def clear(self) -> None:
        """Remove every entry. On a full disk it still works: value files go first, then the rows in small
        transactions (so another process's concurrent sets may survive it then)."""
        def body(conn: sqlite3.Connection) -> list[str]:
            names = [r[0] for r in conn.execute("SELECT file FROM entries WHERE file IS NOT NULL")]
            conn.execute("DELETE FROM entries")
            return names

        with self._lock:
            self._access.clear()
        try:
            names = self._write(body)
        except DiskFullError:
            self._clear_on_full_disk()
            return
        self._unlink(names)

    # ------------------------------------------------------------------------------------------ a full disk
    # Deleting entries writes to the index (its WAL), which needs room. On a full disk the cache removes value
    # files first (they hold the space), gives up its reserve file (see disk_marker) and deletes rows in small
    # transactions with a checkpoint after each, so the WAL is reused instead of grown.

    def _release_reserve(self) -> None:
        if dm.release_reserve(self.path):
            log.warning("The disk holding the cache at %s is full; the cache gave up its %d-byte reserve to free "
                        "space.", self.path, self._reserve)

    def _restore_reserve(self) -> None:
        dm.ensure_reserve(self.path, self._reserve)

    def _delete_on_full_disk(self, kb: bytes, body: Callable[[sqlite3.Connection], list[Any]]) -> list[Any]:
        row = self._read("SELECT file, expires FROM entries WHERE key = ?", (kb,))
        if row is None:
            return []
        self._unlink([row[0]])  # the value file first: that frees its space whatever the index can do
        self._release_reserve()
        try:
            rows = self._write(body)
        except DiskFullError:
            if not row[0]:
                raise
            # The value is gone with its file: the row reads as a miss and the next cleanup() drops it.
            log.warning("The disk holding %s is full: removed the value file of %s, its row stays until cleanup().",
                        self.path, _key_repr(kb))
            rows = [tuple(row)]
        self._restore_reserve()
        return rows

    def _in_small_steps(self, step: Callable[[sqlite3.Connection], list[Any]]) -> None:
        """Run ``step`` (which deletes a few rows and returns them) until it deletes nothing, checkpointing
        after each transaction so the WAL starts over instead of growing."""
        while True:
            rows = self._write(step)
            with self._lock:
                self._checkpoint(wait_s=0)
            if not rows:
                return
            self._unlink(r[0] for r in rows)

    def _clear_on_full_disk(self) -> None:
        names = self._read_all("SELECT file FROM entries WHERE file IS NOT NULL")
        self._unlink(r[0] for r in names)
        self._release_reserve()
        self._in_small_steps(lambda conn: conn.execute(
            f"DELETE FROM entries WHERE id IN (SELECT id FROM entries LIMIT {_FULL_DISK_STEP}) RETURNING file"
        ).fetchall())
        self._restore_reserve()

    def _read_all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._guard(lambda: self._conn().execute(sql, params).fetchall())

    # ------------------------------------------------------------------------------------------ upkeep

    def cleanup(self) -> CleanupReport:
        """Remove expired entries, enforce the bound, drop rows whose file is gone or damaged, remove orphan
        and abandoned temp files, and reconcile the shared totals with the rows. Returns what it did."""
        from .disk_upkeep import run_cleanup

        return run_cleanup(self)

    @property
    def stats(self) -> CacheStats:  # type: ignore[override]
        """This process's counters, with ``bytes``/``entries`` read from the shared index (all processes)."""
        with self._lock:
            if not self._closed:
                with contextlib.suppress(CacheError, sqlite3.Error):
                    row = self._read("SELECT bytes, entries FROM meta WHERE id = 0", ())
                    if row is not None:
                        self._stats.bytes, self._stats.entries = row
            return self._stats

    def close(self) -> None:
        """Write pending access bookkeeping and close the index. Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self._db is not None:
                if self._access or self._unsettled:
                    with contextlib.suppress(Exception):
                        self._write(lambda conn: self._flush_access(conn))
                if self._wal_frames:
                    self._checkpoint(wait_s=0)  # the last connection to close checkpoints anyway; others may not
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                # Put back a reserve given up on a full disk, now that the WAL may have gone with the connection.
                self._restore_reserve()
            self._db = None
            self._closed = True
            _live.discard(self)

    def __repr__(self) -> str:
        return f"DiskCache({self.path!r}, size={self.max_bytes / _MB:g}, policy={self.policy!r})"

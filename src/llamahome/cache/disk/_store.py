"""DiskCache: the store itself (reads, writes, deletes); the package's ``__init__`` describes the design."""

from __future__ import annotations

import builtins
import contextlib
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llamahome.errors import (
    CacheClosedError,
    CacheError,
    CacheValueError,
    ConfigError,
    DiskFullError,
    StorageError,
    ValueTooLargeError,
)

from .. import codecs
from ..policies import POLICY_NAMES
from ..base import MAX_KEY_BYTES, MISSING, Key, Store, key_to_bytes, validate_key, validate_ttl
from ..stats import CacheStats, CleanupReport
from ..units import size_to_bytes
from . import _files as df
from . import _marker as dm
from . import _sqlite as dx
from ._index import FULL_DISK_STEP, Index
from ._log import log

__all__ = ["DiskCache", "POLICIES", "INLINE_MAX"]

POLICIES = POLICY_NAMES
#: The bound and policy of a new cache opened without them (an existing one keeps its stored ones).
DEFAULT_BYTES = 10000 * 1024 * 1024
DEFAULT_POLICY = "lru"
#: Frames smaller than this live inline in the index row; larger ones get a value file.
INLINE_MAX = 32 * 1024
_MB = 1024 * 1024
_K_TREE, _K_PICKLE = 7, 8
_SQL_CHUNK = 500
#: str keys up to this many characters cannot exceed MAX_KEY_BYTES encoded (4 bytes a character at most).
_FAST_KEY_CHARS = MAX_KEY_BYTES // 4

# An entry and its last recorded use (from ``uses``, see _sqlite; an entry always has its row there, the join
# only guards against a hand-edited index). fifo and time caches never look at uses: they read ``created``.
_COLS = "e.id, e.value, e.file, e.checksum, e.expires, e.frame_size"
_GET_TRACKED = (
    f"SELECT {_COLS}, coalesce(u.accessed, e.created) FROM entries AS e LEFT JOIN uses AS u ON u.id = e.id"
    " WHERE e.key = ?"
)
_GET_UNTRACKED = f"SELECT {_COLS}, e.created FROM entries AS e WHERE e.key = ?"
_MANY = (
    f"SELECT e.key, {_COLS}, coalesce(u.accessed, e.created) FROM entries AS e LEFT JOIN uses AS u ON u.id = e.id"
    " WHERE e.key IN"
)
# Under the write lock the entry being replaced is read first (its file goes after the commit; its id lets
# the row be updated in place, cheaper than an upsert), together with the shared total, in one step.
_BEFORE = (
    "SELECT m.bytes, e.id, e.file, e.size, coalesce(u.accessed, e.created) FROM meta AS m"
    " LEFT JOIN entries AS e ON e.key = ? LEFT JOIN uses AS u ON u.id = e.id WHERE m.id = 0"
)
# accessed and hits are unused since index version 4 (see _sqlite): 0 takes no bytes in the row.
_INSERT = (
    "INSERT INTO entries (key, value, file, size, frame_size, checksum, created, expires, accessed, hits)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0)"
)
# A rewrite keeps the entry's row (and so its first-insertion place); its use goes through the uses buffer.
_UPDATE = (
    "UPDATE entries SET value = ?, file = ?, size = ?, frame_size = ?, checksum = ?, created = ?, expires = ?"
    " WHERE id = ?"
)

_live: weakref.WeakSet[DiskCache] = weakref.WeakSet()


class _Retry:
    """Returned by a file read that raced with a rewrite of the entry: look the key up again."""

    def __repr__(self) -> str:
        return "RETRY"


_RETRY: Any = _Retry()


def _after_fork_in_child() -> None:
    # A SQLite connection must not cross fork(); the child opens its own on first use.
    for cache in list(_live):
        cache._index.forget_after_fork()


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
    the directory's marker, else 10000) over the directory: the entries (key bytes, inline values, value
    files) and what the index's pages take around them, so ``du`` of a closed cache stays within about
    1.1 x the bound (the WAL of an open cache is outside; see the package docs). It holds across every
    process sharing
    ``path`` (each enforces its own ``size`` when it writes: open the directory with the same size
    everywhere; the last one given is stored). ``policy`` (None: the stored one, else ``lru``) picks what to
    evict: ``lru``, ``lfu`` (reads are recorded in memory and written in batches), ``fifo`` (first insertion)
    or ``time`` (oldest write); expired entries always go first. ``compression`` tries zstd where it pays;
    ``allow_pickle`` lets values the safe codecs cannot express be pickled (only for caches every writer of
    which you trust); ``clock`` is the time source for ttl and the policies; ``sync=True`` fsyncs every write
    (survives power loss, much slower); ``check_on_open=True`` runs SQLite's quick_check on open (default: only
    when the index file's header looks damaged, so opening stays O(1); other damage is found and repaired by
    the first operation that meets it).

    A directory that is not empty and holds no disk cache marker is refused with NotACacheError.

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
        self._files = df.ValueFiles(self.path)
        try:
            # Refuses a directory that is not a disk cache before anything is written into it.
            self.max_bytes, policy = dm.claim(self.path, max_bytes, policy, DEFAULT_BYTES, DEFAULT_POLICY)
            self._files.ensure_dirs()
        except CacheError:
            raise
        except OSError as exc:
            raise dx.storage_error(exc, self.path) from exc
        self.policy = policy if policy in POLICIES else DEFAULT_POLICY  # a hand-edited marker
        self.compression = bool(compression)
        self._clock = clock
        self._allow_pickle = allow_pickle
        self._sync = sync
        self._inline_max = inline_max
        self._stats = CacheStats(name=name, max_bytes=self.max_bytes)
        self._index = Index(self.path, self._files.data_dir, self.policy, self.max_bytes, sync=sync,
                            check_on_open=check_on_open, clock=clock, stats=self._stats)
        self._get_sql = _GET_TRACKED if self._index.track else _GET_UNTRACKED
        _live.add(self)

    # ------------------------------------------------------------------------------------------ reads

    def get(self, key: Key, default: Any = None, *, mmap: bool = False) -> Any:
        """The value under ``key`` or ``default``. With ``mmap=True`` large arrays come back as read-only
        zero-copy views of the mapped value file (they stay valid after the entry is replaced or evicted)."""
        if type(key) is str and len(key) <= _FAST_KEY_CHARS and not mmap:
            # The commonest read, a str key whose value lives in its index row, in as few Python steps as
            # possible (issue 19: the lookup itself is ~4 us; everything else here used to be as much again).
            # Anything unusual (a value file, expiry, damage, a closed or forked connection) takes _get.
            kb = b"s" + key.encode("utf-8", "surrogatepass")
            index = self._index
            with index.lock:
                conn = index.connected
                if conn is not None:
                    try:
                        row = conn.execute(self._get_sql, (kb,)).fetchone()
                    except sqlite3.Error:
                        row = _RETRY
                    index.until_check -= 1
                    if index.until_check <= 0:
                        index.notice_others()
                    if row is None:
                        self._stats.misses += 1
                        return default
                    if row is not _RETRY and row[4] is None:
                        value = row[1]
                        if (type(value) is bytes and len(value) > 4 and value[4] != _K_TREE
                                and df.key_checksum(value, kb) == row[3]):
                            try:
                                value = codecs.decode(value, allow_pickle=self._allow_pickle)
                            except CacheValueError:
                                pass  # _get says why (damage, or a pickle frame without allow_pickle)
                            else:
                                self._stats.hits += 1
                                if index.track:
                                    index.hit(row[0], self._clock(), row[6])
                                return value
            kb_checked = kb
        else:
            kb_checked = key_to_bytes(validate_key(key))
        value = self._get(kb_checked, mmap)[0]
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
            with self._index.lock:
                conn = self._index.conn()
                try:
                    row = conn.execute(self._get_sql, (kb,)).fetchone()
                except sqlite3.Error:
                    row = self._index.read(self._get_sql, (kb,))
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
            with self._index.lock:
                self._hit(row[0], now, row[6])
            return value, expires, now
        with self._index.lock:
            self._stats.misses += 1
        return MISSING, None, now

    def _hit(self, entry_id: int, now: float, accessed: float) -> None:
        self._stats.hits += 1
        self._index.hit(entry_id, now, accessed)

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
            buf, is_payload = self._files.read(name, kb, frame_size, digest, mmap)
        except FileNotFoundError:
            # Either the file was lost, or another process replaced the entry between our two steps.
            current = self._index.read("SELECT id, file FROM entries WHERE key = ?", (kb,))
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
            with self._index.lock:
                self._stats.errors += 1
            log.warning("The disk cache could not read %s (%s); reporting a miss.", self._files.path(name), exc)
            return MISSING
        return buf if is_payload else self._decode(kb, row, buf)

    def _damaged(self, kb: bytes, row: Any, why: str) -> None:
        log.warning("Disk cache entry %s in %s is damaged (%s); it was removed.", _key_repr(kb), self.path, why)
        with self._index.lock:
            self._stats.corrupt += 1
        # Only if it is still the damaged version: another process may have rewritten the entry meanwhile.
        name = row[2] if df.is_valid_name(row[2]) else None
        self._drop_quietly("DELETE FROM entries WHERE id = ? AND checksum IS ? AND file IS ? RETURNING id",
                           (row[0], row[3], row[2]), name)

    def _missing(self, kb: bytes, entry_id: int, name: str) -> None:
        log.warning("Disk cache entry %s lost its value file %s; it was removed.", _key_repr(kb), name)
        with self._index.lock:
            self._stats.corrupt += 1
        self._drop_quietly("DELETE FROM entries WHERE id = ? AND file = ? RETURNING id", (entry_id, name), None)

    def _expire_one(self, entry_id: int) -> None:
        now = self._clock()
        rows = self._drop_quietly(
            "DELETE FROM entries WHERE id = ? AND expires <= ? RETURNING file", (entry_id, now), None
        )
        if rows:
            with self._index.lock:
                self._stats.expirations += 1
            self._files.unlink(r[0] for r in rows)

    def _drop_quietly(self, sql: str, params: tuple[Any, ...], name: str | None) -> list[Any]:
        """A repair done on the read path: it must never turn a miss into an error."""
        try:
            rows = self._index.write(lambda conn: conn.execute(sql, params).fetchall())
        except (StorageError, CacheClosedError) as exc:
            log.debug("Could not remove a disk cache entry: %s", exc)
            return []
        if rows:
            self._files.unlink([name])
        return rows

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, bytes)):
            return False
        row = self._index.read("SELECT expires FROM entries WHERE key = ?", (key_to_bytes(validate_key(key)),))
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
            conn = self._index.conn()
            rows: list[Any] = []
            conn.execute("BEGIN")
            try:
                for i in range(0, len(kbs), _SQL_CHUNK):
                    chunk = kbs[i : i + _SQL_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows += conn.execute(f"{_MANY} ({marks})", chunk).fetchall()
            finally:
                conn.execute("COMMIT")
            return rows

        with self._index.lock:
            rows = self._index.guard(fetch)
        now = self._clock()
        for kb, *row in rows:
            value = self._materialize(kb, row, now, mmap)
            if value is not MISSING:
                found[wanted[kb]] = (value, None if row[4] is None else row[4] - now)
        with self._index.lock:
            self._stats.misses += len(wanted) - len(found)
        return found

    def _materialize(self, kb: bytes, row: list[Any], now: float, mmap: bool) -> Any:
        """get()'s work on a row already fetched (misses counted by the caller)."""
        if row[4] is not None and row[4] <= now:
            self._expire_one(row[0])
            return MISSING
        if row[1] is not None:
            with self._index.lock:
                value = self._decode_inline(kb, row, mmap)
        else:
            value = self._read_file(kb, row, mmap)
            if value is _RETRY:  # replaced while we read: look it up again (that lookup counts a hit itself)
                value = self._get(kb, mmap)[0]
                if value is MISSING:
                    with self._index.lock:
                        self._stats.misses -= 1  # get_many counts its misses itself
                return value
        if value is not MISSING:
            with self._index.lock:
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
        try:
            name, tmp = self._files.write(kb, enc.parts, enc.size, digest, now, expires, self._sync)
        except StorageError:
            raise
        except OSError as exc:
            with self._index.lock:
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
        if self._index.connected is None:
            self._index.conn()  # fail fast when closed, before writing a file
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

    def _put_row(self, conn: sqlite3.Connection, key: bytes, value: bytes | None, name: str | None, size: int,
                 frame_size: int, digest: int, expires: float | None, now: float) -> tuple[int, str | None]:
        """Inside a write transaction: insert or rewrite the row of ``key``. Returns the shared total after it
        and the value file of the replaced entry (unlinked after the commit)."""
        total, old_id, old_file, old_size, old_used = conn.execute(_BEFORE, (key,)).fetchone()
        if old_id is None:
            conn.execute(_INSERT, (key, value, name, size, frame_size, digest, now, expires))
            return total + size, None
        index = self._index
        # A rewrite is a use: it goes into the uses buffer (written with the next batch, and always before this
        # process evicts) unless the recorded use is within the lru resolution, as for reads.
        if index.track and (index.lfu or not now - old_used < index.resolution):
            index.note_use(old_id, now, old_used)
        conn.execute(_UPDATE, (value, name, size, frame_size, digest, now, expires, old_id))
        return total - old_size + size, old_file

    def _settle_rows(self, conn: sqlite3.Connection, now: float, keys: builtins.set[bytes], total: int) -> list[str]:
        """Inside the same transaction, after :meth:`_put_row` for ``keys``: evict to the bound (never those
        keys) and let a due batch of uses ride along. Returns the victims' files."""
        index = self._index
        victims = index.evict(conn, now, keys, total, batch=True) if total > index.limit else []
        if index.flush_due():
            index.flush_access(conn, everything=False)  # the due uses ride along in this transaction
        return victims

    def _set_inline_fast(self, kb: bytes, enc: codecs.EncodedValue, expires: float | None, now: float) -> bool:
        """The common small set, without closures or retries; False sends it down the general path."""
        frame = enc.parts[0] if len(enc.parts) == 1 else b"".join(enc.parts)
        size = len(kb) + enc.size
        self._check_fits(size)
        digest = df.key_checksum(frame, kb)
        index = self._index
        with index.lock:
            conn = index.connected
            if conn is None:
                return False
            changes = conn.total_changes
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return False
            try:
                total, old_file = self._put_row(conn, kb, frame, None, size, enc.size, digest, expires, now)
                victims = self._settle_rows(conn, now, {kb}, total)
                conn.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                return False
            index.wrote(conn.total_changes - changes, size)
            st = self._stats
            st.sets += 1
            st.raw_bytes += enc.raw_size
            st.stored_bytes += enc.size
        if old_file:
            self._files.unlink((old_file,))
        if victims:
            self._files.unlink(victims)
        return True

    def set_many(self, items: Mapping[Key, Any], ttl: float | None = None) -> None:
        """Store every item in one transaction (all or nothing)."""
        self._index.conn()
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
            _discard_temps(pending)
            raise

    def _commit(self, items: list[_Pending], now: float) -> None:
        moved: list[_Pending] = []

        def undo() -> None:
            while moved:
                p = moved.pop()
                with contextlib.suppress(OSError):
                    os.rename(self._files.path(p.name or ""), p.tmp or "")

        def body(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            for p in items:
                if p.tmp:
                    os.rename(p.tmp, self._files.path(p.name or ""))
                    moved.append(p)
            replaced: list[str] = []
            total = 0
            for p in items:
                total, old_file = self._put_row(conn, p.key, p.value, p.name, p.size, p.frame_size, p.digest,
                                                p.expires, now)
                if old_file:
                    replaced.append(old_file)
            return replaced, self._settle_rows(conn, now, {p.key for p in items}, total)

        try:
            replaced, victims = self._index.write(body, undo, sum(p.size for p in items if p.value is not None))
        except BaseException:
            _discard_temps(items)
            raise
        self._files.unlink(replaced)
        self._files.unlink(victims)
        with self._index.lock:
            self._stats.sets += len(items)
            self._stats.raw_bytes += sum(p.raw_size for p in items)
            self._stats.stored_bytes += sum(p.frame_size for p in items)

    def delete(self, key: Key) -> bool:
        kb = key_to_bytes(validate_key(key))
        now = self._clock()

        def body(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute("DELETE FROM entries WHERE key = ? RETURNING file, expires", (kb,)).fetchall()

        try:
            rows = self._index.write(body)
        except DiskFullError:
            rows = self._delete_on_full_disk(kb, body)
        if not rows:
            return False
        self._files.unlink([rows[0][0]])
        live = rows[0][1] is None or rows[0][1] > now
        with self._index.lock:
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

        with self._index.lock:
            self._index.forget_uses()
        try:
            names = self._index.write(body)
        except DiskFullError:
            self._clear_on_full_disk()
            return
        self._files.unlink(names)

    # ------------------------------------------------------------------------------------------ a full disk
    # See Index.in_small_steps: value files go first, then the reserve, then rows a few per transaction.

    def _delete_on_full_disk(self, kb: bytes, body: Callable[[sqlite3.Connection], list[Any]]) -> list[Any]:
        row = self._index.read("SELECT file, expires FROM entries WHERE key = ?", (kb,))
        if row is None:
            return []
        self._files.unlink([row[0]])  # the value file first: that frees its space whatever the index can do
        self._index.release_reserve()
        try:
            rows = self._index.write(body)
        except DiskFullError:
            if not row[0]:
                raise
            # The value is gone with its file: the row reads as a miss and the next cleanup() drops it.
            log.warning("The disk holding %s is full: removed the value file of %s, its row stays until cleanup().",
                        self.path, _key_repr(kb))
            rows = [tuple(row)]
        self._index.restore_reserve()
        return rows

    def _clear_on_full_disk(self) -> None:
        names = self._index.read_all("SELECT file FROM entries WHERE file IS NOT NULL")
        self._files.unlink(r[0] for r in names)
        self._index.release_reserve()
        self._index.in_small_steps(
            lambda conn: conn.execute(
                f"DELETE FROM entries WHERE id IN (SELECT id FROM entries LIMIT {FULL_DISK_STEP}) RETURNING file"
            ).fetchall(),
            lambda rows: self._files.unlink(r[0] for r in rows),
        )
        self._index.restore_reserve()

    # ------------------------------------------------------------------------------------------ upkeep

    def cleanup(self, *, full: bool = False) -> CleanupReport:
        """Remove expired entries, enforce the bound, drop rows whose file is gone or damaged, remove orphan
        and abandoned temp files. Returns what it did.

        A pass costs what changed, not the cache's size: files are checked 1/16 of ``data/`` at a time (each
        pass the next slice). ``full=True`` checks every file and reconciles the shared totals with the rows.
        """
        from ._upkeep import Upkeep

        return Upkeep(self.name, self._index, self._files, self._stats).run(full)

    @property
    def stats(self) -> CacheStats:  # type: ignore[override]
        """This process's counters, with ``bytes``/``entries`` read from the shared index (all processes)."""
        with self._index.lock:
            if not self._index.closed:
                with contextlib.suppress(CacheError, sqlite3.Error):
                    self._stats.bytes, self._stats.entries = self._index.totals()
            return self._stats

    def close(self) -> None:
        """Write pending access bookkeeping and close the index. Idempotent."""
        self._index.close()
        _live.discard(self)

    def __repr__(self) -> str:
        return f"DiskCache({self.path!r}, size={self.max_bytes / _MB:g}, policy={self.policy!r})"


def _discard_temps(items: list[_Pending]) -> None:
    """Remove the temp files of writes that will not be published (a failed or interrupted commit)."""
    for p in items:
        if p.tmp:
            with contextlib.suppress(OSError):
                os.unlink(p.tmp)

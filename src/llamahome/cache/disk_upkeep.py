"""DiskCache.cleanup(): expiry, the bound, repairs and reconciliation, kept apart from the hot paths."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from . import disk_files as df
from . import disk_index as dx
from ._procs import pid_alive
from .stats import CleanupReport

if TYPE_CHECKING:
    from .disk import DiskCache

__all__ = ["run_cleanup"]


def run_cleanup(cache: DiskCache) -> CleanupReport:
    report = CleanupReport(cache=cache.name)
    _check_identity(cache)
    _expire_and_bound(cache, report)
    _check_files(cache, report)
    _remove_orphans(cache, report)
    _reconcile(cache, report)
    return report


def _check_identity(cache: DiskCache) -> None:
    """Reopen if another process replaced a damaged index file under us (ours would be a ghost)."""
    try:
        on_disk = os.stat(os.path.join(cache.path, dx.INDEX_NAME)).st_ino
    except OSError:
        on_disk = None
    if on_disk != cache._index_ino:
        with cache._lock:
            cache._reopen()


def _expire_and_bound(cache: DiskCache, report: CleanupReport) -> None:
    now = cache._clock()

    def body(conn: sqlite3.Connection) -> list[str]:
        cache._flush_access(conn)
        rows = conn.execute("SELECT id, file, size FROM entries WHERE expires <= ?", (now,)).fetchall()
        conn.executemany("DELETE FROM entries WHERE id = ?", [(r[0],) for r in rows])
        report.expired = len(rows)
        report.bytes_freed += sum(r[2] for r in rows)
        files = [r[1] for r in rows if r[1]]
        before = conn.execute("SELECT bytes, entries FROM meta WHERE id = 0").fetchone()
        files += cache._evict(conn, now, set())
        after = conn.execute("SELECT bytes, entries FROM meta WHERE id = 0").fetchone()
        report.evicted = before[1] - after[1]
        report.bytes_freed += before[0] - after[0]
        return files

    report.expired = report.evicted = 0
    files = cache._write(body)
    cache._stats.expirations += report.expired
    cache._unlink(files)


def _check_files(cache: DiskCache, report: CleanupReport) -> None:
    """Rows whose value file is gone (``missing``) or has the wrong size (``corrupt``)."""
    with cache._lock:
        rows = cache._guard(
            lambda: cache._conn().execute(
                "SELECT id, length(key), file, frame_size, size FROM entries WHERE file IS NOT NULL"
            ).fetchall()
        )
    gone: list[tuple[int, str, int]] = []
    bad: list[tuple[int, str, int]] = []
    for entry_id, key_len, name, frame_size, size in rows:
        if not df.is_valid_name(name):
            bad.append((entry_id, name, size))
            continue
        try:
            st = os.stat(cache._path(name))
        except FileNotFoundError:
            gone.append((entry_id, name, size))
            continue
        except OSError:
            continue
        if st.st_size != df.frame_offset(key_len) + frame_size:
            bad.append((entry_id, name, size))
    if not gone and not bad:
        return

    def body(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
        removed = []
        for entry in gone + bad:
            if conn.execute("DELETE FROM entries WHERE id = ? AND file = ?", entry[:2]).rowcount:
                removed.append(entry)
        return removed

    removed = set(cache._write(body))
    report.missing = sum(1 for e in gone if e in removed)
    report.corrupt = sum(1 for e in bad if e in removed)
    report.bytes_freed += sum(e[2] for e in removed)
    cache._stats.corrupt += report.missing + report.corrupt
    cache._unlink(e[1] for e in bad if e in removed)


def _remove_orphans(cache: DiskCache, report: CleanupReport) -> None:
    """Value files no row points to (a kill between commit and unlink), and dead writers' temp files."""
    listed: dict[str, str] = {}
    strays: list[str] = []
    for sub in _listdir(cache._data):
        folder = os.path.join(cache._data, sub)
        if not os.path.isdir(folder):
            strays.append(folder)
            continue
        for name in _listdir(folder):
            path = os.path.join(folder, name)
            if df.is_valid_name(name) and name[:2] == sub:
                listed[name] = path
            else:
                strays.append(path)
    orphans: list[str] = []
    if listed:
        # Under the write lock: a writer renames its file into data/ inside its transaction, so every file
        # listed above either has a committed row by now or never will.
        def body(conn: sqlite3.Connection) -> set[str]:
            return {r[0] for r in conn.execute("SELECT file FROM entries WHERE file IS NOT NULL")}

        referenced = cache._write(body)
        orphans = [path for name, path in listed.items() if name not in referenced]
    freed = 0
    for path in orphans + strays:
        with contextlib.suppress(OSError):
            size = os.lstat(path).st_size
            if os.path.isdir(path) and not os.path.islink(path):
                continue
            os.unlink(path)
            freed += size
            report.orphans += 1
    temps = 0
    now = time.time()
    for name in _listdir(cache._tmp):
        path = os.path.join(cache._tmp, name)
        pid_text = name.split("-", 1)[0]
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            dead = not pid_text.isdigit() or (int(pid_text) != os.getpid() and not pid_alive(int(pid_text)))
            if dead or now - st.st_mtime > _tmp_max_age():
                os.unlink(path)
                temps += 1
                freed += st.st_size
    report.orphans += temps
    report.bytes_freed += freed
    if temps:
        report.details["temp_files"] = temps


def _reconcile(cache: DiskCache, report: CleanupReport) -> None:
    """Make the shared totals equal the rows (they could drift only through a bug or a manual edit)."""

    def body(conn: sqlite3.Connection) -> tuple[Any, Any]:
        # Every unsettled lru insert gets its use recorded and the pending count is made exact again.
        dx.settle(conn, everything=True)
        real = conn.execute("SELECT coalesce(sum(size), 0), count(*) FROM entries").fetchone()
        kept = conn.execute("SELECT bytes, entries FROM meta WHERE id = 0").fetchone()
        if tuple(real) != tuple(kept):
            conn.execute("UPDATE meta SET bytes = ?, entries = ? WHERE id = 0", tuple(real))
        return real, kept

    real, kept = cache._write(body)
    with cache._lock:
        cache._checkpoint()
    cache._stats.bytes, cache._stats.entries = real
    report.details["bytes"] = real[0]
    report.details["entries"] = real[1]
    if tuple(real) != tuple(kept):
        report.details["reconciled"] = {"bytes": [kept[0], real[0]], "entries": [kept[1], real[1]]}
    report.details["index_bytes"] = sum(
        _size(os.path.join(cache.path, dx.INDEX_NAME + s)) for s in ("", "-wal", "-shm")
    )


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _tmp_max_age() -> float:
    from .disk import TMP_MAX_AGE

    return TMP_MAX_AGE

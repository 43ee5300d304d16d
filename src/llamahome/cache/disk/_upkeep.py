"""DiskCache.cleanup(): expiry, the bound, repairs and reconciliation, kept apart from the hot paths.

A pass costs what changed, not the cache's size: expired rows come from the expiry index, victims from the
policy's index; value files are checked (rows against files, files
against rows) one slice of the 256 ``data/`` folders per pass (1/16), walking round; the totals are trusted
(triggers keep them). ``full=True`` checks every file and reconciles the totals with the rows.

:class:`Upkeep` works through the cache's :class:`~._index.Index` and :class:`~._files.ValueFiles` objects
only (their own methods), never through DiskCache's internals.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any

from llamahome.errors import DiskFullError

from .. import files as cf
from ..stats import CacheStats, CleanupReport
from . import _files as df
from . import _sqlite as dx
from ._index import FULL_DISK_STEP, Index

__all__ = ["Upkeep", "TMP_MAX_AGE"]

#: data/ folders checked per cleanup pass (of 256): a pass checks 1/16 of the value files.
SLICE = 16
#: Temp files older than this are removed by cleanup() even if their writer's pid looks alive.
TMP_MAX_AGE = 3600.0



class Upkeep:
    """One cleanup pass over a cache directory (see :meth:`run`)."""

    def __init__(self, name: str, index: Index, files: df.ValueFiles, stats: CacheStats) -> None:
        self.index = index
        self.files = files
        self.stats = stats
        self.report = CleanupReport(cache=name)

    def run(self, full: bool = False) -> CleanupReport:
        self.index.check_identity()
        self._expire_and_bound()
        if full:
            lo, hi = "", "g"
        else:
            first = self.index.upkeep_cursor // SLICE * SLICE  # slices never wrap past ff
            self.index.upkeep_cursor = (first + SLICE) % 256
            lo, hi = f"{first:02x}", f"{first + SLICE:02x}" if first + SLICE < 256 else "g"
        self.report.details["checked_folders"] = [lo, hi]
        self._check_files(lo, hi)
        self._remove_orphans(lo, hi)
        self._reconcile(full)
        self.index.restore_reserve()
        return self.report

    def _expire_and_bound(self) -> None:
        index, report = self.index, self.report
        now = index.clock()
        report.expired = report.evicted = 0

        def body(conn: sqlite3.Connection, limit: int | None = None) -> list[tuple[str | None]]:
            """Expired rows, then rows over the bound (at most ``limit`` rows); returns ``(file,)`` per row."""
            index.flush_access(conn)
            sql = "SELECT id, file, size FROM entries WHERE expires <= ?"
            rows = conn.execute(sql + ("" if limit is None else f" LIMIT {int(limit)}"), (now,)).fetchall()
            conn.executemany("DELETE FROM entries WHERE id = ?", [(r[0],) for r in rows])
            report.expired += len(rows)
            report.bytes_freed += sum(r[2] for r in rows)
            deleted: list[tuple[str | None]] = [(r[1],) for r in rows]
            if limit is not None and rows:
                return deleted
            before = conn.execute("SELECT bytes, entries FROM meta WHERE id = 0").fetchone()
            files = index.evict(conn, now, set(), limit=limit)
            after = conn.execute("SELECT bytes, entries FROM meta WHERE id = 0").fetchone()
            report.evicted += before[1] - after[1]
            report.bytes_freed += before[0] - after[0]
            return deleted + [(f,) for f in files] + [(None,)] * (before[1] - after[1] - len(files))

        try:
            deleted = index.write(body)
        except DiskFullError:
            # A full disk: a few rows per transaction, each followed by a checkpoint (see Index.in_small_steps).
            report.expired = report.evicted = report.bytes_freed = 0
            index.release_reserve()
            index.in_small_steps(lambda conn: body(conn, FULL_DISK_STEP),
                                 lambda rows: self.files.unlink(r[0] for r in rows))
            index.restore_reserve()
            deleted = []
        self.stats.expirations += report.expired
        self.files.unlink(r[0] for r in deleted)

    def _check_files(self, lo: str, hi: str) -> None:
        """Rows (with files in folders ``lo`` to ``hi``) whose value file is gone (``missing``) or has the wrong
        size (``corrupt``)."""
        files, report = self.files, self.report
        rows = self.index.read_all(
            "SELECT id, length(key), file, frame_size, size FROM entries WHERE file >= ? AND file < ?", (lo, hi))
        gone: list[tuple[int, str, int]] = []
        bad: list[tuple[int, str, int]] = []
        for entry_id, key_len, name, frame_size, size in rows:
            if not df.is_valid_name(name) or not files.inside(name):
                bad.append((entry_id, name, size))
                continue
            try:
                st = os.lstat(files.path(name))
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

        removed = set(self.index.write(body))
        report.missing = sum(1 for e in gone if e in removed)
        report.corrupt = sum(1 for e in bad if e in removed)
        report.bytes_freed += sum(e[2] for e in removed)
        self.stats.corrupt += report.missing + report.corrupt
        files.unlink(e[1] for e in bad if e in removed)

    def _remove_orphans(self, lo: str, hi: str) -> None:
        """Value files no row points to (a kill between commit and unlink), and dead writers' temp files.

        Only files the cache recognises as its own are removed: a value file's name in its fan-out folder and
        a value file's header (or empty), a temp file's name and header; links are never followed. Anything
        else is left alone and counted in ``details["foreign"]``.
        """
        files, report = self.files, self.report
        files.ensure_dirs()  # raises if data/ or tmp/ was replaced by a link
        listed = {name: path for path, name in files.listed(lo, hi)}
        orphans: list[str] = []
        if listed:
            # Under the write lock: a writer renames its file into data/ inside its transaction, so every file
            # listed above either has a committed row by now or never will.
            def body(conn: sqlite3.Connection) -> set[str]:
                return {r[0] for r in conn.execute("SELECT file FROM entries WHERE file >= ? AND file < ?",
                                                   (lo, hi))}

            referenced = self.index.write(body)
            orphans = [path for name, path in listed.items() if name not in referenced]
        freed = foreign = 0
        for path in orphans:
            if not df.own_file(path):
                foreign += 1
                continue
            with contextlib.suppress(OSError):
                size = os.lstat(path).st_size
                os.unlink(path)
                freed += size
                report.orphans += 1
        # Temp files of dead writers (or older than TMP_MAX_AGE), by the shared scheme of cache.files.
        temps, temp_bytes = cf.sweep(files.tmp_dir, max_age=TMP_MAX_AGE, is_ours=df.own_file)
        freed += temp_bytes
        foreign += sum(1 for name in _listdir(files.tmp_dir)
                       if cf.temp_owner(name) is None or not df.own_file(os.path.join(files.tmp_dir, name)))
        report.orphans += temps
        report.bytes_freed += freed
        if temps:
            report.details["temp_files"] = temps
        if foreign:
            report.details["foreign"] = foreign

    def _reconcile(self, full: bool) -> None:
        """Make the shared totals equal the rows (they could drift only through a bug or a manual edit): only
        with ``full``; otherwise report the totals the triggers keep."""
        index, report = self.index, self.report

        def body(conn: sqlite3.Connection) -> tuple[Any, Any]:
            # One uses row per entry again (the triggers keep it so; a hand edit or a bug could not).
            for sql in dx.USES_RECONCILE:
                conn.execute(sql)
            real = conn.execute("SELECT coalesce(sum(size), 0), count(*) FROM entries").fetchone()
            kept = conn.execute("SELECT bytes, entries FROM meta WHERE id = 0").fetchone()
            if tuple(real) != tuple(kept):
                conn.execute("UPDATE meta SET bytes = ?, entries = ? WHERE id = 0", tuple(real))
            conn.execute(dx.FILE_TOTALS)
            return real, kept

        try:
            real, kept = index.write(body) if full else (index.totals(),) * 2
        except DiskFullError:
            # Only bookkeeping is left undone; the next cleanup on a disk with room does it.
            real = kept = index.totals()
            report.details["disk_full"] = True
        with index.lock:
            index.checkpoint()
            index.measure()
        self.stats.bytes, self.stats.entries = real
        report.details["bytes"] = real[0]
        report.details["entries"] = real[1]
        if tuple(real) != tuple(kept):
            report.details["reconciled"] = {"bytes": [kept[0], real[0]], "entries": [kept[1], real[1]]}
        report.details["index_bytes"] = sum(
            _size(os.path.join(index.root, dx.INDEX_NAME + s)) for s in ("", "-wal", "-shm")
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

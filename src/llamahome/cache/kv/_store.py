"""The disk tier of the KV cache: one checksummed blob file per block, evicted leaves first, least recently used.

Layout (directories 0700, files 0600)::

    <root>/KVCACHE                              marker: this directory is a KV cache (format version)
    <root>/lock                                 flock held while a writer makes room and renames blocks in
    <root>/blocks/<2 hex>/<key>-<parent>.kvb    one block: a value file (see ``cache.files``) whose key is
                                                b"LHKV" + key + parent and whose frame is ``_codec``'s
    <root>/blocks/<2 hex>/.<name>.<pid>-<hex>.tmp   a block being written (``files.temp_name``; renamed in whole)

Why files and not :class:`DiskCache`: eviction here must take *leaves of the chain* first (a block whose
descendants are kept is never evicted before them, or they could never be reached again), which needs the
parent of every block; the file name carries it, so one directory scan sees the whole forest without opening
a file. Last use is the file's mtime (set by ``touch`` on every hit), so every process sees every other's use.

Writes and the bound: a writer encodes its blocks outside any lock, then under ``lock`` scans the directory
(sizes, mtimes, parents), evicts until the new blocks fit, and renames them in (``files.write_value``
writes a temp file and renames it). The bound therefore holds across processes; temp files being written
are the only bytes outside it. Readers take no lock: a block deleted under a reader's open file is still read
whole, and a missing one is a miss. Every read checks the file's checksum, the key and parent in the blob and
the token ids against the prompt's, so a damaged, truncated or foreign file is a miss (and is removed).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamahome.errors import CorruptEntryError, StorageError

from .. import files as cf
from ..stats import CacheStats, CleanupReport
from ._blocks import Block
from ._codec import Decoded, decode

__all__ = ["BlockStore", "Entry"]

log = logging.getLogger("llamahome.cache.kv")
MARKER = "KVCACHE"
_MARKER_TEXT = "llamahome kv cache, format 1\n"
_BLOB_TAG = b"LHKV"
_NAME_RE = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{32})\.kvb$")
#: Temp files older than this are swept even when their writer's pid looks alive (pids are reused).
TMP_MAX_AGE = 3600.0


@dataclass
class Entry:
    """A block file found by a scan."""

    key: bytes
    parent: bytes
    size: int
    used: float
    path: str


@dataclass(frozen=True)
class Pending:
    """A block encoded and ready to be renamed in: its frame buffers and the file size they make."""

    block: Block
    parts: Sequence[Any]
    file_size: int


def blob_key(block: Block) -> bytes:
    return _BLOB_TAG + block.key + block.parent


def file_size(block: Block, frame_len: int) -> int:
    """The size of the value file a frame of ``frame_len`` bytes makes (header and padded key included)."""
    return cf.file_size(len(blob_key(block)), frame_len)


class BlockStore:
    """Block files under ``root``, bounded to ``max_bytes`` (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int, stats: CacheStats, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.stats = stats
        self.clock = clock
        self.blocks_dir = root / "blocks"
        self._scanned = float("-inf")
        self._open_dirs()

    # --- layout -------------------------------------------------------------------------------------
    def _open_dirs(self) -> None:
        root = self.root
        try:
            if root.is_symlink():
                raise StorageError(f"{root} is a symbolic link; give the KV cache a real directory.")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            marker = root / MARKER
            if not marker.exists():
                if any(root.iterdir()):
                    raise StorageError(
                        f"{root} is not empty and is not a KV cache directory (no {MARKER} file); the KV cache "
                        "deletes files in its directory, so give it a new or empty one."
                    )
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(_MARKER_TEXT)
            os.chmod(root, 0o700)
            self.blocks_dir.mkdir(exist_ok=True, mode=0o700)
            if self.blocks_dir.is_symlink() or not self.blocks_dir.is_dir():
                raise StorageError(f"{self.blocks_dir} is not a directory; remove it so the KV cache can make one.")
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(
                exc.errno, f"Cannot use {root} as the KV cache directory ({exc.strerror}); check its permissions."
            ) from exc

    def path(self, block: Block) -> Path:
        return self.blocks_dir / block.key.hex()[:2] / f"{block.name}.kvb"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One open per use: flock belongs to the open file description, so threads exclude each other too.
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- reads --------------------------------------------------------------------------------------
    def contains(self, block: Block) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path(block)).st_mode)
        except OSError:
            return False

    def read(self, block: Block) -> Decoded | None:
        """The block's arrays, verified; None when it is missing or damaged (a damaged file is removed)."""
        path = self.path(block)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return None  # never follow a link planted in the cache
        except OSError:
            return None
        blob = cf.read_value_file(path, blob_key(block))
        if blob is None:
            self._damaged(path, "failed its checksum or is truncated")
            return None
        try:
            decoded = decode(blob.frame)
        except CorruptEntryError as exc:
            self._damaged(path, str(exc))
            return None
        if not np.array_equal(decoded.tokens, block.tokens):
            self._damaged(path, "holds other token ids")
            return None
        return decoded

    def discard(self, block: Block, why: str) -> None:
        """Remove a block found damaged after :meth:`read` (a zstd plane that does not decompress)."""
        self._damaged(self.path(block), why)

    def _damaged(self, path: Path, why: str) -> None:
        if not path.exists():
            return  # evicted by another process between our lstat and read: a plain miss
        log.warning("Removing damaged KV block %s: %s.", path.name, why)
        self.stats.add("corrupt")
        with contextlib.suppress(OSError):
            os.unlink(path)

    def touch(self, blocks: Sequence[Block]) -> None:
        """Record a use of ``blocks`` (their mtime), which orders least-recently-used eviction."""
        now = self.clock()
        for block in blocks:
            with contextlib.suppress(OSError):  # evicted meanwhile: nothing to record
                os.utime(self.path(block), (now, now), follow_symlinks=False)

    # --- scans and eviction -------------------------------------------------------------------------
    def scan(self) -> list[Entry]:
        """Every block file (links and foreign names are ignored)."""
        entries: list[Entry] = []
        for sub in self._subdirs():
            try:
                with os.scandir(sub) as it:
                    for item in it:
                        m = _NAME_RE.match(item.name)
                        if m is None or not item.is_file(follow_symlinks=False):
                            continue
                        try:
                            st = item.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        key, parent = bytes.fromhex(m.group(1)), bytes.fromhex(m.group(2))
                        entries.append(Entry(key, parent, st.st_size, st.st_mtime, item.path))
            except OSError:
                continue
        self.stats.bytes = sum(e.size for e in entries)
        self.stats.entries = len(entries)
        self._scanned = time.monotonic()
        return entries

    def scan_age(self) -> float:
        """Seconds since the last scan."""
        return time.monotonic() - self._scanned

    def _subdirs(self) -> list[str]:
        try:
            with os.scandir(self.blocks_dir) as it:
                return [
                    d.path for d in it if len(d.name) == 2 and re.fullmatch("[0-9a-f]{2}", d.name)
                    and d.is_dir(follow_symlinks=False)
                ]
        except OSError:
            return []

    def _evict(self, entries: list[Entry], need: int, keep: set[bytes]) -> tuple[int, int, int]:
        """Remove leaves, least recently used first, until ``need`` more bytes fit; returns (kept total,
        evicted count, bytes freed). Blocks in ``keep`` (the prompt being stored) are never taken."""
        total = sum(e.size for e in entries)
        if total + need <= self.max_bytes:
            return total, 0, 0
        by_key = {e.key: e for e in entries}
        children: dict[bytes, int] = {}
        for e in entries:
            if e.parent in by_key:
                children[e.parent] = children.get(e.parent, 0) + 1
        heap = [(e.used, e.path, e.key) for e in entries if not children.get(e.key) and e.key not in keep]
        heapq.heapify(heap)
        evicted = freed = 0
        while heap and total + need > self.max_bytes:
            _, path, key = heapq.heappop(heap)
            entry = by_key.pop(key)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= entry.size
            freed += entry.size
            evicted += 1
            parent = by_key.get(entry.parent)
            if parent is not None:
                children[parent.key] -= 1
                if not children[parent.key] and parent.key not in keep:
                    heapq.heappush(heap, (parent.used, parent.path, parent.key))
        return total, evicted, freed

    # --- writes -------------------------------------------------------------------------------------
    def write(self, pending: Sequence[Pending], keep: set[bytes]) -> list[Block]:
        """Rename ``pending`` blocks in (in chain order), evicting to make room; returns those now stored.

        Blocks already on disk are not rewritten (their use is recorded); a block that cannot fit even after
        evicting everything outside ``keep`` is not stored, nor is anything after it in the chain."""
        stored: list[Block] = []
        with self._locked():
            entries = self.scan()
            present = {e.key for e in entries}
            todo = [p for p in pending if p.block.key not in present]
            self.touch([p.block for p in pending if p.block.key in present])
            need = sum(p.file_size for p in todo)
            total, evicted, _ = self._evict(entries, need, keep)
            self.stats.add("evictions", evicted)
            for p in todo:
                if total + p.file_size > self.max_bytes:
                    break
                path = self.path(p.block)
                self._subdir(path.parent)
                now = self.clock()
                cf.write_value(path, blob_key(p.block), p.parts, created=now)
                os.utime(path, (now, now))
                total += p.file_size
                stored.append(p.block)
            self.stats.bytes = total
            self.stats.entries = len(entries) - evicted + len(stored)
        return stored

    def _subdir(self, sub: Path) -> None:
        sub.mkdir(exist_ok=True, mode=0o700)
        if not stat.S_ISDIR(os.lstat(sub).st_mode):  # a link planted in place of a directory: never write through
            raise StorageError(f"{sub} is not a directory of the KV cache; remove it and retry.")

    def delete(self, block: Block) -> bool:
        try:
            os.unlink(self.path(block))
            return True
        except OSError:
            return False

    def clear(self) -> int:
        """Remove every block file; returns how many."""
        with self._locked():
            removed = 0
            for entry in self.scan():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
            self.scan()
        return removed

    def cleanup(self) -> CleanupReport:
        """Sweep temp files of dead writers, and evict down to the bound (after a bound was lowered)."""
        report = CleanupReport(cache="kv_cache")
        now = self.clock()
        with self._locked():
            for sub in self._subdirs():
                report.orphans += self._sweep_tmp(sub, now)
            entries = self.scan()
            _, evicted, freed = self._evict(entries, 0, set())
            report.evicted, report.bytes_freed = evicted, freed
            self.stats.add("evictions", evicted)
            self.scan()
        return report

    def _sweep_tmp(self, sub: str, now: float) -> int:
        """Remove temp files of dead writers, or older than TMP_MAX_AGE (``files.sweep``)."""
        return cf.sweep(sub, max_age=TMP_MAX_AGE, now=now)[0]

"""Checksummed, atomically written files: one encoded value per file, for the training and system caches.

A blob file is a 64-byte header followed by the optional key and a codec frame::

    0   magic    b"LHB1"
    4   version  u8, reserved u8 u16
    8   checksum u64   xxh3_64 of key + frame
    16  length   u64   frame length
    24  created  f64   the owning cache's clock when written
    32  seq      u64   the owning cache's write sequence number (FIFO order survives a restart)
    40  key_len  u32
    44  expires  f64   when the value stops being valid (0.0: never)
    52  reserved up to 64
    64  key bytes, zero padding to a multiple of 64, then the frame

Files are written to a private temporary name and renamed into place, so a reader (or a crash) never sees a
half-written blob; a damaged one fails its checksum and is treated as missing, never as a wrong value.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from llamahome.errors import CacheValueError, DiskFullError, StorageError

from .codecs import decode

__all__ = ["Blob", "BlobHeader", "write_blob", "read_blob", "read_value", "read_header", "HEADER_SIZE", "TMP_SUFFIX"]

MAGIC = b"LHB1"
_HEADER = struct.Struct("<4sBBHQQdQId")
HEADER_SIZE = 64
TMP_SUFFIX = ".tmp"
_VERSION = 1


@dataclass(frozen=True)
class BlobHeader:
    """What a blob's header says: its checksum, frame length, creation time, sequence number and key."""

    checksum: int
    length: int
    created: float
    seq: int
    key: bytes
    data_offset: int
    expires: float = 0.0

    @property
    def file_size(self) -> int:
        return self.data_offset + self.length


@dataclass
class Blob:
    """A verified blob: its header and a memoryview of its frame (inside a writable bytearray)."""

    header: BlobHeader
    frame: memoryview


def _pad(n: int) -> int:
    return -n % 64


def _storage_error(exc: OSError, path: Path, action: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return DiskFullError(
            exc.errno, f"No space left on the device while {action} {path}; free disk space or lower the cache's size."
        )
    return StorageError(exc.errno, f"Could not {action} {path} ({exc.strerror}); check the directory's permissions.")


def _write_all(fd: int, parts: Sequence[Any]) -> None:
    views = [memoryview(p).cast("B") for p in parts if memoryview(p).nbytes]
    while views:
        # writev may write less than asked (signals, pipes, quotas); carry on from where it stopped.
        written = os.writev(fd, views[:512])
        while written and views:
            n = views[0].nbytes
            if written >= n:
                written -= n
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0


def write_blob(
    path: Path,
    parts: Sequence[Any],
    *,
    created: float,
    seq: int,
    key: bytes = b"",
    expires: float = 0.0,
    fsync: bool = False,
) -> int:
    """Atomically write ``key`` + the frame ``parts`` to ``path``; return the file's size in bytes.

    Raises :class:`StorageError` (or :class:`DiskFullError`) when the disk refuses the write.
    """
    digest = xxhash.xxh3_64()
    digest.update(key)
    length = 0
    for part in parts:
        view = memoryview(part).cast("B")
        digest.update(view)
        length += view.nbytes
    head = _HEADER.pack(MAGIC, _VERSION, 0, 0, digest.intdigest(), length, created, seq, len(key), expires)
    head += b"\0" * (HEADER_SIZE - len(head))
    key_block = key + b"\0" * _pad(len(key))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            _write_all(fd, [head, key_block, *parts])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _storage_error(exc, path, "writing") from exc
    return HEADER_SIZE + len(key_block) + length


def _parse_header(head: bytes | memoryview) -> BlobHeader | None:
    if len(head) < HEADER_SIZE:
        return None
    magic, version, _, _, checksum, length, created, seq, key_len, expires = _HEADER.unpack_from(head, 0)
    if magic != MAGIC or version != _VERSION:
        return None
    return BlobHeader(checksum, length, created, seq, b"", HEADER_SIZE + key_len + _pad(key_len), expires)


def read_header(path: Path) -> BlobHeader | None:
    """The header of the blob at ``path`` (with its key), or None if it is missing or not a blob."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
            parsed = _parse_header(head)
            if parsed is None:
                return None
            key_len = _HEADER.unpack_from(head, 0)[8]
            key = f.read(key_len) if key_len else b""
    except OSError:
        return None
    if len(key) != key_len:
        return None
    return BlobHeader(
        parsed.checksum, parsed.length, parsed.created, parsed.seq, key, parsed.data_offset, parsed.expires
    )


def read_blob(path: Path) -> Blob | None:
    """Read and verify the blob at ``path``; None if it is missing, truncated or fails its checksum."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = os.readv(fd, [view[got:]])
            if n <= 0:
                break
            got += n
    except OSError:
        return None
    finally:
        os.close(fd)
    if got != size:
        return None
    parsed = _parse_header(view)
    if parsed is None or parsed.file_size != size:
        return None
    key_len = _HEADER.unpack_from(view, 0)[8]
    key = bytes(view[HEADER_SIZE : HEADER_SIZE + key_len])
    frame = view[parsed.data_offset :]
    digest = xxhash.xxh3_64()
    digest.update(key)
    digest.update(frame)
    if digest.intdigest() != parsed.checksum:
        return None
    header = BlobHeader(
        parsed.checksum, parsed.length, parsed.created, parsed.seq, key, parsed.data_offset, parsed.expires
    )
    return Blob(header, frame)


def read_value(path: Path, key: bytes) -> tuple[bool, Any]:
    """Read the blob at ``path`` and decode its value: ``(True, value)``, or ``(False, None)`` when the file
    is missing or damaged, holds another key (``key`` is :func:`~.base.key_to_bytes` form), or its frame
    does not decode. Callers count a False as a corrupt entry and drop it."""
    blob = read_blob(path)
    if blob is None or blob.header.key != key:
        return False, None
    try:
        return True, decode(blob.frame)
    except CacheValueError:
        return False, None

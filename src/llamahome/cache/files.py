"""Files the caches write: one atomic write, one temp-name scheme, one sweep, one checked value-file header.

Every cache that keeps files (the disk tier, the system, training, KV and model caches) writes them the same
way, so crash safety is stated once:

- **Atomic write** (:func:`write_atomic`, :func:`write_temp`): the bytes go to a temp file (``O_EXCL`` and
  ``O_NOFOLLOW``: never through a link, never over someone else's file), private (0600), optionally fsynced,
  then ``rename``\\ d into place. A reader or a crash (kill -9 included) sees the old file or the new one, never
  part of one; what a killed writer leaves is a temp file, which :func:`sweep` removes.
- **Temp names** (:func:`temp_name`): ``.<base>.<pid>-<32 hex>.tmp``, beside the final file or in a cache's
  ``tmp/`` folder. The writer's pid is in the name, so a sweep can tell a dead writer's leftovers from a live
  writer's work without opening the file.
- **Sweep** (:func:`sweep`, :func:`is_stale_temp`): removes only names of that shape (and the shapes older
  versions used) whose writer is dead, or that are older than a grace period (pids are reused); it never follows
  a link and never touches any other name.
- **Value files** (:func:`value_header`, :func:`read_header`, :func:`read_value_file`): a 64-byte checked
  header, the key, zero padding to 64 bytes, then a codec frame (``codecs``; its layout is the codec's business).

Value file layout (format ``LHVF`` version 1)::

    0   magic b"LHVF", version u8, 3 reserved bytes
    8   key_len u32, 4 reserved bytes
    16  expires f64 (NaN: no expiry)
    24  created f64
    32  checksum u64 (xxh3_64 of the frame)
    40  frame_len u64
    48  seq u64 (the writer's sequence number; 0 if it keeps none)
    56  header check u64: xxh3_64 of bytes 0..56 and the key, so a damaged time, length or key is caught
    64  key bytes, zero padding to a multiple of 64
        frame: 64-byte aligned in the file, so arrays mapped with mmap stay aligned

The key binds the file to its entry: a reader passes the key it expects, and a file holding another key (moved,
swapped or damaged) reads as missing, never as another entry's value. Files of the two formats this one
replaced still read: the disk tier's ``LHDV`` v1 (the same layout without ``seq`` and header check) and the
blob files ``LHB1`` of the training and KV caches (their checksum covers key and frame).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from llamahome.errors import DiskFullError, StorageError

from ._procs import pid_alive

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "TEMP_SUFFIX",
    "FileHeader",
    "ValueFile",
    "ensure_private_dir",
    "write_all",
    "write_temp",
    "write_atomic",
    "write_value",
    "temp_name",
    "temp_owner",
    "is_stale_temp",
    "sweep",
    "frame_offset",
    "file_size",
    "value_header",
    "is_value_file_head",
    "names_key",
    "parse_header",
    "read_header",
    "read_value_file",
    "storage_error",
]

MAGIC = b"LHVF"
VERSION = 1
HEADER_SIZE = 64
TEMP_SUFFIX = ".tmp"
_HEAD = struct.Struct("<4sB3xI4xddQQQ")  # up to the header check
_CHECK = struct.Struct("<Q")
_CHECK_AT = 56
_KEY_LEN = struct.Struct("<I")
#: The largest key a header may name: a damaged length must not make a reader allocate gigabytes.
MAX_KEY = 1 << 20
_U64 = 1 << 64
# Linux moves at most about 2 GiB per read/write call, and writev takes at most IOV_MAX buffers.
_MAX_IO = 0x7FFFF000
_IOV_MAX = 1024
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

# Formats this module replaced, still read (see the module docstring).
_OLD_DISK_MAGIC = b"LHDV"  # version 1: _HEAD's layout, seq and header check zero
_OLD_BLOB_MAGIC = b"LHB1"  # version 1: magic, version, 2 reserved, checksum(key+frame), length, created, seq,
_OLD_BLOB = struct.Struct("<4sBBHQQdQId")  # key_len, expires (0.0: never)

# ------------------------------------------------------------------------------------------ directories


def ensure_private_dir(path: str | os.PathLike[str]) -> None:
    """Make ``path`` a private (0700) directory if it is missing; refuse a symlink or anything but a directory
    (StorageError), so a cache never writes, reads or deletes through a link out of its directory."""
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise StorageError(
            f"{path} is {what}; the cache never follows links out of its directory. Remove it (the cache "
            "makes a new one) or point the cache at another directory."
        )


# ------------------------------------------------------------------------------------------ temp names

_NONCE_HEX = 32
#: ``.<base>.<pid>-<32 hex>.tmp`` (this module's names).
_TEMP_RE = re.compile(r"\A\.(?P<base>[^/\x00]*)\.(?P<pid>[0-9]{1,10})-[0-9a-f]{32}\.tmp\Z")
#: Names earlier versions gave temp files, still swept by the same rules: blob files and scratch records
#: ``.<name>.<pid>.<thread id>.tmp``; the disk tier's ``<pid>-<32 hex>.tmp``; the model cache's ``<pid>-<32 hex>``.
_OLD_TEMP_RES = (
    re.compile(r"\A\.(?P<base>[^/\x00]+)\.(?P<pid>[0-9]{1,10})\.[0-9]{1,20}\.tmp\Z"),
    re.compile(r"\A(?P<pid>[0-9]{1,10})-[0-9a-f]{32}(?:\.tmp)?\Z"),
)


def temp_name(base: str = "") -> str:
    """A fresh temp name for a file (or directory) that will become ``base``: ``.<base>.<pid>-<32 hex>.tmp``.

    128 random bits make it unique across processes and threads without coordination; the pid lets
    :func:`sweep` recognise a dead writer's leftovers.
    """
    if "/" in base or "\0" in base:
        raise ValueError(f"a temp name's base must be a plain name, not {base!r}")
    return f".{base}.{os.getpid()}-{os.urandom(_NONCE_HEX // 2).hex()}{TEMP_SUFFIX}"


def temp_owner(name: str) -> int | None:
    """The writer's pid in a temp name this module (or an earlier version) made; None for any other name."""
    for pattern in (_TEMP_RE, *_OLD_TEMP_RES):
        match = pattern.match(name)
        if match is not None:
            return int(match.group("pid"))
    return None


def is_stale_temp(name: str, mtime: float, *, max_age: float | None = None, now: float | None = None) -> bool:
    """True if ``name`` is a temp name whose writer is dead, or (with ``max_age``) that was last written more
    than ``max_age`` seconds before ``now`` (pids are reused, so a long-lived leftover can look alive)."""
    pid = temp_owner(name)
    if pid is None:
        return False
    if pid != os.getpid() and not pid_alive(pid):
        return True
    return max_age is not None and (time.time() if now is None else now) - mtime > max_age


def sweep(
    directory: str | os.PathLike[str],
    *,
    max_age: float | None = None,
    now: float | None = None,
    is_ours: Callable[[str], bool] | None = None,
) -> tuple[int, int]:
    """Remove the stale temp files (see :func:`is_stale_temp`) in ``directory``; return ``(files, bytes)``.

    Only regular files with a temp name are removed (``is_ours(path)``, when given, must agree too); links,
    folders and other names are left alone, and a ``directory`` that is a link is not entered.
    """
    removed = freed = 0
    directory = os.fspath(directory)
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return 0, 0
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        return 0, 0
    for entry in entries:
        if temp_owner(entry.name) is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not is_stale_temp(entry.name, st.st_mtime, max_age=max_age, now=now):
            continue
        if is_ours is not None and not is_ours(entry.path):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
            freed += st.st_size
    return removed, freed


# ------------------------------------------------------------------------------------------ atomic writes


def storage_error(exc: OSError, path: str | os.PathLike[str], action: str) -> StorageError:
    """The library's error for an OSError met trying to ``action`` (a verb: "write") ``path``; DiskFullError
    for a full disk or quota."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            exc.errno, f"No space left on the device to {action} {path}; free disk space or lower the cache's size."
        )
    return StorageError(exc.errno, f"Could not {action} {path} ({exc.strerror}); check the directory's permissions.")


def write_all(fd: int, buffers: Sequence[Any]) -> None:
    """Write every buffer, in as few large writev calls as the kernel allows, handling short writes."""
    views = [v for v in (memoryview(b).cast("B") for b in buffers) if v.nbytes]
    i = 0
    while i < len(views):
        batch: list[memoryview] = []
        total = 0
        j = i
        while j < len(views) and len(batch) < _IOV_MAX and total < _MAX_IO:
            take = views[j][: _MAX_IO - total]
            batch.append(take)
            total += len(take)
            j += 1
        written = os.writev(fd, batch)
        # Advance past what was written (a short write leaves part of a buffer).
        while written and i < len(views):
            n = len(views[i])
            if written >= n:
                written -= n
                i += 1
            else:
                views[i] = views[i][written:]
                written = 0


def write_temp(directory: str | os.PathLike[str], base: str, parts: Sequence[Any], *, fsync: bool = False) -> str:
    """Write ``parts`` to a new private temp file :func:`temp_name` ``(base)`` in ``directory``; return its path.

    The caller renames it into place (``os.replace``), possibly inside its own transaction. Raises OSError
    (ENOSPC, EROFS, EACCES, ELOOP for a link, ...) after removing the partial file.
    """
    path = os.path.join(os.fspath(directory), temp_name(base))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, parts)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | os.PathLike[str], parts: Sequence[Any], *, fsync: bool = False) -> int:
    """Replace ``path`` with ``parts``, atomically: a temp file beside it, renamed over it; return the bytes.

    With ``fsync`` the file and then its directory are flushed, so the new file survives a power cut.
    ``path``'s directory must exist (see :func:`ensure_private_dir`). Raises StorageError (DiskFullError when
    the disk is full); the temp file is gone either way.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    try:
        tmp = write_temp(directory, name, parts, fsync=fsync)
    except OSError as exc:
        raise storage_error(exc, path, "write") from exc
    try:
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise storage_error(exc, path, "write") from exc
    if fsync:
        _fsync_dir(directory)
    return sum(memoryview(p).nbytes for p in parts)


# ------------------------------------------------------------------------------------------ value files


@dataclass(frozen=True)
class FileHeader:
    """What a value file's header says (its key included)."""

    key: bytes
    expires: float | None
    created: float
    checksum: int  # unsigned xxh3_64 of the frame (LHB1 files: of key + frame)
    frame_len: int
    seq: int = 0
    legacy_blob: bool = False  # an LHB1 file: its checksum covers the key too

    @property
    def data_offset(self) -> int:
        return frame_offset(len(self.key))

    @property
    def file_size(self) -> int:
        return self.data_offset + self.frame_len


@dataclass
class ValueFile:
    """A verified value file: its header and a view of its frame (inside a writable bytearray)."""

    header: FileHeader
    frame: memoryview


def frame_offset(key_len: int) -> int:
    """Where the frame starts in a value file whose key is ``key_len`` bytes long."""
    end = HEADER_SIZE + key_len
    return end + (-end % 64)


def file_size(key_len: int, frame_len: int) -> int:
    """The size of the value file of a ``key_len``-byte key and a ``frame_len``-byte frame."""
    return frame_offset(key_len) + frame_len


def value_header(
    key: bytes, *, frame_len: int, checksum: int, created: float, expires: float | None = None, seq: int = 0
) -> bytes:
    """The header, key and padding that go before a frame (``checksum``: xxh3_64 of the frame, any sign)."""
    exp = math.nan if expires is None else float(expires)
    head = _HEAD.pack(MAGIC, VERSION, len(key), exp, float(created), checksum % _U64, frame_len, seq % _U64)
    check = xxhash.xxh3_64()
    check.update(head)
    check.update(key)
    head += _CHECK.pack(check.intdigest())
    return head + key + b"\0" * (frame_offset(len(key)) - HEADER_SIZE - len(key))


def is_value_file_head(head: bytes | memoryview) -> bool:
    """True if ``head`` starts like a value file this module writes or reads (the current or an old format)."""
    start = bytes(head[:5])
    return start in (MAGIC + bytes([VERSION]), _OLD_DISK_MAGIC + b"\x01", _OLD_BLOB_MAGIC + b"\x01")


def names_key(head: Any, key: bytes) -> bool:
    """True if the value file whose first ``frame_offset(len(key))`` bytes are ``head`` is intact and names
    ``key`` (current format and LHDV v1; the fast check of a reader that verifies the frame itself)."""
    start = bytes(head[:5])
    if start == MAGIC + bytes([VERSION]):
        if len(head) < HEADER_SIZE + len(key) or _KEY_LEN.unpack_from(head, 8)[0] != len(key):
            return False
        if head[HEADER_SIZE : HEADER_SIZE + len(key)] != key:
            return False
        check = xxhash.xxh3_64()
        check.update(head[:_CHECK_AT])
        check.update(key)
        return bool(_CHECK.unpack_from(head, _CHECK_AT)[0] == check.intdigest())
    return (start == _OLD_DISK_MAGIC + b"\x01"
            and len(head) >= HEADER_SIZE + len(key)
            and _KEY_LEN.unpack_from(head, 8)[0] == len(key)
            and head[HEADER_SIZE : HEADER_SIZE + len(key)] == key)


def parse_header(head: Any, read_key: Callable[[int, int], bytes]) -> FileHeader | None:
    """The header at the start of ``head`` (at least 64 bytes), its key fetched with ``read_key(offset,
    length)``; None if it is not an intact value file header (any format)."""
    if len(head) < HEADER_SIZE:
        return None
    start = bytes(head[:5])
    if start in (MAGIC + bytes([VERSION]), _OLD_DISK_MAGIC + b"\x01"):
        _, _, key_len, exp, created, digest, frame_len, seq = _HEAD.unpack_from(head)
        if key_len > MAX_KEY:
            return None
        key = read_key(HEADER_SIZE, key_len)
        if len(key) != key_len:
            return None
        if start[:4] == MAGIC:
            check = xxhash.xxh3_64()
            check.update(head[:_CHECK_AT])
            check.update(key)
            if _CHECK.unpack_from(head, _CHECK_AT)[0] != check.intdigest():
                return None
        else:
            seq = 0
        return FileHeader(key, None if math.isnan(exp) else exp, created, digest, frame_len, seq)
    if start == _OLD_BLOB_MAGIC + b"\x01":
        _, _, _, _, digest, frame_len, created, seq, key_len, exp = _OLD_BLOB.unpack_from(head)
        if key_len > MAX_KEY:
            return None
        key = read_key(HEADER_SIZE, key_len)
        if len(key) != key_len:
            return None
        return FileHeader(key, None if exp == 0.0 else exp, created, digest, frame_len, seq, legacy_blob=True)
    return None


def _open_regular(path: str | os.PathLike[str]) -> int | None:
    """A read-only fd of ``path`` if it is a regular file (never a link, never blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def read_header(path: str | os.PathLike[str]) -> FileHeader | None:
    """The checked header of the value file at ``path``; None if it is missing, not a regular file, not a value
    file, or not complete (its size disagrees with the header). The frame is not verified."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        head = os.pread(fd, HEADER_SIZE, 0)
        header = parse_header(head, lambda offset, n: os.pread(fd, n, offset) if n else b"")
        size = os.fstat(fd).st_size
    except OSError:
        return None
    finally:
        os.close(fd)
    if header is None or size != header.file_size:
        return None
    return header


def read_value_file(path: str | os.PathLike[str], key: bytes | None) -> ValueFile | None:
    """Read and verify the value file at ``path``: header, size, key (when ``key`` is given, it must be the
    file's) and frame checksum. None if it is missing, damaged, truncated or holds another key."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = os.preadv(fd, [view[got : got + _MAX_IO]], got)
            if n <= 0:
                break
            got += n
    except OSError:
        return None
    finally:
        os.close(fd)
    if got != size:
        return None
    header = parse_header(view, lambda offset, n: bytes(view[offset : offset + n]))
    if header is None or header.file_size != size or (key is not None and header.key != key):
        return None
    frame = view[header.data_offset :]
    digest = xxhash.xxh3_64()
    if header.legacy_blob:
        digest.update(header.key)
    digest.update(frame)
    if digest.intdigest() != header.checksum:
        return None
    return ValueFile(header, frame)


def write_value(
    path: str | os.PathLike[str],
    key: bytes,
    parts: Sequence[Any],
    *,
    created: float,
    seq: int = 0,
    expires: float | None = None,
    fsync: bool = False,
) -> int:
    """Atomically write the value file of ``key`` with the frame ``parts`` to ``path``; return its size.

    Raises StorageError (DiskFullError) when the disk refuses the write.
    """
    digest = xxhash.xxh3_64()
    frame_len = 0
    for part in parts:
        view = memoryview(part).cast("B")
        digest.update(view)
        frame_len += view.nbytes
    head = value_header(key, frame_len=frame_len, checksum=digest.intdigest(), created=created, expires=expires,
                        seq=seq)
    return write_atomic(Path(path), [head, *parts], fsync=fsync)

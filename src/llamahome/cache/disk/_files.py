"""Value files of the disk tier: names, where they live, checked reads.

A value file holds one large entry in the shared value-file format of :mod:`llamahome.cache.files` (checked
header, key, frame 64-byte aligned so arrays mapped with mmap stay aligned); files written before that module
(``LHDV`` version 1) still read. Temp files are written and swept by ``files`` too.

The index row is the authority; the header (key, times, checksum) lets a lost index be rebuilt from the files.
File names are random hex and never derive from the key, so no key can name a path.
"""

from __future__ import annotations

import contextlib
import errno
import mmap as _mmap
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from .. import codecs
from .. import files as cf

__all__ = [
    "ValueFiles",
    "FILE_HEADER_SIZE",
    "FileHeader",
    "checksum",
    "checksum_parts",
    "key_checksum",
    "frame_offset",
    "new_name",
    "is_valid_name",
    "file_path",
    "write_value_file",
    "read_header",
    "read_frame",
    "DamagedFile",
    "is_no_space",
    "ensure_real_dir",
    "inside",
    "own_file",
    "value_files",
]

FILE_HEADER_SIZE = cf.HEADER_SIZE
_NAME_RE = re.compile(r"\A[0-9a-f]{32}\Z")
# Linux moves at most about 2 GiB per read/write call, and writev takes at most IOV_MAX buffers.
_MAX_IO = 0x7FFFF000
#: The length of the codec's header before a plain bytes value (a read fetches it with the file header).
_PLAIN = len(codecs.plain_bytes_header(0))
_U64 = 1 << 64


def _signed(value: int) -> int:
    """SQLite integers are signed 64-bit; store the unsigned hash in that range."""
    return value - _U64 if value >= 1 << 63 else value


def checksum(data: Any) -> int:
    """xxh3_64 of one buffer, as a signed 64-bit int (the form kept in the index)."""
    return _signed(xxhash.xxh3_64_intdigest(data))


def key_checksum(data: Any, key: bytes) -> int:
    """The checksum of an inline value bound to its key: xxh3_64 of ``data`` seeded with the key's xxh3_64, so
    a row whose key was changed or swapped fails it (a miss, never another key's value)."""
    return _signed(xxhash.xxh3_64_intdigest(data, xxhash.xxh3_64_intdigest(key)))


def checksum_parts(parts: Sequence[Any]) -> int:
    """xxh3_64 over several buffers, as if joined (no joining copy)."""
    if len(parts) == 1:
        return checksum(parts[0])
    h = xxhash.xxh3_64()
    for part in parts:
        h.update(part)
    return _signed(h.intdigest())


frame_offset = cf.frame_offset


def new_name() -> str:
    """A fresh random file name (128 bits: unique across processes without coordination)."""
    return os.urandom(16).hex()  # what secrets.token_hex does, without importing secrets (hmac, OpenSSL)


def is_valid_name(name: object) -> bool:
    """True for names this module makes; anything else read from the index is refused, never opened."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def file_path(data_dir: str, name: str) -> str:
    """data/ab/abcdef... : 256 fan-out folders keep directories small."""
    return os.path.join(data_dir, name[:2], name)


ensure_real_dir = cf.ensure_private_dir


def inside(data_dir: str, name: str) -> bool:
    """True if ``data/<name[:2]>`` are real directories (no symlink on the way), so the value file path of
    ``name`` (a valid name: no separators) resolves inside the cache. The file itself is opened O_NOFOLLOW."""
    try:
        return stat.S_ISDIR(os.lstat(data_dir).st_mode) and stat.S_ISDIR(
            os.lstat(os.path.join(data_dir, name[:2])).st_mode)
    except OSError:
        return False


def value_files(data_dir: str, lo: str = "", hi: str = "g") -> Iterator[tuple[str, str]]:
    """``(path, name)`` of every file under ``data/`` whose name the cache makes, in the fan-out folder its
    name picks (only folders ``lo <= name < hi``); links (to folders or files) and foreign names are skipped,
    never followed."""
    for sub in _scandir(data_dir):
        if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2 or not lo <= sub.name < hi:
            continue
        for entry in _scandir(sub.path):
            if is_valid_name(entry.name) and entry.name[:2] == sub.name and entry.is_file(follow_symlinks=False):
                yield entry.path, entry.name


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return []
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def own_file(path: str) -> bool:
    """True if ``path`` is a regular file (not a link) that starts with a value file's header, or an empty
    regular file (a write killed before its first byte): the only files cleanup may delete."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        head = os.pread(fd, 5, 0)  # magic and version
    except OSError:
        return False
    finally:
        os.close(fd)
    return cf.is_value_file_head(head) or (st.st_size == 0 and head == b"")


@dataclass
class FileHeader:
    key: bytes
    expires: float | None
    created: float
    checksum: int
    frame_len: int

    @property
    def file_size(self) -> int:
        return frame_offset(len(self.key)) + self.frame_len


def _header_bytes(key: bytes, expires: float | None, created: float, digest: int, frame_len: int) -> bytes:
    return cf.value_header(key, frame_len=frame_len, checksum=digest, created=created, expires=expires)


def write_value_file(
    tmp_dir: str,
    key: bytes,
    parts: Sequence[Any],
    frame_len: int,
    digest: int,
    created: float,
    expires: float | None,
    sync: bool,
) -> str:
    """Write a complete value file under ``tmp_dir`` and return its path; the caller renames it into place.

    The temp name (:func:`llamahome.cache.files.temp_name`) carries our pid so cleanup can tell a dead writer's
    leftovers from a live writer's work. Raises OSError (ENOSPC, EROFS, EACCES, ...) after removing the
    partial file.
    """
    head = _header_bytes(key, expires, created, digest, frame_len)
    return cf.write_temp(tmp_dir, "value", [head, *parts], fsync=sync)


def read_header(path: str) -> FileHeader | None:
    """The header of a value file, or None if it is not a complete value file (used to rebuild the index)."""
    header = cf.read_header(path)
    if header is None or header.legacy_blob:
        return None
    return FileHeader(header.key, header.expires, header.created, _signed(header.checksum), header.frame_len)


class DamagedFile(Exception):
    """The value file does not match its index row (size or checksum)."""


def read_frame(path: str, key: bytes, frame_len: int, digest: int, use_mmap: bool) -> tuple[Any, bool]:
    """Read and verify the frame of ``key``; return ``(buffer, is_bytes_payload)``.

    The file's header must name ``key`` (so a damaged or swapped key in the index reads as damage, never as
    another key's value) and the frame must match ``digest``. The buffer is a writable bytearray view, or a
    read-only mmap view with ``use_mmap``. An uncompressed ``bytes`` value is read straight into the final
    ``bytes`` object (``is_bytes_payload`` True), saving the copy that decoding would make. Raises
    FileNotFoundError if the file is gone and DamagedFile if its header, size or checksum is wrong.
    """
    offset = frame_offset(len(key))
    # O_NOFOLLOW: never read through a link; O_NONBLOCK: a FIFO put in data/ cannot hang the read.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if os.fstat(fd).st_size != offset + frame_len:
            raise DamagedFile("size")
        if use_mmap and frame_len:
            mm = _mmap.mmap(fd, 0, access=_mmap.ACCESS_READ)
            if not _names(mm, key):
                mm.close()
                raise DamagedFile("key")
            view = memoryview(mm)[offset:]
            if checksum(view) != digest:
                view.release()
                mm.close()
                raise DamagedFile("checksum")
            return view, False
        # The header (magic, key) and the frame's own header in one read.
        head = os.pread(fd, offset + _PLAIN, 0)
        if not _names(head, key):
            raise DamagedFile("key")
        head = head[offset:]
        # A plain uncompressed bytes frame: the codec's fixed header for it, then the payload.
        if len(head) == _PLAIN and head == codecs.plain_bytes_header(frame_len - _PLAIN) and frame_len - _PLAIN <= _MAX_IO:
            payload = os.pread(fd, frame_len - _PLAIN, offset + _PLAIN)
            h = xxhash.xxh3_64(head)
            h.update(payload)
            if len(payload) != frame_len - _PLAIN or _signed(h.intdigest()) != digest:
                raise DamagedFile("checksum")
            return payload, True
        buf = bytearray(frame_len)
        view = memoryview(buf)
        done = 0
        while done < frame_len:
            n = os.preadv(fd, [view[done : done + _MAX_IO]], offset + done)
            if n <= 0:
                raise DamagedFile("short read")
            done += n
        if checksum(buf) != digest:
            raise DamagedFile("checksum")
        return view, False
    finally:
        os.close(fd)


def _names(head: Any, key: bytes) -> bool:
    """True if the file header at the start of ``head`` is an intact value file header and names ``key``."""
    return cf.names_key(head, key)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class ValueFiles:
    """The value files of one cache directory: ``data/ab/<name>`` and the temp files under ``tmp/``.

    Every path it acts on is built from a valid name and checked to resolve inside the cache (no link on the
    way); files are opened O_NOFOLLOW and only files with the cache's own names and headers are removed.
    """

    def __init__(self, root: str) -> None:
        self.data_dir = os.path.join(root, "data")
        self.tmp_dir = os.path.join(root, "tmp")

    def ensure_dirs(self) -> None:
        """Create ``data/`` and ``tmp/``; refuse either if it is a link (StorageError)."""
        ensure_real_dir(self.data_dir)
        ensure_real_dir(self.tmp_dir)

    def path(self, name: str) -> str:
        return file_path(self.data_dir, name)

    def inside(self, name: str) -> bool:
        """True if ``name``'s folder is a real directory of the cache (see :func:`inside`)."""
        return inside(self.data_dir, name)

    def write(self, key: bytes, parts: Sequence[Any], frame_len: int, digest: int, created: float,
              expires: float | None, sync: bool) -> tuple[str, str]:
        """Write a value file to ``tmp/``; return ``(name, temp path)``. The caller renames it into
        :meth:`path` inside its transaction. Raises StorageError for a linked folder, OSError otherwise."""
        name = new_name()
        ensure_real_dir(os.path.dirname(self.path(name)))  # never a link out of the cache
        return name, write_value_file(self.tmp_dir, key, parts, frame_len, digest, created, expires, sync)

    def read(self, name: str, key: bytes, frame_len: int, digest: int, use_mmap: bool) -> tuple[Any, bool]:
        """:func:`read_frame` of the file ``name``; DamagedFile if its path would leave the cache."""
        if not self.inside(name):
            raise DamagedFile("path outside the cache")
        return read_frame(self.path(name), key, frame_len, digest, use_mmap)

    def unlink(self, names: Iterable[str | None]) -> None:
        """Remove value files by name (from the index): only valid names, in real folders of the cache."""
        for name in names:
            if name and is_valid_name(name) and self.inside(name):
                with contextlib.suppress(OSError):
                    os.unlink(self.path(name))

    def listed(self, lo: str = "", hi: str = "g") -> Iterator[tuple[str, str]]:
        """``(path, name)`` of the value files present in folders ``lo <= name < hi`` (see :func:`value_files`)."""
        return value_files(self.data_dir, lo, hi)

"""File locks (``flock``) that coordinate model cache users across processes and threads.

``flock`` locks belong to an open file description, so two opens in one process exclude each other just as two
processes do: a thread loading a model and another evicting it see the same lock as two processes would.
Lock files of deleted models are unlinked by whoever holds them exclusively; an acquirer checks afterwards
that the path still names the inode it locked, and retries if not, so nobody keeps a lock on a dead file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from types import TracebackType

from llamahome.errors import StorageError

__all__ = ["FileLock"]


class FileLock:
    """One lock on ``path``: shared (readers, pins) or exclusive (writers, evictors)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, shared: bool = False, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False instead of waiting."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        while True:
            fd = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # the file was unlinked by a deleter while we waited: lock the new one

    def release(self, *, unlink: bool = False) -> None:
        """Drop the lock; ``unlink=True`` (exclusive holders only) also removes the lock file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _open_lock_file(path: str) -> int:
    """Open (creating) a lock file; anything but a regular file there is a clear StorageError, not an OSError.

    O_NOFOLLOW: a symlink planted at a lock's name must not make us create or lock a file elsewhere.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ELOOP, errno.ENXIO):
            kind = "a directory" if exc.errno == errno.EISDIR else "a symlink or special file"
            raise StorageError(
                f"The model cache's lock file {path} is {kind}, not a file the cache made; remove it and retry."
            ) from None
        raise StorageError(
            f"Cannot open the model cache's lock file {path} ({exc.strerror}); check the directory's permissions."
        ) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"The model cache's lock file {path} is not a regular file; remove it and retry.")
    except BaseException:
        os.close(fd)
        raise
    return fd

"""The marker file that makes a directory a LlamaHome disk cache, and the space reserve kept beside it.

``<dir>/.llamahome-cache`` is a small JSON object the cache writes when it creates the directory::

    {"kind": "disk", "format": 1, "max_bytes": 67108864, "policy": "lru"}

Why a marker rather than a dedicated subdirectory: the directory the user names *is* the cache (the CLI's
``--dir``, ``cache.disk.path`` and every existing cache keep meaning what they meant), and a marker lets the
cache refuse a directory it did not create instead of quietly adding a subdirectory to the user's project.
Opening a directory refuses with :class:`NotACacheError` unless it is missing or empty (a new cache), holds a
disk cache marker of a format this version reads, or holds an index written by an earlier version (no marker
yet: the index's schema is recognised and the marker is added). The bound and the policy are stored in the
marker too, so ``llamahome cache stats|cleanup --dir`` use the cache's own bound rather than a default.

The reserve (``<dir>/reserve``, 1/64 of the bound, 128 KiB to 1 MiB) is space the cache holds so that it can free space on a full
disk: deleting entries writes to the index, which needs a little room; the reserve file is removed to make
that room and put back once there is space again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from llamahome.errors import NotACacheError

from .. import files as cf
from ._log import log

__all__ = [
    "MARKER_NAME", "FORMAT", "NotACacheError", "Marker", "claim", "read_marker", "write_marker",
    "RESERVE_NAME", "reserve_bytes", "ensure_reserve", "release_reserve",
]

MARKER_NAME = ".llamahome-cache"
KIND = "disk"
#: The on-disk format this version writes and reads (the marker, the index schema and the value files).
FORMAT = 1
RESERVE_NAME = "reserve"
_INDEX_NAME = "index.sqlite3"
_MARKER_TMP_PREFIX = MARKER_NAME + "."


@dataclass
class Marker:
    """What the marker says: the kind of cache, its format, and the bound and policy it was opened with."""

    kind: str
    format: int
    max_bytes: int | None
    policy: str | None


def read_marker(root: str) -> Marker | None:
    """The marker of ``root``, or None if it has none (or one that is not a JSON object of ours)."""
    try:
        with open(os.path.join(root, MARKER_NAME), "rb") as f:
            data: Any = json.loads(f.read(64 * 1024))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or type(data.get("format")) is not int:
        return None
    max_bytes = data.get("max_bytes")
    policy = data.get("policy")
    return Marker(
        data["kind"], data["format"],
        max_bytes if type(max_bytes) is int and max_bytes > 0 else None,
        policy if isinstance(policy, str) else None,
    )


def write_marker(root: str, max_bytes: int, policy: str) -> None:
    """Write the marker atomically (``files.write_atomic``: a temp file renamed over it). Raises OSError
    (StorageError)."""
    body = json.dumps({"kind": KIND, "format": FORMAT, "max_bytes": max_bytes, "policy": policy}).encode()
    cf.write_atomic(os.path.join(root, MARKER_NAME), [body])


def _is_own_temp(name: str) -> bool:
    """The marker's temp file: ``files.temp_name(MARKER_NAME)``, or ``<MARKER_NAME>.<pid>.tmp`` before that."""
    if name.startswith(_MARKER_TMP_PREFIX) and name.endswith(".tmp"):
        return True
    return name.startswith(f".{MARKER_NAME}.") and cf.temp_owner(name) is not None


def _legacy_index(root: str) -> bool:
    """True if ``root`` holds an index written by an earlier version (the schema's tables and version)."""
    path = os.path.join(root, _INDEX_NAME)
    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\0":
                return False
    except OSError:
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"entries", "meta"} <= tables:
            return False
        row = conn.execute("SELECT version FROM meta WHERE id = 0").fetchone()
        return row is not None and row[0] in (1, 2, 3, 4)  # every index version so far
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def claim(root: str, max_bytes: int | None, policy: str | None, default_bytes: int,
          default_policy: str) -> tuple[int, str]:
    """Make sure ``root`` is (or becomes) a disk cache and return the bound and policy to open it with.

    ``max_bytes``/``policy`` None: the ones stored in the marker, else the defaults. Given ones that differ
    from the stored ones replace them (the last opener's bound is the cache's bound). Raises
    NotACacheError for a directory that is not a disk cache, OSError if the directory cannot be made.
    """
    created = not os.path.isdir(root)
    os.makedirs(root, mode=0o700, exist_ok=True)
    if created:
        os.chmod(root, 0o700)
    marker = read_marker(root)
    if marker is not None:
        if marker.kind != KIND:
            raise NotACacheError(
                f"{root} is a LlamaHome {marker.kind!r} cache, not a disk cache; point the disk cache at a "
                "directory of its own."
            )
        if marker.format > FORMAT:
            raise NotACacheError(
                f"The disk cache at {root} was written by a newer LlamaHome Cache (format {marker.format}; this "
                f"version reads format {FORMAT}); upgrade llamahome-cache or use another directory."
            )
    else:
        names = [n for n in os.listdir(root) if not _is_own_temp(n)]
        if names and not _legacy_index(root):
            raise NotACacheError(
                f"{root} is not empty and is not a LlamaHome disk cache (it has no {MARKER_NAME} file); the cache "
                "only works in a directory it created, so it never deletes your files. Point it at a new or empty "
                f"directory (for example {os.path.join(root, 'cache')})."
            )
        if names:
            log.info("The disk cache at %s was written by an earlier version; adding its %s marker.", root,
                     MARKER_NAME)
    stored_bytes = marker.max_bytes if marker is not None else None
    stored_policy = marker.policy if marker is not None else None
    use_bytes = max_bytes if max_bytes is not None else stored_bytes or default_bytes
    use_policy = policy if policy is not None else stored_policy or default_policy
    if marker is None or (use_bytes, use_policy) != (stored_bytes, stored_policy):
        try:
            write_marker(root, use_bytes, use_policy)
        except OSError as exc:
            if marker is None:
                raise
            # Only the stored bound is stale (a full or read-only disk): the cache itself is fine.
            log.warning("Could not record the disk cache's new bound in %s (%s).", root, exc)
    return use_bytes, use_policy


def reserve_bytes(max_bytes: int) -> int:
    """The space held in reserve: 1/64 of the bound, between 128 KiB (room to open the index and delete a
    few rows at a time: its shared-memory file and a few WAL pages) and 1 MiB."""
    return max(128 * 1024, min(1024 * 1024, max_bytes // 64))


def ensure_reserve(root: str, size: int) -> None:
    """Create the reserve file if it is missing (quietly does nothing when the disk has no room for it)."""
    path = os.path.join(root, RESERVE_NAME)
    try:
        if os.lstat(path).st_size >= size:
            return
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        # No room: hold nothing rather than a sparse or partial file that would free nothing later.
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        os.close(fd)


def release_reserve(root: str) -> bool:
    """Remove the reserve file to make room; True if there was one holding space."""
    path = os.path.join(root, RESERVE_NAME)
    try:
        had = os.lstat(path).st_size > 0
        os.unlink(path)
    except OSError:
        return False
    return had

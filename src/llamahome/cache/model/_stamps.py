"""Verification stamps: which files of a model were hashed, at which file identity.

A stamp is ``[device, inode, size, mtime_ns, ctime_ns, xxh3-128]`` per file, kept in the model's ``.verified``.
Any change made through the file system moves the ctime (``utime`` cannot set it back), so a file whose
identity still matches its stamp has not been changed since it was hashed: a mapped load can skip the hash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import temp_name
from ._layout import VERIFIED

__all__ = ["ReadablePart", "file_identity", "read_verified", "needs_check", "record_verified"]


@dataclass(frozen=True)
class ReadablePart:
    """One file a read opens: where, whether it is a container, its expected xxh3-128 and raw size."""

    path: Path
    compressed: bool
    checksum: str
    raw_size: int


def file_identity(path: Path) -> tuple[int, ...]:
    """What changes whenever a file is changed through the file system (ctime cannot be set back by utime)."""
    st = os.lstat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_verified(directory: Path) -> dict[str, Any]:
    """The stamps recorded beside a model ({} if none or unreadable: then files are simply hashed again)."""
    try:
        fd = os.open(directory / VERIFIED, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        with open(fd, "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def needs_check(directory: Path, rp: ReadablePart, mapped: bool, verify: bool | None) -> bool:
    """Whether this read must hash the file: always for copies and decodes, once per identity for maps."""
    if verify is not None:
        return verify
    if not mapped or rp.compressed:
        return True
    stamp = read_verified(directory).get(rp.path.name)
    return stamp is None or stamp != [*file_identity(rp.path), rp.checksum]


def record_verified(directory: Path, parts: list[ReadablePart], identity: tuple[int, ...] | None = None) -> None:
    """Remember that these files matched their checksums at their current identity (see ``load``).

    ``identity`` is the one taken before the hash, when given: a change during the hash then leaves a
    stale stamp, which only costs a re-hash next time.
    """
    stamps = read_verified(directory)
    changed = False
    for rp in parts:
        try:
            ident = identity if identity is not None else file_identity(rp.path)
        except OSError:
            continue
        stamp = [*ident, rp.checksum]
        changed |= stamps.get(rp.path.name) != stamp
        stamps[rp.path.name] = stamp
    if not changed:
        return  # already recorded: a copy load that checked the file writes nothing
    tmp = directory / temp_name(VERIFIED)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(stamps, f)
        os.replace(tmp, directory / VERIFIED)
    except OSError:
        tmp.unlink(missing_ok=True)  # a stamp is an optimisation: without it the next map hashes again
